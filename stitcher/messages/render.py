"""Message templates: Jinja2's immutable sandbox, with every way a template can grow text bounded.

A message's subject and body are Jinja2 templates (``{{ firstName }}``, ``{% if %}``, ``{% for %}``, filters),
rendered per recipient. What a template may do:

- no attribute access to Python internals and no mutation of lists or dicts (``ImmutableSandboxedEnvironment``);
- no macros, ``{% call %}``/``{% filter %}``/``{% set %}…{% endset %}`` blocks, includes or imports (refused
  when the message is created: each buffers text the output cap cannot see, and no message needs them);
- every operation that makes a longer string or list (``+``, ``*``, ``%``, ``~``, ``**``, filters and string
  methods) is checked before it runs: an integer argument above ``MAX_COUNT``, or a result longer than
  ``MAX_OUTPUT`` characters, fails the render; ``range`` stops at ``MAX_COUNT``;
- the rendered output is streamed and fails past ``MAX_OUTPUT`` characters, and all the loops of a render
  together stop at ``MAX_ITERATIONS`` iterations (each ``{% for %}`` is wrapped in a counting filter).

A rendered text that cannot be stored (a NUL or a lone surrogate, which string literals can spell) fails too.
A failed render fails that recipient alone (``RenderFailed``, its message says why). An undefined placeholder
renders empty, and so does any attribute or item of it (``ChainableUndefined``): a contact without a first
name gets ``Hello !`` rather than no message — the way the platform treats a missing variable.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import TemplateError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from stitcher.jsonbody import text_problem

MAX_OUTPUT = 256 * 1024  # characters of one rendered subject or body, and of any string made on the way
MAX_COUNT = 10_000  # largest integer a filter, method or ``range`` may be given
MAX_ITERATIONS = 100_000  # loop iterations of one render, all loops together
MAX_INDENT = 16  # widest ``tojson`` indent
_ITERATIONS: ContextVar[list[int]] = ContextVar("message_loop_iterations")
_WIDE_FORMAT = re.compile(r"\d{5,}")  # a printf/format width of 10,000 or more
_REFUSED = {nodes.Macro: "macros", nodes.CallBlock: "{% call %} blocks", nodes.FilterBlock: "{% filter %} blocks",
            nodes.AssignBlock: "{% set %} blocks", nodes.Extends: "{% extends %}", nodes.Include: "{% include %}",
            nodes.Import: "{% import %}", nodes.FromImport: "{% from %} imports"}
_UNSAFE_METHODS = frozenset({"expandtabs", "format_map", "translate"})


class RenderFailed(Exception):
    """A template could not be rendered for a recipient (too large, a refused operation, a runtime error)."""


class TemplateRefused(Exception):
    """A template that does not parse or uses what messages may not; the message says where."""


def _length(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else len(str(value)) if value is not None else 0


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_OUTPUT:
        raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")
    return value


def _check_ints(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_COUNT:
            raise RenderFailed(f"a number above {MAX_COUNT} was given to a filter or method")
        if isinstance(value, str) and "{" in value and _WIDE_FORMAT.search(value):
            raise RenderFailed("a format width of 10000 or more")


def _replace_size(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = text.count(old) if old else len(text) + 1
        if len(text) + count * max(0, len(new) - len(old)) > MAX_OUTPUT:
            raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")


def _joined_size(separator: Any, parts: list[Any]) -> None:
    if sum(map(_length, parts)) + _length(separator) * len(parts) > MAX_OUTPUT:
        raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")


def _guarded_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)  # keeps Jinja's pass_context / pass_eval_context / pass_environment mark
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_ints(args, kwargs)
        lead = tuple(a for a in args[:1] if isinstance(a, (Context, EvalContext, _Sandbox)))
        values = list(args[len(lead):])
        if name in ("join", "groupby") and values:
            values[0] = list(values[0])  # a range or generator is walked once, here, to size the result
            args = (*lead, *values)
        if name == "join" and values:
            _joined_size(values[1] if len(values) > 1 else kwargs.get("d", ""), values[0])
        if name == "groupby" and values:  # each item without the attribute is keyed by a lower-cased default
            default = values[2] if len(values) > 2 else kwargs.get("default")
            if _length(default) * len(values[0]) > MAX_OUTPUT:
                raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")
        if name == "tojson":  # the indent is written once per line of the JSON
            indent = values[1] if len(values) > 1 else kwargs.get("indent")
            if (indent if isinstance(indent, int) else _length(indent)) > MAX_INDENT:
                raise RenderFailed(f"tojson's indent is at most {MAX_INDENT}")
        if name == "replace" and len(values) >= 3:
            _replace_size(*values[:3])
        if name == "indent" and values and isinstance(values[0], str):
            width = values[1] if len(values) > 1 else kwargs.get("width", 4)
            if (values[0].count("\n") + 1) * _length(width) > MAX_OUTPUT:
                raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")
        if name == "format" and values and isinstance(values[0], str) and _WIDE_FORMAT.search(values[0]):
            raise RenderFailed("a format width of 10000 or more")
        return _check_size(original(*args, **kwargs))

    return guarded


def _loop_budget(items: Iterable[Any]) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this (put there at parse time): all the loops of one render
    together stop at ``MAX_ITERATIONS``, so nested loops cannot spin for minutes without output."""
    spent = _ITERATIONS.get()
    for item in items:
        spent[0] += 1
        if spent[0] > MAX_ITERATIONS:
            raise RenderFailed(f"the message's loops ran past {MAX_ITERATIONS} iterations")
        yield item


