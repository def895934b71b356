"""A real ``stitcher serve`` SIGKILLed 50 times at random moments of a loop of stitches, imports, held events,
orders and smartsends: afterwards every count is exactly what the completed operations call for.

One client runs the operations one after another and retries each on a connection error, a cut answer or a
503 with the same body and idempotency keys, as a site's backend would; a killer task SIGKILLs the service's
process group after a random pause (seeded: the seed is printed, ``KILL_LOOP_SEED=N`` replays its choices)
and starts it again. The service runs its worker and delivers email to an SMTP server in the test.

Each start of the service is a fork of a process that has imported its code once (``ForkedServices``): the
forked process runs ``stitcher serve`` itself — migrations, resuming imports, the sweeper — as its own process
group, and is SIGKILLed like any other; only the interpreter's start and the imports (about a second a start
on an idle machine, several on a loaded one) are not repeated 50 times.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.policy import default
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import auth, private_redis, reserved_port
from tests.helpers import eventually, recent_page_views, sql_scalar, sql_write
from tests.integration.test_crash import START_TIMEOUT_S, STITCHER, service_env
from tracker.embedded_redis import EmbeddedRedis

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # ~2 min alone; a loaded machine restarts slower
KILLS = 50
PAUSE_S = (0.05, 1.0)  # how long the service lives between a restart and the next kill
IMPORT_ROWS = 5
TIMEOUT = aiohttp.ClientTimeout(total=20)
# a bound against a hang: an operation may wait out many kills in a row (a process killed every fraction of a
# second makes no headway on a slow machine), and the killer stops after KILLS
CALL_BOUND_S = 400


class Sink:
    """An SMTP server keeping each message's ``X-Stitcher-Request-Id``."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(bytes(envelope.content or b""), policy=default)  # type: ignore[arg-type]
        self.request_ids.append(str(message["X-Stitcher-Request-Id"]))
        return "250 OK"


@pytest.fixture
async def smtp_sink() -> AsyncIterator[tuple[Sink, int]]:
    sink = Sink()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(sink, hostname="mx.test"),
                                                            "127.0.0.1", 0)
    yield sink, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


class Unwanted(AssertionError):
    """An answer no fault may cause (a 500, a 4xx to a good request)."""


@dataclass
class Client:
    """The site's backend: every call retried until it gets its answer, the same request each time."""

    http: aiohttp.ClientSession
    url: str
    retries: Counter[str] = field(default_factory=Counter)

    async def call(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                   ok: int = 200, raw: bytes | None = None) -> Any:
        deadline = time.monotonic() + CALL_BOUND_S
        while time.monotonic() < deadline:
            try:
                async with self.http.request(method, f"{self.url}{path}", json=body if raw is None else None,
                                             data=raw, headers={**auth(), **(headers or {})}) as r:
                    content = await r.read()
                    if r.status == ok:
                        return orjson.loads(content) if content else None
                    if r.status != 503:
                        raise Unwanted(f"{method} {path}: {r.status} {content[:800]!r}")
                    assert r.content_type == "application/json" and "Retry-After" in r.headers, content
                    self.retries["503"] += 1
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError):
                self.retries["connection"] += 1
            await asyncio.sleep(0.1)
        raise AssertionError(f"{method} {path} never answered {ok}")


@dataclass
class Expected:
    contacts: int = 0
    links: int = 0
    web_events: int = 0
    api_events: int = 0
    orders: int = 0
    sends: int = 0
    ops: Counter[str] = field(default_factory=Counter)


