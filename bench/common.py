"""Helpers shared by the benchmarks: child processes that are always stopped, waiting for HTTP, wrk.

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent  # the repository
VENV_BIN = Path(sys.executable).parent
# The rate limiter runs in every benchmarked service, as it does by default, but with buckets no benchmark
# meets: all of a benchmark's load comes from one address (and one API key), which the default limits would
# rightly refuse. Each beacon and API call still pays for taking its token. Set RATE_LIMIT_TRACK /
# RATE_LIMIT_API in the environment to measure other limits (0: none).
BENCH_RATE_LIMITS = {"RATE_LIMIT_TRACK": "1000000/1s", "RATE_LIMIT_API": "1000000/1s"}


def with_bench_limits(env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``BENCH_RATE_LIMITS`` where it sets no limit of its own."""
    return {**BENCH_RATE_LIMITS, **env}

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str = "") -> None:
    """A progress line of a benchmark, printed at once."""
    print(text, flush=True)


def per_backend(run: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``run(backend)`` on SQLite, then PostgreSQL; a backend that fails is reported (``{"error": …}``) and the
    other still runs."""
    results: dict[str, dict[str, Any]] = {}
    for backend in ("sqlite", "postgresql"):
        say(f"   {backend}:")
        try:
            results[backend] = run(backend)
        except Exception as exc:
            say(f"      !! {type(exc).__name__}: {str(exc)[:500]}")
            results[backend] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    return results


def free_port() -> int:
    """A free port: any, or with ``BENCH_PORTS=LOW-HIGH`` the first free one of that range not handed out
    before in this run (a shared machine where each runner has its own ports)."""
    span = os.environ.get("BENCH_PORTS")
    if not span:
        with socket.socket() as s:
            s.bind((HOST, 0))
            return int(s.getsockname()[1])
    low, high = (int(p) for p in span.split("-"))
    for port in range(low, high + 1):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in BENCH_PORTS={span}")


_handed_out: set[int] = set()


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the benchmark itself is killed (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of the child's output file, for error messages."""
        if self.log is None or not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Starts processes in their own process groups and stops every group on ``close()`` (use ``with``)."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
              log: Path | None = None, cwd: Path = ROOT) -> Child:
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            out = log.open("wb")
        try:
            proc = subprocess.Popen(list(args), cwd=cwd, env=dict(env) if env is not None else None,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, preexec_fn=die_with_parent)
        finally:
            if not isinstance(out, int):
                out.close()
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        if child.alive():
            _killpg(child.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(child.pid, signal.SIGKILL)
                child.proc.wait(timeout)
        else:
            _killpg(child.pid, signal.SIGKILL)  # the leader is gone; anything it left in its group is not
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {child.name} (pid {child.pid}): {exc}", file=sys.stderr)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def http_status(url: str, timeout: float = 1.0, data: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> int | None:
    """The status of one request to ``url`` (127.0.0.1 only), or None when nothing answers."""
    assert url.startswith(f"http://{HOST}:"), url
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return None


def http_get(url: str, timeout: float = 2.0) -> bytes | None:
    """The body of a GET to ``url`` (127.0.0.1 only), or None on any failure."""
    assert url.startswith(f"http://{HOST}:"), url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return bytes(r.read())
    except (OSError, urllib.error.URLError):
        return None


def prometheus_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` in Prometheus text format."""
    m = re.search(rf"^{re.escape(name)}(?:{{}})? ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def wait_http(child: Child, url: str, timeout: float) -> str | None:
    """Wait until ``url`` answers 200; None when it does, else why not (with the child's last output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            return f"{child.name} exited with status {child.proc.returncode}:\n{child.tail()}"
        if http_status(url, timeout=0.5) == 200:
            return None
        time.sleep(0.1)
    return f"{child.name} did not answer 200 on {url} within {timeout:.0f} s:\n{child.tail()}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine have used so far (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet(max_wait_s: float = 3.0, threshold_cores: float = 0.3, window_s: float = 0.5) -> float:
    """Wait (at most ``max_wait_s``) until the machine is nearly idle; returns the last load seen, in cores.

    On a shared 2-core machine other people's tests can take most of the CPU; starting a run in a lull
    makes the figures less noisy (each run still reports what others used while it ran).
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = machine_busy_seconds()
        time.sleep(window_s)
        load = (machine_busy_seconds() - before) / window_s
        if load <= threshold_cores or time.monotonic() >= deadline:
            return round(load, 2)


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (wrk runs are reaped before the next one starts)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --- wrk --------------------------------------------------------------------------------------------------

WRK_INSTALL_HINT = "wrk is not installed: `sudo apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`"


def find_wrk() -> str | None:
    return shutil.which("wrk")


@dataclass
class WrkResult:
    label: str
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    non_2xx: int = 0  # wrk counts "non-2xx or 3xx"
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used during the run, per process
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds used during the run, per process
    raw: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("raw")
        return d


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(label: str, out: str) -> WrkResult:
    """Requests/s, latency percentiles, errors and non-2xx counts from wrk's text output."""
    r = WrkResult(label, raw=out)
    if m := re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out, re.M):
        r.requests = int(m.group(1))
        r.seconds = _ms(m.group(2) + m.group(3)) / 1000
    if m := re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M):
        r.rps = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        if m := re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+(?:us|ms|s|m|h))\s*$", out, re.M):
            setattr(r, f"p{pct}_ms", _ms(m.group(1)))
    if m := re.search(r"^\s*Latency\s+\S+\s+\S+\s+(\S+)", out, re.M):
        try:
            r.max_ms = _ms(m.group(1))
        except ValueError:
            pass
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out):
        r.non_2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        r.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    return r


def run_wrk(label: str, url: str, script: Path, *, threads: int = 2, connections: int = 64,
            duration_s: float = 10, script_args: Sequence[str] = (), watch: Mapping[str, int] | None = None,
            during: Callable[[], None] | None = None) -> WrkResult:
    """One wrk run against ``url`` (127.0.0.1 only); ``watch`` maps names to pids whose CPU use is measured.

    ``during`` is called once right after wrk starts (e.g. to attach a profiler).
    """
    assert url.startswith(f"http://{HOST}:"), url
    wrk = find_wrk()
    if wrk is None:
        raise RuntimeError(WRK_INSTALL_HINT)
    args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency", "--timeout", "5s",
            "-s", str(script), url]
    if script_args:
        args += ["--", *script_args]
    watch = dict(watch or {})
    before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    wrk_before = children_cpu_seconds()
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent)
    try:
        if during is not None:
            during()
        out, _ = proc.communicate(timeout=duration_s + 30)
    except BaseException:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.monotonic() - started
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed (status {proc.returncode}):\n{text}")
    result = parse_wrk(label, text)
    for name, pid in watch.items():
        result.cpu_s[name] = round(cpu_seconds(pid) - before[name], 3)
    result.cpu_s["wrk"] = round(children_cpu_seconds() - wrk_before, 3)
    # whatever else ran on the machine meanwhile (other people's tests ...): noise in the figures
    result.cpu_s["others"] = round(max(0.0, machine_busy_seconds() - busy_before - sum(result.cpu_s.values())), 3)
    result.cpu = {name: round(s / wall, 2) for name, s in result.cpu_s.items()}
    return result
