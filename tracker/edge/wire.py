"""Responses as bytes: a status line and header block per ``Reply``, the Date header formatted once a second."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from tracker.answers import Reply

_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_date_second = -1
_date_line = ""


def _date() -> str:
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = f"Date: {formatdate(now, usegmt=True)}\r\n"
    return _date_line


def encode(reply: Reply, keep_alive: bool) -> bytes:
    """The response's bytes. A 1xx, 204 or 304 carries no body and no Content-Length (RFC 9110 §8.6)."""
    status = reply.status
    head = [_STATUS.get(status) or f"HTTP/1.1 {status} Unknown\r\n", _date()]
    head += [f"{name}: {value}\r\n" for name, value in reply.headers]
    if status >= 200 and status not in (204, 304):
        head.append(f"Content-Length: {len(reply.body)}\r\n")
    if not keep_alive:
        head.append("Connection: close\r\n")
    head.append("\r\n")
    encoded = "".join(head).encode("latin-1")
    return encoded + reply.body if reply.body and status not in (204, 304) else encoded