class Loop:
    """The operations, each counted in ``expected`` once its last answer has come."""

    def __init__(self, client: Client, rng: random.Random, message_id: int) -> None:
        self.client = client
        self.rng = rng
        self.message_id = message_id
        self.expected = Expected()
        self.known: list[str] = []  # external ids of contacts with an email
        self.n = 0

    async def step(self) -> None:
        self.n += 1
        kinds = ["stitch", "import_", "held", "order", "smartsend"] if self.known else ["stitch"]
        kind = self.rng.choice(kinds)
        await getattr(self, kind)(self.n)
        self.expected.ops[kind.rstrip("_")] += 1

    async def subscribe(self, ext: str, vids: list[str]) -> dict[str, Any]:
        return dict(await self.client.call("POST", "/api/v1/contact/subscribe", {"contact": {
            "externalCustomerId": ext, "channels": [{"type": "email", "value": f"{ext.lower()}@example.com"}],
            "visitorIds": vids}, "groups": ["kill-loop"]}))

    async def stitch(self, n: int) -> None:
        vid = str(uuid.uuid4())
        events = recent_page_views(3, f"s{n}")
        await self.client.call("POST", "/t", raw=orjson.dumps({"vid": vid, "sent_at": int(time.time() * 1000),
                                                               "events": events}),
                               headers={"Content-Type": "text/plain"}, ok=204)
        await self.subscribe(f"S{n}", [vid])
        self.known.append(f"S{n}")
        self.expected.contacts += 1
        self.expected.links += 1
        self.expected.web_events += 3

    async def held(self, n: int) -> None:
        answer = await self.client.call("POST", "/api/v2/event", {"eventTypeKey": "kill_loop", "keyValue": f"H{n}",
                                                                  "params": [{"name": "n", "value": str(n)}]},
                                        headers={"Idempotency-Key": f"held-{n}"})
        assert answer["status"] == "held", answer
        await self.subscribe(f"H{n}", [])
        self.known.append(f"H{n}")
        self.expected.contacts += 1
        self.expected.api_events += 1

    async def import_(self, n: int) -> None:
        body = {"contacts": [{"externalCustomerId": f"I{n}-{j}", "channels": [
            {"type": "email", "value": f"i{n}-{j}@example.com"}]} for j in range(IMPORT_ROWS)], "dedupeOn": "email"}
        session = (await self.client.call("POST", "/api/v1/contacts", body))["asyncSessionId"]
        deadline = time.monotonic() + CALL_BOUND_S
        while True:
            status = await self.client.call("GET", f"/api/v1/importstatus/{session}")
            if status["status"] in ("FINISHED", "ERROR"):
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)
        assert status["status"] == "FINISHED" and not status["failedContacts"], status
        self.expected.contacts += IMPORT_ROWS

    async def order(self, n: int) -> None:
        answer = await self.client.call("POST", "/api/v1/orders", {"orders": [{
            "externalOrderId": f"O{n}", "externalCustomerId": self.rng.choice(self.known), "status": "INITIALIZED",
            "date": "2026-11-30T10:11:10+02:00", "totalCost": 10, "currency": "UAH"}]})
        assert not answer["failed"], answer
        self.expected.orders += 1

    async def smartsend(self, n: int) -> None:
        answer = await self.client.call("POST", f"/api/v1/message/{self.message_id}/smartsend",
                                        {"recipients": [{"externalCustomerId": self.rng.choice(self.known)}]},
                                        headers={"Idempotency-Key": f"send-{n}"})
        assert [r["status"] for r in answer["results"]] == ["OK"], answer
        self.expected.sends += 1



# Imports what ``stitcher serve`` imports, then forks a child per line read (the log file's path) that runs
# ``stitcher serve ARGS`` in a session of its own and answers with the child's pid; the kernel reaps the children.
ZYGOTE = """
import os, signal, sys, traceback
import stitcher.app, stitcher.cli, stitcher.store.migrate, tracker.edge.site, uvloop
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            log = os.open(line.rstrip("\\n"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            code = stitcher.cli.main(sys.argv[1:])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 0)
    print(pid, flush=True)
"""


class ForkedService:
    """``stitcher serve`` on a held port, each start a fork of the zygote; killed by process group."""

    def __init__(self, zygote: asyncio.subprocess.Process, log_path: Path, port: int) -> None:
        self.zygote = zygote
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.pid: int | None = None

    async def start(self) -> None:
        assert self.zygote.stdin is not None and self.zygote.stdout is not None
        self.zygote.stdin.write(f"{self.log_path}\n".encode())
        await self.zygote.stdin.drain()
        self.pid = int(await asyncio.wait_for(self.zygote.stdout.readline(), 10))
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline and self.alive():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        await self.signal(signal.SIGKILL)
        raise AssertionError(f"stitcher serve did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    def alive(self) -> bool:
        try:
            assert self.pid is not None
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    async def signal(self, signum: int, within: float = 10) -> None:
        """Send ``signum`` to the service's process group and wait (bounded) until the process is gone."""
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)
        deadline = time.monotonic() + within
        while self.alive():
            assert time.monotonic() < deadline, f"pid {self.pid} outlived signal {signum}"
            await asyncio.sleep(0.01)

    async def kill(self) -> None:
        await self.signal(signal.SIGKILL)


@contextlib.asynccontextmanager
async def forked_services(env: dict[str, str], log_path: Path) -> AsyncIterator[ForkedService]:
    with reserved_port() as port:
        zygote = await asyncio.create_subprocess_exec(
            str(STITCHER.with_name("python")), "-c", ZYGOTE, "serve", "--port", str(port), "--reuse-port", env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True)
        server = ForkedService(zygote, log_path, port)
        try:
            yield server
        finally:
            await server.kill()
            with contextlib.suppress(ProcessLookupError):
                zygote.kill()
            await asyncio.wait_for(zygote.wait(), 10)