def _bounded_range(*args: int) -> range:
    _check_ints(args, {})
    result = range(*args)
    if len(result) > MAX_COUNT:
        raise RenderFailed(f"range() of more than {MAX_COUNT} items")
    return result


class _Generator(CodeGenerator):
    """Compiles ``a ~ b`` through ``environment.bounded_concat``, so string concatenation is checked too."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "%", "**"})
    code_generator_class = _Generator

    def __init__(self) -> None:
        super().__init__(undefined=ChainableUndefined, autoescape=False, keep_trailing_newline=True)
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        # a name no template can write (the lexer reads `|loop-budget` as a subtraction), nor a jsonParam shadow
        self.filters["loop-budget"] = _loop_budget
        self.globals = {"range": _bounded_range, "dict": self.globals["dict"]}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if not (isinstance(left, (int, float)) and isinstance(right, (int, float))) or abs(right) > 64:
                raise RenderFailed("a power above 64")
        elif operator == "*":
            count, seq = (left, right) if isinstance(left, int) else (right, left)
            if isinstance(count, int) and isinstance(seq, (str, list, tuple)) and count * len(seq) > MAX_OUTPUT:
                raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and _length(left) + _length(right) > MAX_OUTPUT:
                raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")
        elif operator == "%" and isinstance(left, str) and _WIDE_FORMAT.search(left):
            raise RenderFailed("a format width of 10000 or more")
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_ints(args, kwargs)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _UNSAFE_METHODS:
                raise RenderFailed(f"str.{name} is not available in messages")
            if name == "replace" and len(args) >= 2:
                _replace_size(owner, args[0], args[1])
            if name == "join" and args:
                parts = list(args[0])
                _joined_size(owner, parts)
                args = (parts, *args[1:])
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map") \
                and _WIDE_FORMAT.search(owner):
            raise RenderFailed("a format width of 10000 or more")
        return super().wrap_str_format(value)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return not isinstance(obj, Namespace) and super().is_safe_attribute(obj, attr, value)

    def bounded_concat(self, parts: Sequence[Any]) -> str:
        if sum(map(_length, parts)) > MAX_OUTPUT:
            raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")
        return "".join(map(str, parts))


_ENV = _Sandbox()


class Template:
    """A parsed, checked template; ``render`` it per recipient."""

    def __init__(self, source: str) -> None:
        try:
            tree = _ENV.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateRefused(f"line {exc.lineno}: {exc.message}") from None
        for kind, what in _REFUSED.items():
            node = next(tree.find_all(kind), None)
            if node is not None:
                raise TemplateRefused(f"line {node.lineno}: {what} are not available in messages")
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "loop-budget", [], [], None, None, lineno=loop.lineno)
        try:
            self._template = _ENV.from_string(tree)
        except TemplateError as exc:
            raise TemplateRefused(str(exc.message)) from None

    def render(self, context: Mapping[str, Any]) -> str:
        """The text for one recipient; ``RenderFailed`` past ``MAX_OUTPUT`` characters or on any error."""
        out: list[str] = []
        size = 0
        token = _ITERATIONS.set([0])
        try:
            chunks: Iterator[str] = self._template.generate(context)
            for chunk in chunks:
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise RenderFailed(f"the message grew past {MAX_OUTPUT} characters")
                out.append(chunk)
        except RenderFailed:
            raise
        except Exception as exc:  # the template is the client's code: whatever it raises (a filter's
            # AssertionError, an AttributeError, …) fails this recipient, never the request
            raise RenderFailed(f"{type(exc).__name__}: {exc}"[:500]) from None
        finally:
            _ITERATIONS.reset(token)
        text = "".join(out)
        if (why := text_problem(text)) is not None:  # a literal such as '\ud800' or '\x00' cannot be stored
            raise RenderFailed(f"the rendered text {why}")
        return text
