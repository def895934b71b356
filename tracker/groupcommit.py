"""Group commit: many requests' Redis commands share one pipelined round trip.

Each request still waits for the reply to its own command, so a 2xx still means "written" (DESIGN invariant
2); what is shared is the network round trip and the per-call overhead. One flush is in flight at a time; the
commands that arrive meanwhile form the next batch. A caller either awaits a future (``submit``) or is
called back with the outcome (``submit_callback``: no future, for the edge's beacon path, which answers
from the callback without a task).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import structlog
from redis.exceptions import TimeoutError as RedisTimeoutError

from tracker.tasks import stop_task

log = structlog.get_logger("groupcommit")

Outcome = Callable[[Any], None]  # called once with the reply, or with the exception that stands for it
_Pending = tuple[bytes, Outcome, float, str]


class Connection(Protocol):
    """Where batches go: ``tracker.resp.RespConnection`` (one server) or ``tracker.resp_cluster``'s."""

    routed: bool  # whether ``execute`` needs each command's key (a cluster sends it to the key's node)

    async def execute(self, commands: list[bytes], keys: list[str] | None = None) -> list[Any]: ...

    def close(self) -> None: ...


class GroupCommitter:
    """Coalesces commands submitted concurrently into batches of at most ``max_batch`` commands.

    A command still queued ``timeout`` seconds after it was submitted fails with a TimeoutError instead of
    being sent, so a caller never waits much longer than that, even behind a slow batch.
    """

    def __init__(self, connection: Connection, timeout: float, max_batch: int = 256,
                 on_flush: Callable[[int], None] | None = None) -> None:
        self._connection = connection
        self._timeout = timeout
        self._max_batch = max_batch
        self._on_flush = on_flush
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # keep the reference: an unreferenced task may be garbage-collected and every writer would hang
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        pending, self._pending = self._pending, []
        for _, outcome, _, _ in pending:
            _call(outcome, ConnectionError("group committer stopped"))
        self._connection.close()

    def submit(self, encoded: bytes, key: str = "") -> asyncio.Future[Any]:
        """Queue one RESP-encoded command (``resp.command``); the future resolves to its reply (or its error)
        after the shared flush. ``key``: one of the command's keys, which picks its node in a cluster."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.submit_callback(encoded, partial(_resolve, fut), key)
        return fut

    def submit_callback(self, encoded: bytes, outcome: Outcome, key: str = "") -> None:
        """Queue one RESP-encoded command; ``outcome`` is called once, after the shared flush, with its reply
        or with an exception (an error reply, Redis unreachable or slow, the committer stopped)."""
        self._pending.append((encoded, outcome, time.monotonic(), key))
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        expired = time.monotonic() - self._timeout
        live = []
        for args, outcome, queued_at, key in batch:
            if queued_at < expired:
                _call(outcome, RedisTimeoutError("redis write queued too long"))
                continue
            live.append((args, outcome, key))
        if not live:
            return
        if self._on_flush is not None:
            self._on_flush(len(live))
        try:
            replies = await self._connection.execute(
                [args for args, _, _ in live], [key for _, _, key in live] if self._connection.routed else None)
        except Exception as exc:  # connection refused, timeout: every caller of this batch learns it
            for _, outcome, _ in live:
                _call(outcome, exc)
            return
        for (_, outcome, _), reply in zip(live, replies, strict=True):
            _call(outcome, reply)


def _resolve(fut: asyncio.Future[Any], reply: Any) -> None:
    if fut.done():  # the caller went away
        return
    if isinstance(reply, BaseException):
        fut.set_exception(reply)
    else:
        fut.set_result(reply)


def _call(outcome: Outcome, reply: Any) -> None:
    """One caller's outcome; a failing callback is logged and does not stop the others'."""
    try:
        outcome(reply)
    except Exception:
        log.exception("a group-commit callback failed")
