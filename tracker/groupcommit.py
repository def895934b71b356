"""Group commit: many requests' Redis commands share one pipeline round trip.

Each request still awaits the result of its own command, so a 2xx still means "written" (DESIGN invariant 2);
what is shared is the network round trip and redis-py's per-call overhead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from tracker.tasks import stop_task


class GroupCommitter:
    """Coalesces commands submitted concurrently into pipelines of at most ``max_batch`` commands."""

    def __init__(self, redis: Redis, max_batch: int = 256,
                 on_flush: Callable[[int], None] | None = None) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._on_flush = on_flush
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # keep the reference: an unreferenced task may be garbage-collected and every writer would hang
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        for _, fut in self._pending:
            if not fut.done():
                fut.set_exception(ConnectionError("group committer stopped"))
        self._pending.clear()

    def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future resolves to its reply (or its error) after the shared flush."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((args, fut))
        self._wakeup.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        live = [(args, fut) for args, fut in batch if not fut.done()]  # skip callers that timed out
        if not live:
            return
        if self._on_flush is not None:
            self._on_flush(len(live))
        pipe = self._redis.pipeline(transaction=False)
        for args, _ in live:
            pipe.execute_command(*args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # connection refused, timeout: every caller of this batch learns it
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), reply in zip(live, replies, strict=True):
            if fut.done():
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)
