"""``stitcher serve --workers N``: N service processes on one port, started, watched and stopped by one parent.

Each child is an ordinary ``stitcher serve --reuse-port`` on the same host and port (the kernel spreads new
connections over their sockets: ``SO_REUSEPORT``), on one shared Redis and database. The parent serves
nothing itself: it has already run the migrations and, without ``REDIS_URL``, started the one embedded
redis-server the children share. What must not run in several processes at once is spread or elected in
the children themselves (README, "Several processes").

Signals: SIGTERM or SIGINT to the parent stops every child gracefully (SIGTERM: each stops listening,
answers what it holds, finishes its worker's batch, releases its lease) and the parent exits 0. The children
run in their own session, so a terminal's Ctrl-C reaches the parent alone, which forwards one SIGTERM; a
parent killed outright takes them with it (``PR_SET_PDEATHSIG``).

A child that dies unasked is started again after ``RESTART_DELAY_S``; more than ``MAX_RESTARTS`` deaths within
``RESTART_WINDOW_S`` (a crash loop: a port taken, a broken configuration) stop the rest, and the parent exits 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from tracker.embedded_redis import die_with_parent

log = structlog.get_logger("supervisor")
STOP_TIMEOUT_S = 75.0  # a child's graceful stop (aiohttp's 60 s shutdown and the worker's grace) before SIGKILL
RESTART_DELAY_S = 1.0
MAX_RESTARTS, RESTART_WINDOW_S = 5, 60.0
POLL_S = 0.2


@dataclass
class _Slot:
    """One of the N places a child process fills (and a restarted one fills again)."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    due: float = 0.0  # when to start it (monotonic)


@dataclass
class Supervisor:
    """Starts ``workers`` copies of ``command`` with ``env``, restarts the ones that die, stops them all."""

    command: Sequence[str]
    env: Mapping[str, str]
    workers: int
    stop_timeout_s: float = STOP_TIMEOUT_S
    _stopping: threading.Event = field(default_factory=threading.Event)
    _deaths: deque[float] = field(default_factory=deque)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (0) or a crash loop (1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        slots = [_Slot(i) for i in range(self.workers)]
        code = 0
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                for slot in slots:
                    if slot.proc is None and now >= slot.due:
                        slot.proc = self._spawn(slot.index)
                    elif slot.proc is not None and (status := slot.proc.poll()) is not None:
                        log.warning("worker process died; starting another", pid=slot.proc.pid, status=status,
                                    slot=slot.index)
                        slot.proc, slot.due = None, now + RESTART_DELAY_S
                        if self._crash_loop(now):
                            log.error("worker processes keep dying; stopping", deaths=len(self._deaths),
                                      window_s=RESTART_WINDOW_S)
                            code = 1
                            self._stopping.set()
                self._stopping.wait(POLL_S)
        finally:
            self._stop_all([s.proc for s in slots if s.proc is not None])
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping.set()

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(self.command), env=dict(self.env), stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=die_with_parent)
        log.info("worker process started", pid=proc.pid, slot=index)
        return proc

    def _crash_loop(self, now: float) -> bool:
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - RESTART_WINDOW_S:
            self._deaths.popleft()
        return len(self._deaths) > MAX_RESTARTS

    def _stop_all(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM to every child, then wait for them all (SIGKILL to those past ``stop_timeout_s``)."""
        for proc in procs:
            proc.send_signal(signal.SIGTERM)  # nothing if it has exited already
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker process did not stop in time; killing it", pid=proc.pid)
                proc.kill()
                proc.wait()


def child_command(host: str, port: int) -> list[str]:
    """The command line of one child: this Python, ``stitcher serve --reuse-port`` on the parent's address."""
    return [sys.executable, "-m", "stitcher.cli", "serve", "--host", host, "--port", str(port), "--reuse-port",
            "--child"]


def child_env(redis_url: str) -> dict[str, str]:
    """The parent's environment with the Redis every child shares (the embedded one when REDIS_URL was unset)."""
    return {**os.environ, "REDIS_URL": redis_url}
