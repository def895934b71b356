"""Fuzzing: schemathesis drives every operation of ``/api/openapi.json`` with data that fits the document and
data that does not, and hypothesis drives the beacon format, against the service as ``stitcher serve`` serves
it (the edge in front of aiohttp, on 127.0.0.1), on real Redis and SQL (both backends in CI).

Every answer: no 5xx; every error a JSON body naming the problem in the one error shape; a refused request
(4xx) stores nothing — the rows of every table and the tracker's Redis data are counted before and after it.
Bounded: a fixed number of examples (``FUZZ_EXAMPLES`` to change it), no shrinking past a few seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hypothesis
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from stitcher.app import init_app
from stitcher.openapi.document import document
from tests.conftest import auth
from tests.edge_server import EdgeTestServer
from tests.helpers import Stored
from tracker.keys import PREFIX
from tracker.settings import Settings

T = TypeVar("T")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))  # per generation mode, over all operations
pytestmark = pytest.mark.timeout(600)
_BASIC = auth()
_IMPORT_DONE = ("FINISHED", "ERROR")


def _settings(**kw: Any) -> hypothesis.settings:
    return hypothesis.settings(deadline=None, database=None, derandomize=False, print_blob=True,
                               suppress_health_check=list(HealthCheck), **kw)


@pytest.fixture
async def served(aiohttp_client: Any, settings: Settings, redis_client: Redis,
                 database_url: str) -> Any:
    """The whole service behind the edge on 127.0.0.1; no background worker, so that what is stored changes
    only with the requests (an import's rows land in the background: ``Fuzz.call`` waits for them)."""
    app = init_app(dataclasses.replace(settings, worker_enabled=False))
    client = await aiohttp_client(EdgeTestServer(app))
    engine = create_async_engine(database_url)
    yield str(client.make_url("")).rstrip("/"), Stored(engine, redis_client), asyncio.get_running_loop()
    await engine.dispose()


class Fuzz:
    """Sends cases from a worker thread (schemathesis and hypothesis are synchronous) to the service running
    in the test's event loop, and judges each answer."""

    def __init__(self, base: str, stored: Stored, loop: asyncio.AbstractEventLoop) -> None:
        self.base, self.stored, self.loop = base, stored, loop
        self.session = requests.Session()
        self.statuses: dict[int, int] = {}

    def run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)  # type: ignore[arg-type]

    def judged(self, send: Callable[[], Any], what: str) -> Any:
        """Send once, counting what is stored around it: no 5xx, errors as JSON, nothing kept from a 4xx."""
        before = self.run(self.stored.count())
        response = send()
        status = response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        assert status < 500, f"{what} → {status}: {response.text[:500]}"
        if status >= 400:
            assert_json_error(response, what)
            after = self.run(self.stored.count())
            assert after == before, f"{what} → {status} but stored changed (rows, redis) {before} → {after}"
        return response

    def wait_for_import(self, answer: Any) -> None:
        """An accepted import's rows land in the background: wait until it has ended before counting again."""
        session = answer.json()["asyncSessionId"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = self.session.get(f"{self.base}/api/v1/importstatus/{session}", headers=_BASIC).json()
            if status["status"] in _IMPORT_DONE:
                return
            time.sleep(0.05)
        raise AssertionError(f"import {session} did not end within 60 s")


def header(response: Any, name: str) -> str:
    """A header of a requests or a schemathesis response (the latter: lower-case names, lists of values)."""
    value = response.headers.get(name) or response.headers.get(name.lower())
    return str(value[0] if isinstance(value, list) else value or "")


def assert_json_error(response: Any, what: str) -> None:
    """An error answer is a JSON body in the one error shape, naming the problem and its status."""
    content_type = header(response, "Content-Type")
    assert content_type.startswith("application/json"), (
        f"{what} → {response.status_code} {content_type}: {response.text[:300]}")
    body = orjson.loads(response.content)
    assert isinstance(body, dict) and body.get("status") == response.status_code, (what, body)
    assert isinstance(body.get("error"), str) and body["error"], (what, body)
    assert isinstance(body.get("message"), str) and body["message"], (what, body)


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
async def test_schemathesis_finds_no_5xx_no_plain_error_and_nothing_stored_from_a_refusal(
        served: Any, mode: schemathesis.GenerationMode) -> None:
    """Every documented operation, fuzzed from the document (data that fits it, then data that does not):
    no 5xx, every error a JSON body, nothing stored from a refused request."""
    base, stored, loop = served
    fuzz = Fuzz(base, stored, loop)
    schema = schemathesis.openapi.from_dict(document())

    @_settings(max_examples=EXAMPLES)
    @given(case=schema.as_strategy(generation_mode=mode))
    def each(case: schemathesis.Case) -> None:
        what = f"{case.method} {case.formatted_path} query={case.query} body={str(case.body)[:200]}"
        response = fuzz.judged(lambda: case.call(base_url=base, session=fuzz.session, headers=_BASIC,
                                                 timeout=30), what)
        if case.method == "POST" and case.path == "/api/v1/contacts" and response.status_code == 200:
            fuzz.wait_for_import(response)

    await asyncio.to_thread(each)
    assert sum(n for s, n in fuzz.statuses.items() if s < 500) >= EXAMPLES // 2, fuzz.statuses


# --- the beacon format -------------------------------------------------------------------------------------

_JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)