async def kill_repeatedly(server: ForkedService, rng: random.Random, kills: list[float]) -> None:
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(*PAUSE_S))
        kills.append(time.monotonic())
        await server.kill()
        await server.start()


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A redis-server of the test's own (no other test may flush it during the loop's minutes)."""
    with private_redis(EmbeddedRedis) as server:
        yield server.start()


async def test_fifty_sigkills_lose_nothing_and_double_nothing(own_redis, database_url, tmp_path, smtp_sink, capsys):
    """50 SIGKILLs at random points of stitches, imports, held events, orders and smartsends: after the last
    restart the contacts, open links, timeline events by source, orders and outbox rows are exactly what the
    completed operations made, every send is delivered, and a send delivered twice carries one request id."""
    seed = int(os.environ.get("KILL_LOOP_SEED") or random.SystemRandom().randrange(2**32))
    with capsys.disabled():
        print(f"\nkill loop: KILL_LOOP_SEED={seed}")
    rng, kill_rng = random.Random(seed), random.Random(seed + 1)
    sink, smtp_port = smtp_sink
    env = service_env(own_redis, database_url, tmp_path, SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
                      IMPORT_PARSE_WORKERS="0", IMPORT_CHUNK_ROWS="2")
    kills: list[float] = []
    async with forked_services(env, tmp_path / "serve.log") as server:
        await server.start()
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            client = Client(http, server.url)
            message = await client.call("POST", "/api/v1/messages", {
                "channel": "email", "name": "kill-loop", "from": "Shop <shop@example.com>",
                "subject": "Hi {{ externalCustomerId }}", "body": "<p>{{ contactId }}</p>"})
            loop = Loop(client, rng, int(message["id"]))
            killer = asyncio.create_task(kill_repeatedly(server, kill_rng, kills))
            try:
                while not killer.done():
                    await loop.step()
                await killer
            finally:
                killer.cancel()
            await assert_counts(client, loop.expected, database_url)
            # a killed process leaves the rows it was sending leased for 5 minutes: let that time pass, with
            # the service stopped (a row the live process is sending would be sent twice by the test itself)
            await stop_gracefully(server)
            await sql_write(database_url, "UPDATE outbox SET next_attempt_at = 0 WHERE state = 'queued'")
            await server.start()
            sent = await eventually(lambda: sql_scalar(database_url, "SELECT count(*) FROM outbox "
                                                                     "WHERE state = 'sent'"),
                                    lambda n: n == loop.expected.sends, 60)
            assert sent == loop.expected.sends
            request_ids = await outbox_request_ids(client, loop.message_id)
            assert set(sink.request_ids) == request_ids  # each send delivered, nothing else
            repeats = len(sink.request_ids) - len(request_ids)
            with capsys.disabled():
                print(f"kill loop: {len(kills)} kills, operations {dict(loop.expected.ops)}, "
                      f"client retries {dict(client.retries)}, emails delivered again after a kill: {repeats}")
    assert len(kills) == KILLS


async def stop_gracefully(server: ForkedService) -> None:
    """SIGTERM: the service finishes what it is sending and stops."""
    await server.signal(signal.SIGTERM, within=30)


async def assert_counts(client: Client, expected: Expected, database_url: str) -> None:
    """Wait (bounded) for the worker to settle, then compare every count with what the operations made."""

    async def counts() -> dict[str, int]:
        got = {}
        for name, query in COUNTS.items():
            got[name] = int(await sql_scalar(database_url, query))
        return got

    want = {"contacts": expected.contacts, "links": expected.links, "web": expected.web_events,
            "api": expected.api_events, "message": expected.sends, "orders": expected.orders,
            "outbox": expected.sends, "unstitched": 0, "duplicate_timeline": 0}
    got = await eventually(counts, lambda got: got == want, 60)
    assert got == want


COUNTS = {
    "contacts": "SELECT count(*) FROM contacts",
    "links": "SELECT count(*) FROM visitor_links WHERE unlinked_at IS NULL",
    "unstitched": "SELECT count(*) FROM visitor_links WHERE stitched_at IS NULL",
    "web": "SELECT count(*) FROM timeline WHERE source = 'web'",
    "api": "SELECT count(*) FROM timeline WHERE source = 'api'",
    "message": "SELECT count(*) FROM timeline WHERE source = 'message'",
    "duplicate_timeline": "SELECT count(*) FROM (SELECT event_id FROM timeline GROUP BY event_id "
                          "HAVING count(*) > 1) d",
    "orders": "SELECT count(*) FROM orders",
    "outbox": "SELECT count(*) FROM outbox",
}


async def outbox_request_ids(client: Client, message_id: int) -> set[str]:
    """The request ids of every outbox row of the message (through the API, page by page)."""
    ids: set[str] = set()
    query = "?limit=1000"
    for _ in range(100):
        page = await client.call("GET", f"/api/v1/message/{message_id}/outbox{query}")
        ids |= {o["requestId"] for o in page["outbox"]}
        if page.get("next") is None:
            return ids
        query = f"?limit=1000&after={page['next']}"
    raise AssertionError("outbox pagination did not end")

