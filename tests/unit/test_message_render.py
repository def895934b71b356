"""Message templates: the sandbox renders placeholders and refuses every way a template can reach Python
internals or grow text past the cap (each refusal is a ``RenderFailed`` or, at creation, ``TemplateRefused``)."""

from __future__ import annotations

import tracemalloc

import pytest

from stitcher.messages.render import MAX_OUTPUT, RenderFailed, Template, TemplateRefused


@pytest.mark.parametrize(("source", "context", "expected"), [
    ("Hi {{ firstName }}!", {"firstName": "Ann"}, "Hi Ann!"),
    ("Hi {{ firstName }}{{ nope.deep[0] }}!", {}, "Hi !"),
    ("{{ items|join(', ') }}", {"items": [1, 2]}, "1, 2"),
    ("{{ 'a' ~ name|upper }}", {"name": "b"}, "aB"),
    ("{% for i in range(3) %}{{ i }}{% endfor %}", {}, "012"),
    ("{{ '%5s'|format('x') }}|{{ '{:>3}'.format(1) }}", {}, "    x|  1"),
    ("{{ fields['7'] }}", {"fields": {"7": "gold"}}, "gold"),
    ("{{ ''.__class__ }}{{ x.__init__.__globals__ }}", {}, ""),
    ("{% for i in a %}{{ loop.index }}/{{ loop.length }}:{{ i }} {% else %}none{% endfor %}", {"a": [5, 6]},
     "1/2:5 2/2:6 "),
    ("{% for x in t recursive %}[{{ x.n }}{{ loop(x.c) }}]{% endfor %}",
     {"t": [{"n": 1, "c": [{"n": 2, "c": []}]}]}, "[1[2]]"),
    ("{% for i in a %}{{ i }}{% endfor %}", {"a": [1, 2], "loop-budget": "x"}, "12"),
])
def test_templates_render_placeholders_and_hide_internals(source, context, expected):
    """Placeholders render, an undefined one (and anything under it) renders empty, internals are hidden."""
    assert Template(source).render(context) == expected


@pytest.mark.parametrize("source", [
    "{{ 'x' * 10**9 }}", "{{ 'x'|center(1000000000) }}", "{{ range(10**9)|list }}", "{{ '%999999999s' % 'x' }}",
    "{{ '{:999999999}'.format(1) }}", "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}",
    "{{ ('x' * 200000).replace('x', 'yy') }}", "{{ [1]|batch(1000000000, 0)|list }}", "{{ 'a'.expandtabs(9) }}",
    "{{ 1 / 0 }}", "{{ [].append(1) }}", "{{ 2 ** 10000 }}", "{% for i in range(20) %}{{ s ~ s ~ s ~ s }}{% endfor %}",
    "{{ ('ab' * 100000) ~ ('ab' * 100000) }}", "{{ (s + s + s + s + s + s) }}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    "{{ s|truncate(9999, true, s) }}",  # Jinja asserts the end fits: an AssertionError, once a 500
])
def test_growth_and_unsafe_operations_fail_the_render(source):
    """Every path to a huge string, a huge loop or a mutation fails cleanly instead of allocating it."""
    with pytest.raises(RenderFailed):
        Template(source).render({"s": "x" * (MAX_OUTPUT // 4)})


@pytest.mark.parametrize("source", [
    "{{ range(1000)|join(s) }}", "{{ (range(1000)|list)|join(s) }}", "{{ ('x' * 1000)|replace('x', s) }}",
    "{{ ('x' * 1000)|replace('', s) }}", "{{ ('x' * 1000)|groupby(10, s) }}", "{{ (range(1000)|list)|tojson(s) }}",
    "{{ (range(1000)|list)|tojson(10000) }}",
])
def test_filters_that_multiply_their_arguments_fail_before_they_build_the_text(source):
    """``join`` and ``replace`` (which take Jinja's eval context first), ``groupby`` (which lower-cases its
    ``default`` once per item) and ``tojson`` (its ``indent`` once per line) are sized before they run, so a
    render that would build ~64 MB fails having allocated next to nothing (it once took GBs and seconds)."""
    tracemalloc.start()
    try:
        with pytest.raises(RenderFailed):
            Template(source).render({"s": "x" * (MAX_OUTPUT // 4)})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * MAX_OUTPUT


@pytest.mark.parametrize("source", [
    "{{ x", "{% if %}", "{% macro m() %}{% endmacro %}", "{% set a %}x{% endset %}", "{% include 'a' %}",
    "{% filter upper %}x{% endfilter %}", "{% call f() %}{% endcall %}", "{% import 'a' as b %}",
])
def test_templates_that_do_not_parse_or_buffer_text_are_refused(source):
    """Syntax errors and the block constructs whose buffers the output cap cannot see are refused up front."""
    with pytest.raises(TemplateRefused):
        Template(source)
