"""Replay (SPEC §5): play a JSON Lines fixture of beacons, API calls and expectations against a service.

One step per line; blank lines are skipped. Every step may carry a ``"comment"`` note.

- ``{"beacon": {<POST /t body>}, "status"?: 204}`` posts a beacon as ``text/plain`` with a browser's
  User-Agent, as ``sendBeacon`` does, without cookies (the body's ``vid`` names the visitor). Without
  ``status`` a 204 is expected.
- ``{"call": "POST /api/v1/contact/subscribe", "body"?: {...}, "status"?: 200, "expect"?: {...},
  "save"?: {"name": "json.path"}}`` calls the API (Basic auth with the API key). Without ``status`` any 2xx
  passes; ``expect`` is matched once against the JSON response.
- ``{"expect": {"call": "GET /api/v1/contact/${a}/events", "status"?: 200, "json"?: {...},
  "within_ms"?: 2000, "save"?: {...}}}`` sends the request again every 100 ms until status and JSON match or
  ``within_ms`` (at most 60000) has passed; 0, the default, looks once.
- ``{"comment": "..."}`` alone is ignored.

A failure does not stop the replay. ``save`` keeps a value whenever the status was the expected one; a later
step that needs a value never saved fails without being sent, naming the line that should have saved it.
The summary counts the steps played (comments aside), the expectations stated (each ``expect`` step, each
beacon or call with ``status`` or ``expect``) and the failures (an unexpected status fails a step too).

``${name}`` in paths, bodies and expected values is a value saved earlier by ``save`` (a dotted path into the
JSON response: ``id``, ``events.0.id``); a string that is exactly ``${name}`` takes the saved value's JSON
type, so ``{"id": "${a}"}`` matches the number. ``${run}`` is predefined: 8 hex digits, fresh for each replay,
so a fixture that builds its visitor ids, event ids and external IDs from it can be replayed against the
same database again and again.

Partial match (``match``): an expected object matches when each of its keys is present and matches; a list
matches element-wise with equal length; anything else by equality (``true`` is not ``1``). An object whose
keys start with ``$`` holds operators, all of which must hold: ``{"$len": n}`` (a list, object or string of
that length), ``{"$contains": [...]}`` (a list in which each expected item matches some element),
``{"$ne": value}`` (present and not equal), ``{"$any": true}`` (present, any value).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
import orjson

__all__ = [
    "Failure",
    "FixtureError",
    "ReplayReport",
    "Step",
    "StepKind",
    "load_fixture",
    "match",
    "parse_fixture",
    "replay",
    "replay_file_cli",
]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_WITHIN_MS = 60_000
POLL_INTERVAL_S = 0.1
REQUEST_TIMEOUT_S = 10.0
SHOWN_BODY_CHARS = 600
BROWSER_USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/131.0.0.0 Safari/537.36")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_OPERATORS = ("$len", "$contains", "$ne", "$any")
_STEP_KEYS = {
    "beacon": {"beacon", "status", "comment"},
    "call": {"call", "body", "status", "expect", "save", "comment"},
    "expect": {"expect", "comment"},
    "comment": {"comment"},
}
_EXPECT_KEYS = {"call", "body", "status", "json", "within_ms", "save"}


class StepKind(StrEnum):
    BEACON = "beacon"
    CALL = "call"
    EXPECT = "expect"
    COMMENT = "comment"


@dataclass(frozen=True)
class Step:
    """One fixture line, validated. ``status`` None means any 2xx; ``json`` is checked when ``has_json``."""

    line: int
    kind: StepKind
    method: str = ""
    path: str = ""
    body: Any = None
    status: int | None = None
    has_json: bool = False
    json: Any = None
    save: Mapping[str, str] = field(default_factory=dict)
    within_ms: int = 0
    explicit: bool = False  # whether the line states an expectation (counted in the summary)
    comment: str | None = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


class FixtureError(ValueError):
    """A fixture that cannot be played; the message names the file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True)
class Failure:
    """An expectation that did not hold: its line, the request, what differed and the response that came back.

    ``mismatch`` says what was expected and what was found, e.g. ``$.total: expected 4, got 3``.
    """

    line: int
    step: str
    mismatch: str
    response: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.step}: {self.mismatch} | response: {self.response}"


