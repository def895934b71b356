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
