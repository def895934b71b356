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


def encode(reply: Reply, keep_alive: bool, http10: bool = False) -> bytes:
    """The response's bytes. A 1xx, 204 or 304 carries no body and no Content-Length (RFC 9110 §8.6). An
    HTTP/1.0 client's connection stays open only if the answer says ``Connection: keep-alive`` (RFC 9112
    Appendix C.2.2), as aiohttp answers it."""
    status = reply.status
    no_body = status < 200 or status == 204 or status == 304
    head = "".join((
        _STATUS.get(status) or f"HTTP/1.1 {status} Unknown\r\n", _date(),
        "\r\n".join(map(": ".join, reply.headers)),  # joined in C: no Python step per header
        "\r\n" if reply.headers else "",
        "" if no_body else f"Content-Length: {len(reply.body)}\r\n",
        ("Connection: keep-alive\r\n" if http10 else "") if keep_alive else "Connection: close\r\n",
        "\r\n",
    )).encode("latin-1")
    return head if no_body or not reply.body else head + reply.body
