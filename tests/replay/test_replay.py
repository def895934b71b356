"""Replay (SPEC §5): the fixtures in tests/fixtures play green in-process and through ``stitcher replay``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from stitcher.replay import (
    FixtureError,
    ReplayReport,
    Step,
    load_fixture,
    match,
    parse_fixture,
    replay,
    replay_file_cli,
)
from tests.conftest import API_KEY, reserved_port
from tests.helpers import stop_process

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.jsonl"))
SERVER_START_S = 30.0
CLI_TIMEOUT_S = 60.0


async def _play(client, steps: list[Step]) -> ReplayReport:  # type: ignore[no-untyped-def]
    """Play ``steps`` against the in-process service, without cookies (each beacon names its visitor)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        return await replay(steps, session, str(client.make_url("")), API_KEY)


def _failures(report: ReplayReport) -> str:
    return "\n".join(str(f) for f in report.failures)


def test_the_reference_fixtures_ship():
    """Both SPEC §6 stories and the identity edge cases ship as fixtures."""
    names = {p.name for p in FIXTURE_FILES}
    assert {"example1_mobile.jsonl", "example2_web.jsonl", "shared_browser.jsonl", "conflict_409.jsonl",
            "restore_after_delete.jsonl", "bulk_import.jsonl", "order_lifecycle.jsonl",
            "held_event.jsonl"} <= names


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.stem)
async def test_fixture_replays_green(client, fixture: Path):
    """Every expectation of the fixture holds against the whole service in-process."""
    steps = load_fixture(fixture)
    report = await _play(client, steps)
    assert report.ok, _failures(report)
    assert report.steps == sum(1 for s in steps if s.kind != "comment")
    assert report.expectations > 0


async def test_all_fixtures_share_one_database_and_replay_twice(client):
    """The fixtures are self-contained: all of them, each played twice, pass against one database."""
    for fixture in FIXTURE_FILES * 2:
        report = await _play(client, load_fixture(fixture))
        assert report.ok, f"{fixture.name}:\n{_failures(report)}"


VID = "${run}-0000-4000-8000-00000000b0c1"
BROKEN = "\n".join(json.dumps(step) for step in [
    {"comment": "line 1"},
    {"beacon": {"vid": VID, "sent_at": 1767225600000,
                "events": [{"id": "br-${run}-1", "type": "page_view", "ts": 1767225600000}]}},
    {"call": "POST /api/v1/contact/subscribe",
     "body": {"contact": {"externalCustomerId": "C-BR-${run}", "visitorIds": [VID]}},
     "expect": {"stitchedEvents": 1}, "save": {"a": "id"}},
    {"expect": {"call": "GET /api/v1/contact/${a}/events", "within_ms": 300, "json": {"total": 2}}},
    {"call": "POST /api/v1/contact", "body": {"externalCustomerId": "null"}, "status": 200, "save": {"b": "id"}},
    {"expect": {"call": "GET /api/v1/contact/${b}", "status": 200}},
    {"expect": {"call": "GET /api/v1/contact/${a}", "json": {"id": "${a}", "visitorIds": {"$len": 1}}}},
])


async def test_a_broken_expectation_is_reported_with_its_line(client):
    """A failing expectation is reported with its line, what was expected and what came back; play goes on."""
    report = await _play(client, parse_fixture(BROKEN))
    assert not report.ok
    assert report.summary() == "replay: 6 steps, 5 expectations, 3 failed"
    by_line = {f.line: f for f in report.failures}
    assert sorted(by_line) == [4, 5, 6]
    timeline = by_line[4]
    assert timeline.step.startswith("GET /api/v1/contact/") and timeline.step.endswith("/events")
    assert timeline.mismatch == "$.total: expected 2, got 1 (waited 300 ms)"
    assert timeline.response.startswith('200 {"contactId":')
    placeholder = by_line[5]
    assert placeholder.mismatch == "status: expected 200, got 400"
    assert "placeholder" in placeholder.response
    # the variable the failed call should have saved is blamed on that call, and nothing is sent
    assert (by_line[6].mismatch, by_line[6].response) == ("${b} is not set (line 5 did not save it)", "not sent")
    assert str(timeline).startswith("line 4: GET /api/v1/contact/")


def test_partial_match_rules():
    """Objects match by their expected keys, lists element-wise with equal length, operators as documented."""
    actual = {"id": 7, "ok": True, "events": [{"id": "a", "n": 1}, {"id": "b", "n": 2}], "name": None}
    assert match({"id": 7, "events": [{"id": "a"}, {"id": "b"}]}, actual) == []
    assert match({"events": [{"id": "a"}]}, actual) == [
        '$.events: expected 1 items, got 2: [{"id":"a","n":1},{"id":"b","n":2}]']
    assert match({"missing": 1}, actual) == ["$.missing: missing"]
    assert match({"ok": 1}, actual) == ["$.ok: expected 1, got true"]
    assert match({"events": {"$len": 2, "$contains": [{"id": "b"}]}}, actual) == []
    assert match({"events": {"$contains": [{"id": "c"}]}}, actual) == ['$.events: no element matches {"id":"c"}']
    assert match({"id": {"$ne": 7}}, actual) == ["$.id: expected anything but 7"]
    assert match({"id": {"$ne": 8}, "name": {"$any": True}}, actual) == []
    assert match([], []) == [] and match([], {}) == ["$: expected a list, got {}"]