@dataclass
class ReplayReport:
    """What a replay found: counts for the summary line and every failure in the order met."""

    steps: int = 0
    expectations: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        return f"replay: {self.steps} steps, {self.expectations} expectations, {len(self.failures)} failed"


# -- loading ---------------------------------------------------------------------------------------------


def load_fixture(path: str | Path) -> list[Step]:
    """Read and validate a fixture file; raises ``FixtureError`` naming the bad line, ``OSError`` if unreadable."""
    text = Path(path).read_text(encoding="utf-8")
    return parse_fixture(text, str(path))


def parse_fixture(text: str, source: str = "<fixture>") -> list[Step]:
    """Validate JSON Lines text into steps (blank lines skipped)."""
    steps = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            try:
                steps.append(_step(number, raw))
            except ValueError as exc:
                raise FixtureError(source, number, str(exc)) from None
    return steps


def _step(line: int, raw: str) -> Step:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("a step must be a JSON object")
    # a call step's "expect" is its response expectation, not a step of its own
    kinds = [k for k in ("beacon", "call") if k in data] or [k for k in ("expect", "comment") if k in data][:1]
    if len(kinds) != 1:
        raise ValueError('a step needs exactly one of "beacon", "call", "expect" (or only "comment")')
    kind = StepKind(kinds[0])
    unknown = set(data) - _STEP_KEYS[kind]
    if unknown:
        raise ValueError(f"unknown key(s) for a {kind} step: {', '.join(sorted(unknown))}")
    comment = data.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise ValueError('"comment" must be a string')
    if kind is StepKind.COMMENT:
        return Step(line, kind, comment=comment)
    if kind is StepKind.BEACON:
        if not isinstance(data["beacon"], dict):
            raise ValueError('"beacon" must be the JSON object to POST to /t')
        return Step(line, kind, "POST", "/t", data["beacon"], status=_status(data.get("status", 204)),
                    explicit="status" in data, comment=comment)
    if kind is StepKind.CALL:
        method, path = _call(data["call"], '"call"')
        json = data.get("expect")
        _check_expected(json, "expect")
        return Step(line, kind, method, path, data.get("body"), status=_status(data.get("status")),
                    has_json="expect" in data, json=json, save=_save(data.get("save")),
                    explicit="status" in data or "expect" in data, comment=comment)
    spec = data["expect"]
    if not isinstance(spec, dict) or "call" not in spec:
        raise ValueError('"expect" must be an object with "call": "GET /path"')
    unknown = set(spec) - _EXPECT_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) in expect: {', '.join(sorted(unknown))}")
    method, path = _call(spec["call"], '"expect.call"')
    within = spec.get("within_ms", 0)
    if not isinstance(within, int) or isinstance(within, bool) or not 0 <= within <= MAX_WITHIN_MS:
        raise ValueError(f'"within_ms" must be an integer from 0 to {MAX_WITHIN_MS}')
    _check_expected(spec.get("json"), "expect.json")
    return Step(line, kind, method, path, spec.get("body"), status=_status(spec.get("status", 200)),
                has_json="json" in spec, json=spec.get("json"), save=_save(spec.get("save")),
                within_ms=within, explicit=True, comment=comment)


def _call(value: Any, where: str) -> tuple[str, str]:
    method, _, path = value.partition(" ") if isinstance(value, str) else ("", "", "")
    if method not in METHODS or not path.startswith("/"):
        raise ValueError(f'{where} must be "METHOD /path" with METHOD one of {", ".join(METHODS)}')
    return method, path


