"""The smartsend benchmark: recipients/s of ``POST /api/v1/message/{id}/smartsend`` with 1,000 recipients.

For SQLite (a temp file) and PostgreSQL (a database of this run, ``bench_messages_<pid>``, created, migrated
and dropped after), a real ``stitcher serve`` (worker off, so nothing is delivered) gets ``REQUESTS``
smartsends of ``RECIPIENTS`` recipients each, one at a time, to ``RECIPIENTS`` contacts seeded beforehand.
Each recipient is found by its email locator (half also by externalCustomerId, which must agree), the
subject and body are rendered from the contact and a jsonParam, and every send is written to the outbox and
the timeline. Reported: p50 (min, max) per request, recipients/s at the p50, and the service's CPU per
request (which moves less with other load on the machine than the wall times).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import cpu_seconds
from bench.stitch import API_KEY, measure_served, own_database

RECIPIENTS, REQUESTS = 1000, 5
BODY = ("<p>Hello {{ firstName }} {{ lastName }},</p><p>your code is {{ code }}.</p>"
        "{% for item in items %}<li>{{ item.name|upper }}: {{ item.price }}</li>{% endfor %}")


def prepare(backend: str, tmp: Path) -> tuple[str, str | None]:
    return own_database(backend, tmp, "messages")


async def _seed(db_url: str) -> None:
    """``RECIPIENTS`` contacts with an external ID, names and an email, written directly in one transaction."""
    from stitcher.domain.identifiers import IdentifierKind
    from stitcher.store import bulk
    from stitcher.store.db import Database

    db = Database(db_url)
    now = int(time.time() * 1000)
    try:
        async with db.transaction() as s:
            ids = await bulk.insert_contacts(db, s, [(f"M-{i}", {"first_name": "Ann", "last_name": f"Lee{i}"})
                                                     for i in range(RECIPIENTS)], now)
            await bulk.add_identifiers(db, s, [(cid, IdentifierKind.EMAIL, f"m{i}@bench.example", None)
                                               for i, cid in enumerate(ids)], now)
    finally:
        await db.close()


def _recipients(request: int) -> list[dict[str, Any]]:
    return [{"locator": f"m{i}@bench.example", **({"externalCustomerId": f"M-{i}"} if i % 2 else {}),
             "jsonParam": {"code": f"{request}-{i}", "items": [{"name": "mug", "price": 9.5}]}}
            for i in range(RECIPIENTS)]


async def measure(url: str, db_url: str, service_pid: int) -> dict[str, Any]:
    await _seed(db_url)
    auth = aiohttp.BasicAuth("bench", API_KEY)
    seconds: list[float] = []
    cpu = 0.0
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/api/v1/messages", auth=auth, json={
                "channel": "email", "name": "bench", "subject": "Hi {{ firstName }}", "from": "shop@bench.example",
                "body": BODY}) as r:
            message_id = (await r.json())["id"]
        for request in range(REQUESTS + 1):  # the first is a warm-up
            body = orjson.dumps({"recipients": _recipients(request)})
            before, started = cpu_seconds(service_pid), time.perf_counter()
            async with session.post(f"{url}/api/v1/message/{message_id}/smartsend", data=body, auth=auth,
                                    headers={"Content-Type": "application/json"}) as r:
                answer = await r.json()
            took = time.perf_counter() - started
            if r.status != 200 or any(x["status"] != "OK" for x in answer["results"]):
                raise RuntimeError(f"smartsend answered {r.status}: {str(answer)[:300]}")
            if request:
                seconds.append(took)
                cpu += cpu_seconds(service_pid) - before
    p50 = statistics.median(seconds)
    return {"p50_ms": round(p50 * 1000, 1), "min_ms": round(min(seconds) * 1000, 1),
            "max_ms": round(max(seconds) * 1000, 1), "recipients_per_s": round(RECIPIENTS / p50),
            "service_cpu_ms_per_request": round(cpu * 1000 / len(seconds), 1)}


def main() -> dict[str, Any]:
    results: dict[str, Any] = {"recipients_per_request": RECIPIENTS, "requests": REQUESTS,
                               "backends": measure_served("messages", measure, prepare)}
    results["pass"] = all("error" not in r for r in results["backends"].values())
    return results


if __name__ == "__main__":
    main()
