"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_task(task: asyncio.Task[None], within: float = 10.0) -> None:
    """Cancel ``task`` and wait for it, cancelling again until it is done or ``within`` seconds pass.

    One cancel is not always enough on Python 3.11: ``asyncio.wait_for`` (which redis-py uses for socket
    timeouts) can swallow a cancellation that arrives as its inner call completes, and a loop would go on.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if task.done():
        with contextlib.suppress(asyncio.CancelledError):
            task.result()