def test_a_bad_fixture_line_is_named(tmp_path: Path):
    """Loading refuses a bad line with an error naming the file and the line."""
    path = tmp_path / "bad.jsonl"
    cases = {
        '{"call": "POST /api/v1/contact"}\n{"call": "FETCH /x"}': 'bad.jsonl:2: "call" must be "METHOD /path"',
        '\n{"beacon": {}, "staus": 204}': "bad.jsonl:2: unknown key(s) for a beacon step: staus",
        '{"expect": {"call": "GET /x", "json": {"a": {"$size": 1}}}}': "'$size' is not an operator",
        '{"expect": {"call": "GET /x", "within_ms": -1}}': "bad.jsonl:1: \"within_ms\" must be",
        '{"comment": "ok"}\n{"beacon": ': "bad.jsonl:2: not valid JSON",
        '["beacon"]': "bad.jsonl:1: a step must be a JSON object",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(FixtureError) as info:
            load_fixture(path)
        assert message in str(info.value), text


def test_cli_exit_codes_without_a_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The CLI answers 2 for an unreadable or invalid fixture and 1 when the service cannot be reached."""
    assert replay_file_cli(str(tmp_path / "absent.jsonl"), "http://127.0.0.1:1", API_KEY) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"call": "GET"}\n')
    assert replay_file_cli(str(bad), "http://127.0.0.1:1", API_KEY) == 2
    assert "bad.jsonl:1:" in capsys.readouterr().err
    good = tmp_path / "one.jsonl"
    good.write_text('{"expect": {"call": "GET /healthz"}}\n')
    with reserved_port() as port:  # held, never listening: refused, and no other process can be given it
        assert replay_file_cli(str(good), f"http://127.0.0.1:{port}", API_KEY) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{good}:1: GET /healthz: no response: ")
    assert out[-1] == "replay: 1 steps, 1 expectations, 1 failed"


@pytest.fixture
def server(clean_redis: str, database_url: str, tmp_path: Path) -> Iterator[str]:
    """A real ``stitcher serve`` process on a free port; yields its base URL and is killed afterwards.

    The port is held (``reserved_port``) until the process is gone; the process binds it with --reuse-port.
    """
    with reserved_port() as port:
        env = {**os.environ, "REDIS_URL": clean_redis, "DATABASE_URL": database_url, "API_KEYS": API_KEY,
               "HOST": "127.0.0.1", "PORT": str(port), "VAR_DIR": str(tmp_path), "LOG_JSON": "1"}
        log = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen([str(Path(sys.executable).parent / "stitcher"), "serve", "--reuse-port"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_START_S
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                assert time.monotonic() < deadline, "stitcher serve did not answer /healthz in time"
                time.sleep(0.1)
            yield url
        finally:
            stop_process(proc)
            log.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "stitcher"), "replay", *args],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


@pytest.mark.slow
def test_cli_replays_a_fixture_against_a_real_server(server: str, tmp_path: Path):
    """``stitcher replay FILE --url`` against ``stitcher serve``: exit 0 when all holds, 1 naming file:line if not."""
    fixture = FIXTURES / "example2_web.jsonl"
    steps = load_fixture(fixture)
    done = _cli(str(fixture), "--url", server, "--api-key", API_KEY)
    assert done.returncode == 0, done.stdout + done.stderr
    expectations = sum(s.explicit for s in steps)
    played = sum(1 for s in steps if s.kind != "comment")
    assert done.stdout.splitlines() == [f"replay: {played} steps, {expectations} expectations, 0 failed"]

    lines = fixture.read_text().splitlines()
    subscribe = next(i for i, line in enumerate(lines) if '"stitchedEvents": 3' in line)
    lines[subscribe] = lines[subscribe].replace('"stitchedEvents": 3', '"stitchedEvents": 30')
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    done = _cli(str(broken), "--url", server, "--api-key", API_KEY)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith(f"{broken}:{subscribe + 1}: POST /api/v1/contact/subscribe: "
                             "$.stitchedEvents: expected 30, got 3 | response: 200 {")
    assert out[-1] == f"replay: {played} steps, {expectations} expectations, 1 failed"

    done = _cli(str(fixture), "--url", server, "--api-key", "wrong-key")
    assert done.returncode == 1 and "got 401" in done.stdout
