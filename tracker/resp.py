"""A pipelined Redis connection for the beacon write path: hand-encoded RESP out, hiredis in.

redis-py's pipeline spends more CPU per command (packing, a timeout context per reply) than the beacon
handler itself; this connection encodes a whole group-commit batch into one buffer, sends it in one write
and parses the replies with hiredis — the last row of the DESIGN table. It serves exactly one caller at a
time (the group committer), reconnects lazily after any failure and bounds every batch with one timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def command(*args: Any) -> bytes:
    """The RESP encoding of one command (bytes as they are, anything else as its ``str``, UTF-8)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = arg.__class__
        if kind is str:
            arg = arg.encode()
        elif kind is not bytes:
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def ascii_bulks(*strings: str) -> str:
    """RESP bulk strings of ASCII-only text (where the length in characters is the length in bytes), to be
    encoded once with the rest of a frame: cheaper than ``command`` for the beacon's keys and ids."""
    return "".join([f"${len(s)}\r\n{s}\r\n" for s in strings])


class RespConnection:
    """One connection to the Redis at ``url``; ``execute`` sends a batch and returns one reply per command.

    Error replies come back as ``ResponseError`` instances in their place; a broken or slow connection
    raises ``redis.exceptions.ConnectionError`` / ``TimeoutError`` for the whole batch.
    """

    routed = False  # one server: a command's key does not matter (``resp_cluster`` routes by it)

    def __init__(self, url: str, timeout: float) -> None:
        self._params = parse_url(url)
        self._tls = ssl.create_default_context() if url.startswith("rediss://") else None
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        p: dict[str, Any] = dict(self._params)
        if "path" in p:
            reader, writer = await asyncio.open_unix_connection(p["path"])
        else:
            reader, writer = await asyncio.open_connection(p.get("host", "127.0.0.1"), p.get("port", 6379),
                                                           ssl=self._tls)
        self._reader, self._writer = reader, writer
        setup: list[bytes] = []
        if p.get("password"):
            setup.append(command("AUTH", *([p["username"]] if p.get("username") else []), p["password"]))
        if p.get("db"):
            setup.append(command("SELECT", p["db"]))
        for reply in await self._roundtrip(setup):
            if isinstance(reply, Exception):
                raise RedisConnectionError(f"redis refused the connection set-up: {reply}")

    async def _roundtrip(self, commands: list[bytes]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        if not commands:
            return []
        self._writer.write(b"".join(commands))
        parser = hiredis.Reader(replyError=ResponseError, notEnoughData=False)
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await self._reader.read(65536)
            if not data:
                raise RedisConnectionError("redis closed the connection")
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        return replies

    async def execute(self, commands: list[bytes], keys: list[str] | None = None) -> list[Any]:
        """Send RESP-encoded commands (see ``command``) in one write; one reply or error per command.
        (``keys``, where each command goes in a cluster, is not needed here.)"""
        try:
            async with asyncio.timeout(self._timeout):
                if self._writer is None:
                    await self._connect()
                return await self._roundtrip(commands)
        except TimeoutError as exc:
            self.close()
            raise RedisTimeoutError("redis did not answer in time") from exc
        except (OSError, RedisConnectionError) as exc:
            self.close()
            raise RedisConnectionError(f"redis is unreachable: {exc}") from exc
        except BaseException:
            self.close()  # cancelled mid-batch: the stream position is unknown
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