_JSON = st.recursive(_JSON_LEAF, _containers, max_leaves=20)
_EVENT = st.fixed_dictionaries(
    {"id": st.one_of(st.uuids().map(str), st.text(max_size=140), st.integers(), st.none())},
    optional={"type": st.one_of(st.sampled_from(["page_view", "click", ""]), st.text(max_size=140), st.integers()),
              "ts": st.one_of(st.integers(min_value=-10, max_value=2**64), st.text(max_size=5), st.floats()),
              "url": st.one_of(st.just("https://shop.example/p"), st.text(max_size=50), st.integers()),
              "ref": st.text(max_size=20), "title": st.text(max_size=20),
              "props": st.one_of(_JSON, st.dictionaries(st.text(max_size=10), _JSON, max_size=5))})
_BEACON = st.fixed_dictionaries(
    {},
    optional={"vid": st.one_of(st.uuids().map(str), st.text(max_size=70), st.integers(), st.none()),
              "sent_at": st.one_of(st.integers(min_value=-1, max_value=2**63), st.text(max_size=5), st.none()),
              "reset": st.one_of(st.booleans(), st.text(max_size=3)),
              "events": st.one_of(st.lists(_EVENT, max_size=5), _JSON)})


def _dumps(value: Any) -> bytes:
    """The stdlib's encoder: integers past 64 bits, and ``NaN``/``Infinity`` for floats that are not finite."""
    return json.dumps(value).encode()


_BODY = st.one_of(
    _BEACON.map(_dumps),
    _JSON.map(_dumps),
    st.binary(max_size=200),  # not JSON, not UTF-8
    _BEACON.map(lambda b: _dumps(b)[: max(1, len(_dumps(b)) // 2)]),  # cut short
)


async def test_hypothesis_beacons_are_stored_on_2xx_and_refused_as_json_naming_the_problem(served: Any) -> None:
    """POST /t with generated bodies — beacons right and wrong, any JSON, any bytes, cut short: no 5xx; a
    4xx is JSON naming the problem and stores nothing; a 2xx has every event it accepted in Redis."""
    base, stored, loop = served
    fuzz = Fuzz(base, stored, loop)
    redis = stored._redis

    @_settings(max_examples=EXAMPLES)
    @given(body=_BODY, content_type=st.sampled_from(["text/plain", "application/json"]))
    def each(body: bytes, content_type: str) -> None:
        what = f"POST /t {body[:200]!r}"
        response = fuzz.judged(lambda: fuzz.session.post(f"{base}/t", data=body, timeout=30,
                                                         headers={"Content-Type": content_type}), what)
        if response.status_code >= 400:
            return
        assert response.status_code == 204, what
        vid = header(response, "X-Stitcher-Visitor")
        uuid.UUID(vid)
        decoded = json.loads(body)
        events = decoded.get("events") if isinstance(decoded, dict) else None
        ids = {str(e["id"]) for e in events if isinstance(e, dict) and isinstance(e.get("id"), str)} \
            if isinstance(events, list) else set()
        history = fuzz.run(_history_ids(redis, vid))
        rejected = fuzz.run(_rejected_ids(redis))
        # every event of a 2xx is either in the visitor's history or rejected with a reason
        assert ids <= history | rejected, (what, ids - history - rejected)

    await asyncio.to_thread(each)
    assert fuzz.statuses.get(204, 0) > 0 and sum(n for s, n in fuzz.statuses.items() if s >= 400) > 0, fuzz.statuses


async def _history_ids(redis: Redis, vid: str) -> set[str]:
    ids: set[str] = set()
    async for key in redis.scan_iter(f"{PREFIX}:*:v:{vid}:ev"):
        ids |= {str(orjson.loads(raw)["id"]) for raw in await redis.lrange(key, 0, -1)}
    return ids


async def _rejected_ids(redis: Redis) -> set[str]:
    return {fields.get(b"event_id", b"").decode() for _, fields in await redis.xrange(f"{PREFIX}:rejected")}