def _status(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
        raise ValueError('"status" must be an HTTP status code')
    return value


def _save(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and _VARIABLE.fullmatch("${" + k + "}") and isinstance(v, str)
            for k, v in value.items()):
        raise ValueError('"save" must map variable names to dotted JSON paths, e.g. {"a": "id"}')
    return value


def _check_expected(expected: Any, where: str) -> None:
    """Reject unknown or malformed operators when loading, not halfway through a replay."""
    if isinstance(expected, list):
        for i, item in enumerate(expected):
            _check_expected(item, f"{where}[{i}]")
    elif isinstance(expected, dict):
        dollar = [k for k in expected if k.startswith("$")]
        if not dollar:
            for key, item in expected.items():
                _check_expected(item, f"{where}.{key}")
            return
        for key in expected:
            if key not in _OPERATORS:
                raise ValueError(f"{where}: {key!r} is not an operator (known: {', '.join(_OPERATORS)}; "
                                 "an object with operators holds nothing else)")
        arg = expected.get("$len", 0)
        if not (isinstance(arg, int) and not isinstance(arg, bool) and arg >= 0):
            raise ValueError(f"{where}: $len takes a non-negative integer")
        if "$contains" in expected:
            if not isinstance(expected["$contains"], list):
                raise ValueError(f"{where}: $contains takes a list of expected items")
            _check_expected(expected["$contains"], f"{where}.$contains")
        if expected.get("$any", True) is not True:
            raise ValueError(f"{where}: $any takes true")


def _operators(expected: Mapping[str, Any]) -> bool:
    """Whether ``expected`` is an operator object (its keys are operators) rather than an expected object."""
    return bool(expected) and all(key in _OPERATORS for key in expected)


# -- matching --------------------------------------------------------------------------------------------


def match(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """The ways ``actual`` fails the partial expectation ``expected`` (empty when it matches)."""
    if isinstance(expected, dict):
        if _operators(expected):
            return [p for op, arg in expected.items() for p in _match_operator(op, arg, actual, path)]
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {_show(actual)}"]
        problems = []
        for key, item in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing")
            else:
                problems += match(item, actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {_show(actual)}"]
        if len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {len(actual)}: {_show(actual)}"]
        problems = []
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            problems += match(want, got, f"{path}[{i}]")
        return problems
    if _same(expected, actual):
        return []
    return [f"{path}: expected {_show(expected)}, got {_show(actual)}"]


def _match_operator(op: str, arg: Any, actual: Any, path: str) -> list[str]:
    if op == "$any":
        return []
    if op == "$ne":
        return [f"{path}: expected anything but {_show(arg)}"] if _same(arg, actual) else []
    if op == "$len":
        if not isinstance(actual, list | dict | str):
            return [f"{path}: expected {arg} items, got {_show(actual)}"]
        return [] if len(actual) == arg else [f"{path}: expected {arg} items, got {len(actual)}: {_show(actual)}"]
    if not isinstance(actual, list):
        return [f"{path}: expected a list containing items, got {_show(actual)}"]
    return [f"{path}: no element matches {_show(want)}" for want in arg
            if not any(not match(want, got) for got in actual)]


def _same(a: Any, b: Any) -> bool:
    # Python's True == 1 would let a JSON boolean match a number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= SHOWN_BODY_CHARS else text[:SHOWN_BODY_CHARS] + "…"


# -- variables -------------------------------------------------------------------------------------------


class _Unresolved(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def substitute(value: Any, variables: Mapping[str, Any]) -> Any:
    """``value`` with each ``${name}`` replaced; a string that is only ``${name}`` keeps the value's type."""
    if isinstance(value, str):
        whole = _VARIABLE.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), variables)
        return _VARIABLE.sub(lambda m: _text(_lookup(m.group(1), variables)), value)
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, variables) for key, item in value.items()}
    return value


def _lookup(name: str, variables: Mapping[str, Any]) -> Any:
    if name not in variables:
        raise _Unresolved(name)
    return variables[name]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def extract(data: Any, path: str) -> Any:
    """The value at a dotted path (``id``, ``events.0.id``); raises ``KeyError`` when there is none."""
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            raise KeyError(part)
    return data


# -- playing ---------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    text: str
    json: Any = None
    is_json: bool = False

    def show(self) -> str:
        body = self.text if len(self.text) <= SHOWN_BODY_CHARS else self.text[:SHOWN_BODY_CHARS] + "…"
        return f"{self.status} {body}".rstrip()


def _status_ok(step: Step, status: int) -> bool:
    return status == step.status if step.status is not None else 200 <= status < 300


