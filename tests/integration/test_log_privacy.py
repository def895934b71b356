"""No personal data in any log line (DESIGN invariant 10, issue 12): every replay fixture — subscribe, import,
events, orders, smartsend, erase — is played and the delivery worker sends what it queued; then every log
line written is searched for each email, phone, push token, external customer ID, event parameter, locator
and message text (template, parameters, rendered body) the fixtures used. Names are not searched for: short
first names turn up inside ordinary words.

Twice: ``stitcher serve`` as a process (everything it writes to stdout and stderr, JSON lines as in
production, its import parser process and tracebacks included), and the service in-process with structlog's
events and every stdlib ``logging`` record at INFO and above captured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from stitcher.domain.identifiers import Normaliser
from stitcher.replay import load_fixture, replay
from tests.conftest import API_KEY, reserved_port
from tests.helpers import eventually, stop_process
from tests.integration.test_delivery import Mailbox, sms_receiver, smtp  # noqa: F401 - fixtures

FIXTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures").glob("*.jsonl"))
# the fields whose text values are personal data or message content
PERSONAL = {"externalCustomerId", "email", "phone", "sms", "locator", "keyValue", "value", "body", "subject",
            "token", "jsonParam"}
MIN_LENGTH = 6  # shorter values ("true", "59.90") turn up in any log by chance; the fixtures' identifiers are longer
SERVER_START_S = 60.0
DELIVERED_S = 60.0
PATIENCE_MS = 30_000
SENDS = {"email": 2, "sms": 1}  # what smartsend.jsonl queues
# the loggers of the test's own SMTP server and SMS webhook, which stand for the outside world (an SMTP
# server's log naming its recipients is the mail provider's business)
OUTSIDE_LOGGERS = {"mail.log", "aiohttp.access"}


def personal_values(runs: dict[Path, str]) -> set[str]:
    """Every personal value the fixtures send (with each fixture's ``${run}``), with the normalised forms the
    service stores (an email lower-cased, a phone in E.164)."""
    found: set[str] = set()

    def walk(node: Any, key: str | None, run: str, everything: bool = False) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k, run, everything or k == "jsonParam")
        elif isinstance(node, list):
            for v in node:
                walk(v, key, run, everything)
        elif isinstance(node, str) and (everything or key in PERSONAL):
            text = node.replace("${run}", run)
            found.add(text)
            if text.lstrip().startswith("{") and key == "jsonParam":  # a jsonParam given as JSON text
                walk(orjson.loads(text), key, run, True)

    for path, run in runs.items():
        for line in path.read_text().splitlines():
            step = orjson.loads(line)
            if "call" in step:
                walk(step.get("body"), None, run)
                query = urllib.parse.urlsplit(step["call"].split(" ", 1)[1]).query
                found.update(v.replace("${run}", run) for _, v in urllib.parse.parse_qsl(query) if _ != "erase")
    normaliser = Normaliser()
    for value in list(found):
        found.add(value.strip().lower())
        if value.lstrip().startswith("+"):
            try:
                found.add(normaliser.phone(value, "phone"))
            except Exception:
                pass
    return {v for v in found if len(v.strip()) >= MIN_LENGTH and "${" not in v}


def leaks(text: str, values: set[str]) -> list[str]:
    lowered = text.lower()
    return sorted(v for v in values if v.lower() in lowered)


@pytest.fixture
def outside(request: pytest.FixtureRequest) -> tuple[Mailbox, int, list[Any], str]:
    """A real SMTP server and an SMS webhook (test_delivery's) for the delivery worker to send to."""
    return (*request.getfixturevalue("smtp"), *request.getfixturevalue("sms_receiver"))


async def play_everything(base_url: str) -> dict[Path, str]:
    """Every fixture once, each with its own ``${run}``; they must play green for the run to mean anything."""
    runs = {path: secrets.token_hex(4) for path in FIXTURES}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for path, run in runs.items():
            # generous waits for the worker: the fixtures' timing is test_replay's business, the logs are this one's
            steps = [dataclasses.replace(s, within_ms=PATIENCE_MS) if s.within_ms else s for s in load_fixture(path)]
            report = await replay(steps, session, base_url, API_KEY, variables={"run": run})
            assert report.ok, f"{path.name}: " + "\n".join(str(f) for f in report.failures)
    return runs


@pytest.fixture
def served(clean_redis: str, database_url: str, tmp_path: Path,
           outside: tuple[Mailbox, int, list[Any], str]) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """``stitcher serve`` with JSON logs into a file, sending email and SMS to ``outside``."""
    _, smtp_port, _, sms_url = outside
    with reserved_port() as port:
        env = {**os.environ, "REDIS_URL": clean_redis, "DATABASE_URL": database_url, "API_KEYS": API_KEY,
               "HOST": "127.0.0.1", "PORT": str(port), "VAR_DIR": str(tmp_path), "LOG_JSON": "1",
               "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "SMS_WEBHOOK_URL": sms_url}
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "stitcher"), "serve", "--reuse-port"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield f"http://127.0.0.1:{port}", log_path, proc
        finally:
            if proc.poll() is None:  # the test failed before stopping it
                stop_process(proc, timeout=30)


async def _ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.poll() is not None:
                raise AssertionError(await asyncio.to_thread(log_path.read_text))
            try:
                async with session.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "stitcher serve did not start"
            await asyncio.sleep(0.1)


async def _delivered(box: Mailbox, texts: list[Any]) -> None:
    async def probe() -> tuple[int, int]:
        return len(box.received), len(texts)

    got = await eventually(probe, lambda n: n >= (SENDS["email"], SENDS["sms"]), DELIVERED_S)
    assert got == (SENDS["email"], SENDS["sms"]), got


@pytest.mark.slow
async def test_a_served_run_of_every_fixture_logs_no_personal_data(served, outside):
    """Everything ``stitcher serve`` writes while every fixture plays and its messages are delivered holds
    none of the fixtures' personal values — though it did log each request and each delivery."""
    url, log_path, proc = served
    box, _, texts, _ = outside
    await _ready(url, proc, log_path)
    runs = await play_everything(url)
    await _delivered(box, texts)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 60) == 0
    text = log_path.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert sum(1 for e in lines if e.get("event") == "delivery" and e.get("state") == "sent") == sum(SENDS.values())
    assert {e.get("route") for e in lines} >= {"/api/v1/contact/subscribe", "/api/v1/contacts", "/api/v1/orders",
                                               "/api/v1/event", "/api/v1/message/{message_id}/smartsend"}
    assert API_KEY not in text  # nor a configured key
    values = personal_values(runs)
    assert len(values) > 50
    assert any(v in str(box.received[0].content) for v in values)  # the values searched for are the real ones
    assert not leaks(text, values), leaks(text, values)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_in_process_run_of_every_fixture_logs_no_personal_data(aiohttp_client, settings, outside):
    """structlog's events and every stdlib record (INFO and above, any logger, with its exception text) of an
    in-process run of every fixture and the deliveries hold none of the fixtures' personal values."""
    from stitcher.app import init_app

    box, smtp_port, texts, sms_url = outside
    settings = dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{smtp_port}", sms_webhook_url=sms_url)
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.INFO)
    try:
        with capture_logs() as events:
            # without aiohttp's access log, as ``stitcher serve`` runs it (tracker.edge.site.run): its lines
            # carry query strings (``?email=``); the edge middleware writes the request line instead
            client = await aiohttp_client(init_app(settings), server_kwargs={"access_log": None})
            runs = await play_everything(str(client.make_url("")))
            await _delivered(box, texts)
            await client.close()
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    formatter = logging.Formatter()
    ours = [r for r in records.records if r.name not in OUTSIDE_LOGGERS]
    assert len(ours) < len(records.records)  # stdlib records were captured (the mail server's)
    text = "\n".join([repr(e) for e in events] + [formatter.format(r) for r in ours])
    assert sum(1 for e in events if e.get("event") == "delivery") == sum(SENDS.values())
    assert sum(1 for e in events if e.get("event") == "request") > 100
    values = personal_values(runs)
    assert not leaks(text, values), leaks(text, values)

