"""The buffered JSON log output."""

import io

from tracker.logs import BufferedLines


def test_info_lines_are_batched_and_errors_go_out_at_once() -> None:
    """Request lines wait in a buffer (one write for many), an error line is written with them at once."""
    stream = io.BytesIO()
    out = BufferedLines(stream)
    out.info(b'{"event":"request"}')
    out.info(b'{"event":"request"}')
    assert stream.getvalue() == b""
    out.error(b'{"event":"boom"}')
    assert stream.getvalue().splitlines() == [b'{"event":"request"}'] * 2 + [b'{"event":"boom"}']


def test_a_full_buffer_is_written_without_waiting() -> None:
    """Past MAX_BYTES the buffer is written at once, so memory stays bounded under load."""
    stream = io.BytesIO()
    out = BufferedLines(stream)
    line = b"x" * 1000
    for _ in range(BufferedLines.MAX_BYTES // 1000 + 2):
        out.info(line)
    assert len(stream.getvalue()) > BufferedLines.MAX_BYTES
    out.flush()
    assert stream.getvalue().count(b"\n") == BufferedLines.MAX_BYTES // 1000 + 2


def test_utc_stamp_writes_the_same_fields_as_structlog_timestamper() -> None:
    """level + an ISO-8601 UTC timestamp with microseconds and Z, as TimeStamper(fmt="iso", utc=True)."""
    import datetime
    import re

    import structlog

    from tracker.logs import UtcStamp

    stamp = UtcStamp()
    ours = stamp(None, "warn", {"event": "x"})
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "warn", {"event": "x"})
    assert ours["level"] == "warning" and stamp(None, "exception", {})["level"] == "error"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ours["timestamp"])
    parse = datetime.datetime.fromisoformat
    gap = parse(theirs["timestamp"].replace("Z", "+00:00")) - parse(ours["timestamp"].replace("Z", "+00:00"))
    assert datetime.timedelta(0) <= gap < datetime.timedelta(seconds=1)


def test_direct_request_line_matches_the_structlog_line(monkeypatch) -> None:
    """With JSON output the request line skips structlog's bound logger; it must read exactly the same."""
    import re

    import orjson
    import structlog

    from tracker import logs

    stream = io.BytesIO()
    monkeypatch.setattr(logs, "OUTPUT", BufferedLines(stream))
    monkeypatch.setattr(logs, "_direct_json", False)  # restored after the test, as is structlog's config
    logs.configure_logging(json=True)
    try:
        logs.log_request("r-1", "POST", "/t", 204, 0.42, None)
        structlog.get_logger("http").info("request", request_id="r-1", method="POST", route="/t", status=204,
                                          ms=0.42, error=None)
        logs.OUTPUT.flush()
    finally:
        structlog.reset_defaults()
    direct, via_structlog = [orjson.loads(x) for x in stream.getvalue().splitlines()]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line.pop("timestamp"))
               for line in (direct, via_structlog))
    assert direct == via_structlog == {"request_id": "r-1", "method": "POST", "route": "/t", "status": 204,
                                       "ms": 0.42, "error": None, "event": "request", "level": "info"}



def test_a_logged_database_error_does_not_carry_the_refused_value(monkeypatch) -> None:
    """PostgreSQL names the value a unique index refused in its DETAIL; a traceback logged (JSON or console)
    keeps the error and drops that line, so an email never reaches the log through an error."""
    import sys

    import asyncpg.exceptions
    import orjson
    import structlog

    from tracker import logs

    refused = asyncpg.exceptions.UniqueViolationError.new({
        "M": 'duplicate key value violates unique constraint "identifiers_value"', "C": "23505", "S": "ERROR",
        "D": "Key (kind, value)=(email, ann.secret@example.com) already exists."})
    assert "ann.secret@example.com" in str(refused)  # the driver's message does carry it
    for json in (True, False):
        stream, console = io.BytesIO(), io.StringIO()
        monkeypatch.setattr(logs, "OUTPUT", BufferedLines(stream))
        monkeypatch.setattr(logs, "_direct_json", False)
        monkeypatch.setattr(sys, "stderr", console)  # where the console renderer writes
        logs.configure_logging(json=json)
        try:
            try:
                raise RuntimeError("the insert failed") from refused
            except RuntimeError:
                structlog.get_logger("worker").exception("worker iteration failed")
            logs.OUTPUT.flush()
        finally:
            structlog.reset_defaults()
        text = orjson.loads(stream.getvalue())["exception"] if json else console.getvalue()
        assert "UniqueViolationError" in text and "RuntimeError: the insert failed" in text, text
        assert "DETAIL: (hidden" in text
        assert "ann.secret" not in text, text