class _Player:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str,
                 variables: Mapping[str, Any]) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.auth = aiohttp.encode_basic_auth("replay", api_key)
        self.variables = dict(variables)
        self.unsaved: dict[str, int] = {}  # variable -> line of the failed step that should have saved it
        self.report = ReplayReport()

    def fail(self, step: Step, label: str, mismatch: str, response: str) -> None:
        self.report.failures.append(Failure(step.line, label, mismatch, response))

    async def play(self, step: Step) -> None:
        self.report.steps += 1
        self.report.expectations += step.explicit
        try:
            path = substitute(step.path, self.variables)
            body = substitute(step.body, self.variables)
            expected_json = substitute(step.json, self.variables)
        except _Unresolved as exc:
            why = (f"line {self.unsaved[exc.name]} did not save it" if exc.name in self.unsaved
                   else "no earlier step saves it")
            self.fail(step, step.label, f"${{{exc.name}}} is not set ({why})", "not sent")
            self._not_saved(step)
            return
        label = f"{step.method} {path}"
        deadline = time.monotonic() + step.within_ms / 1000
        while True:
            problems, response = await self._attempt(step, path, body, expected_json)
            if not problems or time.monotonic() + POLL_INTERVAL_S > deadline:
                break
            await asyncio.sleep(POLL_INTERVAL_S)
        if problems:
            within = f" (waited {step.within_ms} ms)" if step.within_ms else ""
            self.fail(step, label, "; ".join(problems) + within, response.show() if response else "none")
        if response is None or not _status_ok(step, response.status):
            self._not_saved(step)  # an unexpected status's body holds nothing worth saving
            return
        for name, json_path in step.save.items():
            try:
                self.variables[name] = extract(response.json, json_path)
                self.unsaved.pop(name, None)
            except KeyError:
                self.unsaved[name] = step.line
                if not problems:  # else the reported mismatch already explains it
                    self.fail(step, label, f"save {name}: no value at {json_path!r}", response.show())

    def _not_saved(self, step: Step) -> None:
        for name in step.save:
            self.unsaved[name] = step.line

    async def _attempt(self, step: Step, path: str, body: Any,
                       expected_json: Any) -> tuple[list[str], _Response | None]:
        try:
            response = await self._send(step, path, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return [f"no response: {type(exc).__name__}: {exc}"], None
        problems = []
        if not _status_ok(step, response.status):
            problems = [f"status: expected {step.status or '2xx'}, got {response.status}"]
        elif step.has_json:
            problems = match(expected_json, response.json) if response.is_json else ["$: expected a JSON body"]
        return problems, response

    async def _send(self, step: Step, path: str, body: Any) -> _Response:
        headers = {}
        data: bytes | None = None
        if step.kind is StepKind.BEACON:
            headers["Content-Type"] = "text/plain"  # what sendBeacon sends: no CORS preflight
            headers["User-Agent"] = BROWSER_USER_AGENT  # a beacon comes from a browser, not a bot
            data = orjson.dumps(body)
        else:
            headers["Authorization"] = self.auth
            if body is not None:
                headers["Content-Type"] = "application/json"
                data = orjson.dumps(body)
        async with self.session.request(step.method, self.base_url + path, data=data, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as r:
            text = await r.text()
        try:
            return _Response(r.status, text, orjson.loads(text), True) if text else _Response(r.status, text)
        except orjson.JSONDecodeError:
            return _Response(r.status, text)


async def replay(steps: Iterable[Step], session: aiohttp.ClientSession, base_url: str, api_key: str,
                 *, variables: Mapping[str, Any] | None = None) -> ReplayReport:
    """Play ``steps`` in order against the service at ``base_url``; every failed expectation is reported.

    A failed step does not stop the replay. Give the session an ``aiohttp.DummyCookieJar``: the visitor
    cookie that ``POST /t`` sets outranks a beacon's ``vid``, so a kept cookie would merge the visitors.
    """
    player = _Player(session, base_url, api_key, {"run": secrets.token_hex(4), **(variables or {})})
    for step in steps:
        if step.kind is not StepKind.COMMENT:
            await player.play(step)
    return player.report


def replay_file_cli(path: str, url: str, api_key: str) -> int:
    """``stitcher replay FILE --url URL``: 0 when every expectation holds, 1 otherwise, 2 for a bad fixture."""
    try:
        steps = load_fixture(path)
    except (OSError, UnicodeDecodeError, FixtureError) as exc:
        print(f"replay: cannot read fixture: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(_replay_url(steps, url, api_key))
    for failure in report.failures:
        print(f"{path}:{failure.line}: {failure.step}: {failure.mismatch} | response: {failure.response}")
    print(report.summary())
    return 0 if report.ok else 1


async def _replay_url(steps: Sequence[Step], url: str, api_key: str) -> ReplayReport:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        return await replay(steps, session, url, api_key)
