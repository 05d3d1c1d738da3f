"""Chat templates within their time and size limits (realm/chat.py): hostile templates stop with
ChatTemplateError in time and in bounded memory, and the process stays usable; legitimate
templates render as jinja2 renders them."""

from __future__ import annotations

import json
import re
import threading
import time
import tracemalloc

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from realm import ChatTemplate, ChatTemplateError
from realm.chat import MAX_TEMPLATE_CHARS
from realm.errors import ArgumentTypeError, InvalidArgumentError, RealmError

TIME_LIMIT = 0.3
MAX_OUTPUT = 256 * 1024
# What a stopped template may use at its peak: the work budget (16 x MAX_OUTPUT) is an upper bound
# on what it keeps, and no single operation builds much more than MAX_OUTPUT.
MEMORY_BOUND = 24 * MAX_OUTPUT
HELLO = [{"role": "user", "content": "Hello"}]
NORMAL = "{% for m in messages %}<{{ m.role }}>{{ m.content|trim }}</{{ m.role }}>{% endfor %}"
NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
BIG = '{% set s = "x" * 200000 %}'
DOUBLING = '{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(60) %}' \
           '{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}'
TEN_BILLION_STEPS = "{% for a in range(100000) %}{% for b in range(100000) %}"
RECURSIVE_MACRO = "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}"

HOSTILE = {
    # time
    "nested loops": (NESTED_LOOPS, "time limit"),
    "nested loops printing": (TEN_BILLION_STEPS + "{{ a }}{% endfor %}{% endfor %}", "limit"),
    "loop without calls": ('{% set L = range(30000)|list %}{% for a in range(100000) %}{% if -1 in L %}{% endif %}'
                           '{% endfor %}', "time limit"),
    "recursive macro": (RECURSIVE_MACRO, "nests too deeply"),
    "recursive loop": ("{% for x in [[1]] recursive %}{{ loop([[x]]) }}{% endfor %}", "limit|nests too deeply"),
    # operators
    "str times 10**10": ('{{ "x" * 10**10 }}', "size limit"),
    "str times literal": ('{{ "x" * 10000000000 }}', "size limit"),
    "markup times": ('{{ ("x"|safe) * 10**10 }}', "size limit"),
    "list times": ("{{ [1] * 10**10 }}", "size limit"),
    "power": ("{{ 10 ** 10000000000 }}", "integer"),
    "int from binary digits": ('{{ ("1" * 200000)|int(base=2) }}', "integer"),
    "repeated squaring": ("{% set ns = namespace(n=3) %}{% for i in range(100) %}{% set ns.n = ns.n * ns.n %}"
                          "{% endfor %}", "integer"),
    "~ doubling": ('{% set ns = namespace(s="x") %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}',
                   "size limit"),
    "+ doubling": ('{% set ns = namespace(s="x") %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}',
                   "size limit"),
    "list + doubling": ("{% set ns = namespace(s=[1]) %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}", "size limit"),
    "printf width": ('{{ "%1000000000s" % "x" }}', "size limit"),
    "printf star width": ('{{ "%*s" % (1000000000, "x") }}', "size limit"),
    "printf nested key": ('{{ "%(a(b))1000000000s" % {"a(b)": 1} }}', "size limit"),
    # methods
    "str.format width": ("{{ '{:>1000000000}'.format('x') }}", "size limit"),
    "str.format nested width": ("{{ '{:>{w}}'.format('x', w=1000000000) }}", "size limit"),
    "str.format fields": ("{{ ('{0}' * 100000).format('y' * 100000) }}", "size limit"),
    "format_map": ("{{ '{a:>1000000000}'.format_map({'a': 1}) }}", "size limit"),
    "ljust": ('{{ "x".ljust(10**10) }}', "size limit"),
    "zfill": ('{{ "1".zfill(10**10) }}', "size limit"),
    "replace empty": ('{{ ("x" * 1000).replace("", "y" * 100000) }}', "size limit"),
    "expandtabs": ('{{ ("\\t" * 100000).expandtabs(100000) }}', "size limit"),
    "translate": ('{{ ("a" * 1000).translate({97: "b" * 100000}) }}', "size limit"),
    "join method": ('{{ ("y" * 100000).join(["x"] * 30000) }}', "size limit"),
    "split": ('{{ ("a " * 100000).split()|length }}', "size limit"),
    "splitlines": ('{{ ("\\n" * 200000).splitlines()|length }}', "size limit"),
    "int.to_bytes": ('{{ (1).to_bytes(10**9, "big")|length }}', "size limit"),
    "dict.fromkeys": ("{{ {}.fromkeys(range(100000))|length }}", "size limit"),
    # filters
    "center": ('{{ "x"|center(10**10) }}', "size limit"),
    "center, folded at compile time": ('{{ "x"|center(10000000000) }}', "size limit"),
    "indent": ('{{ ("a\\n" * 1000)|indent(10**7) }}', "size limit"),
    "indent by a text": ('{{ ("a\\n" * 1000)|indent("x" * 100000) }}', "size limit"),
    "replace": ('{{ ("x" * 1000)|replace("x", "y" * 100000) }}', "size limit"),
    "format": ('{{ "%1000000000d"|format(1) }}', "size limit"),
    "wordwrap": ('{{ ("a " * 1000)|wordwrap(1, wrapstring="x" * 100000) }}', "size limit"),
    "tojson indent": ("{{ [[[[[[[[[[1]]]]]]]]]]|tojson(indent=1000000) }}", "size limit"),
    "tojson separators": ('{{ range(1000)|list|tojson(separators=("x" * 100000, ":")) }}', "size limit"),
    "batch fill": ('{{ [1]|batch(10**9, "x")|list }}', "size limit"),
    "slice fill": ('{{ [1]|slice(10**9, "x")|list }}', "size limit"),
    "list of a text": ('{{ ("x" * 200000)|list|length }}', "size limit"),
    "map over a text": ('{{ ("x" * 200000)|map("upper")|list|length }}', "size limit"),
    "sum of lists": ("{{ ([[1] * 100] * 1000)|sum(start=[])|length }}", "limit"),
    "map center": ('{{ ["x"]|map("center", 10**9)|list }}', "size limit"),
    "strftime_now": ('{{ strftime_now("%c" * 100000)|length }}', "size limit"),
    "lipsum": ("{{ lipsum(10**9) }}", "lipsum' is undefined"),
    # shared references: a small list that prints (or compares) huge
    "shared list printed": (BIG + "{% set l = [s] * 30000 %}{{ l }}", "size limit"),
    "shared list |string": (BIG + "{% set l = [s] * 30000 %}{{ l|string|length }}", "size limit"),
    "shared list |tojson": (BIG + "{% set l = [s] * 30000 %}{{ l|tojson|length }}", "size limit"),
    "shared list |join": (BIG + "{% set l = [s] * 30000 %}{{ l|join|length }}", "size limit"),
    "shared list ~": (BIG + '{% set l = [s] * 30000 %}{{ (l ~ "")|length }}', "size limit"),
    "shared list |upper": (BIG + "{% set l = [s] * 30000 %}{{ l|upper|length }}", "size limit"),
    "shared list |pprint": (BIG + "{{ ([s] * 1000)|pprint|length }}", "size limit"),
    "doubling list compared": (DOUBLING + "{{ ns.a == ns.b }}", "limit"),
    "doubling list sorted": (DOUBLING + "{{ [ns.a, ns.b]|sort }}", "limit"),
    "doubling varargs": ("{% set ns = namespace(a=[1]) %}{% macro d(x) %}{% set ns.a = varargs %}{% endmacro %}"
                         "{% for i in range(60) %}{{ d(0, ns.a, ns.a) }}{% endfor %}{{ ns.a == [] }}", "limit"),
    "cyclic namespace": ("{% set ns = namespace() %}{% set ns.a = ns %}{{ ns }}", "limit"),
    # buffered output: macros, blocks, {% set %}, {% filter %}, {% call %}
    "macro output": ("{% macro m() %}" + TEN_BILLION_STEPS + "0123456789012345678901234567890123456789"
                     "{% endfor %}{% endfor %}{% endmacro %}{{ m()|length }}", "limit"),
    "set block": ("{% set x %}" + TEN_BILLION_STEPS + "0123456789{% endfor %}{% endfor %}{% endset %}{{ x|length }}",
                  "limit"),
    "self.block()": ("{% block b %}" + TEN_BILLION_STEPS + "0123456789{% endfor %}{% endfor %}{% endblock %}"
                     "{{ self.b()|length }}", "limit"),
    "filter block": ("{% filter upper %}" + TEN_BILLION_STEPS + "0123456789{% endfor %}{% endfor %}{% endfilter %}",
                     "limit"),
    "call block": ("{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}" + TEN_BILLION_STEPS + "0123456789"
                   "{% endfor %}{% endfor %}{% endcall %}", "limit"),
    "recursive macro accumulating": ("{% macro m(s) %}{{ m(s ~ 'x' * 10000) }}{% endmacro %}{{ m('') }}",
                                     "size limit"),
    # the source
    "deeply nested expression": ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests too deeply"),
    "deeply nested ifs": ("{% if 1 %}" * 3000 + "{% endif %}" * 3000, "nests too deeply|time limit"),
    "dense source": ("{{ [" + ",".join(["a"] * 30000) + "] }}", "time limit"),
    "huge source": ("x" * (10 << 20), "over the limit"),
}


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "realm-chat-template"]


def _no_workers_left() -> bool:
    deadline = time.monotonic() + 2
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _workers()


class TestHostile:
    @pytest.fixture(scope="class", autouse=True)
    def traced(self):
        tracemalloc.start()  # slows Python code down: a template gets less done before its deadline
        yield
        tracemalloc.stop()

    @staticmethod
    def _stop(source: str, limit: float) -> tuple[ChatTemplateError, float, int]:
        """The error that stops source within `limit` seconds, the seconds it took, its peak bytes."""
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        start = time.monotonic()
        with pytest.raises(ChatTemplateError) as info:
            ChatTemplate(source, time_limit_s=limit, max_output_bytes=MAX_OUTPUT).render(HELLO)
        return info.value, time.monotonic() - start, tracemalloc.get_traced_memory()[1] - before

    @pytest.mark.parametrize("source, expected", HOSTILE.values(), ids=HOSTILE.keys())
    def test_stops_in_time_and_bounded_memory(self, source, expected):
        limit = TIME_LIMIT
        err, elapsed, peak = self._stop(source, limit)
        if "time limit" in str(err) and not re.search(expected, str(err)):
            # a stall of the machine (a collection under tracemalloc, a busy neighbour) spent the
            # deadline before the template met the limit it should: once more, with room for it
            limit = 10 * TIME_LIMIT
            err, elapsed, peak = self._stop(source, limit)
        assert re.search(expected, str(err)), f"{expected!r} not in {err}"
        assert elapsed < limit + 0.5, f"stopped after {elapsed:.2f} s: {err}"
        assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.1f} MiB: {err}"
        assert isinstance(err, RealmError) and len(str(err)) < 1000
        # the process is still usable: no worker left behind, and templates render
        assert _no_workers_left()
        assert ChatTemplate(NORMAL).render(HELLO) == "<user>Hello</user>"


def test_recursion_stops_at_the_depth_limit():
    """Unbounded recursion is stopped by the nesting limit, well before a generous deadline."""
    with pytest.raises(ChatTemplateError, match="nests too deeply"):
        ChatTemplate(RECURSIVE_MACRO, time_limit_s=30.0).render(HELLO)
    assert _no_workers_left()


def test_time_limit_is_kept_to_within_a_little():
    """Stopped by its own deadline checks, or (no calls in its loop) by the asynchronous exception;
    either takes a few milliseconds past the limit."""
    for source in (NESTED_LOOPS, HOSTILE["loop without calls"][0]):
        start = time.monotonic()
        with pytest.raises(ChatTemplateError, match=r"time limit of 0\.2 s"):
            ChatTemplate(source, time_limit_s=0.2).render([])
        assert 0.2 <= time.monotonic() - start < 0.35


def test_stopping_at_the_moment_it_finishes_is_clean():
    """A render that takes about its time limit either returns its text or raises ChatTemplateError;
    an asynchronous exception sent as it finished must not surface later in this thread."""
    template = ChatTemplate("{% set L = range(3000)|list %}{% for a in range(100) %}{% if -1 in L %}{% endif %}"
                            "{% endfor %}done")
    durations = []
    for _ in range(3):
        start = time.monotonic()
        template.render([])
        durations.append(time.monotonic() - start)
    typical = sorted(durations)[1]
    outcomes = []
    for i in range(40):  # limits from 0.4x to 1.6x the time the render takes
        template.time_limit_s = typical * (0.4 + 0.03 * i)
        try:
            outcomes.append(template.render([]))
        except ChatTemplateError as exc:
            assert "time limit" in str(exc)
            outcomes.append("stopped")
        sum(range(10000))  # a stray asynchronous exception would land here
    assert set(outcomes) <= {"done", "stopped"}
    template.time_limit_s = 5.0
    assert template.render([]) == "done"
    assert _no_workers_left()


def test_output_limit_counts_utf8_bytes():
    limit = 10_000
    loop = "{% for i in range(n) %}{{ messages[0].content }}{% endfor %}"
    accents = [{"role": "user", "content": "é" * 1000}]  # 2,000 bytes
    template = ChatTemplate(loop, max_output_bytes=limit)
    assert template.render(accents, n=5) == "é" * 5000  # exactly the limit
    with pytest.raises(ChatTemplateError, match="output exceeds its size limit of 10,000 bytes"):
        template.render(accents, n=6)
    with pytest.raises(ChatTemplateError, match="size limit"):  # 3,334 characters, 10,002 bytes
        template.render([{"role": "user", "content": "日" * 3334}], n=1)


def test_output_just_under_the_limit_renders():
    template = ChatTemplate('{{ "x" * n }}{{ eos_token }}', eos_token="</s>", max_output_bytes=MAX_OUTPUT)
    assert template.render([], n=MAX_OUTPUT - 4) == "x" * (MAX_OUTPUT - 4) + "</s>"
    with pytest.raises(ChatTemplateError, match="size limit"):
        template.render([], n=MAX_OUTPUT - 3)
    with pytest.raises(ChatTemplateError, match="size limit"):
        template.render([], n=MAX_OUTPUT + 1)


# Constructs real chat templates use, and the ones the limits hook into, rendered as plain jinja2
# renders them.
FEATURES = """{%- macro item(m, sep=': ') -%}{{ m.role ~ sep ~ m.content|trim }}{%- endmacro -%}
{%- set ns = namespace(n=0, seen=[], text='') -%}
{%- for m in messages -%}
{%- set ns.n = ns.n + 1 -%}{%- set ns.seen = ns.seen + [m.role] -%}{%- set ns.text = ns.text ~ m.content[:3] -%}
[{{ loop.index }}/{{ loop.length }}] {{ item(m) }}{{ '|' if not loop.last }}
{%- endfor %}
{{ ns.n }} {{ ns.seen|join(',') }} {{ ns.seen|unique|list }} {{ ns.text|upper|center(20) }}|
{{ messages|map(attribute='role')|select('equalto', 'user')|list|length }} {{ messages|groupby('role')|length }}
{{ tools|tojson }} {{ tools|tojson(indent=2) }} {{ {'b': 1, 'a': [1, 2.5, none, true]}|tojson(sort_keys=true) }}
{{ "%s-%05d-%.2f" % ("a", 42, 3.14159) }} {{ "%-4s|" % "ab" }} {{ "100%%" % () }}
{{ "{:>8}|{:<4}|{!r}|{x}".format("r", "l", "q", x=[1, 2]) }} {{ "%(k)s" % {"k": "v"} }} {{ "%d items"|format(3) }}
{{ "a b  c\\nd".split() }} {{ "a,b,,c".split(",", 2) }} {{ "x\\ny\\r\\nz".splitlines() }} {{ "-".join(["p", "q"]) }}
{{ "  pad "|trim|replace("a", "A") }} {{ "word " * 3 }}{{ [1, 2] * 2 }} {{ (1, 2) + (3,) }} {{ 2 ** 10 }} {{ 7 % 3 }}
{{ "line1\\nline2"|indent(2, first=true) }} {{ "a long line of words to wrap"|wordwrap(10) }}
{{ range(7)|batch(3, 0)|list }} {{ range(7)|slice(3)|list }} {{ [3, 1, 2]|sort }} {{ [1, 2, 3]|sum }}
{{ [[1], [2]]|sum(start=[]) }} {{ {'b': 2, 'a': 1}|dictsort }} {{ "abc"|list }} {{ "tab\\tstop".expandtabs(4) }}
{{ "x".center(5, "*") }} {{ "7".zfill(3) }} {{ "abc".translate({97: "A"}) }} {{ dict(a=1)|items|list }}
{%- for c in "ab" %}{{ c }}{% endfor %}{% for k, v in {'z': 1}.items() %}{{ k }}={{ v }}{% endfor %}
{% set captured %}captured {{ messages|length }}{% endset %}{{ captured }} {% filter upper %}shout{% endfilter %}
{%- for x in [[1, [2]], 3] recursive %}({% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}){% endfor %}
{{ messages[0].content.startswith("Hi") }} {{ "ünï"|length }} {{ [messages[0], messages[0]]|length }}
{{ add_generation_prompt }}{{ bos_token }}{{ eos_token }} {{ raise_exception is defined }} {{ 10 // 3 }} {{ -2 }}
"""


def _reference(source: str, **variables) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda value, **options: json.dumps(value, ensure_ascii=False, **options)
    env.globals["raise_exception"] = lambda message: None
    return env.from_string(source).render(**variables)


def test_small_output_limit_still_reads_the_messages():
    """Values the template builds may be 64 KiB whatever max_output_bytes: a template may look at
    long messages and write little."""
    messages = [{"role": "user", "content": "word " * 2000}] * 3
    template = ChatTemplate("{{ messages|map(attribute='content')|join|wordcount }} {{ messages|list|length }}",
                            max_output_bytes=16)
    assert template.render(messages) == "6000 3"
    with pytest.raises(ChatTemplateError, match="output exceeds its size limit of 16 bytes"):
        ChatTemplate("{{ messages[0].content[:17] }}", max_output_bytes=16).render(messages)


def test_normal_constructs_render_as_jinja2():
    messages = [{"role": "user", "content": "Hi there "}, {"role": "assistant", "content": " ünïcödé"},
                {"role": "user", "content": "More"}]
    tools = [{"name": "f", "parameters": {"b": 1, "a": [1, 2]}}]
    start = time.monotonic()
    ours = ChatTemplate(FEATURES, bos_token="<s>", eos_token="</s>").render(messages, tools=tools)
    assert time.monotonic() - start < 0.5
    assert ours == _reference(FEATURES, messages=messages, tools=tools, bos_token="<s>", eos_token="</s>",
                              add_generation_prompt=True)
    assert "[3/3] user: More" in ours and "((1)((2)))(3)" in ours


def test_normal_render_is_fast():
    template = ChatTemplate(FEATURES)
    messages = [{"role": "user", "content": "Hi"}] * 20
    template.render(messages, tools=[])
    start = time.perf_counter()
    for _ in range(10):
        template.render(messages, tools=[])
    assert (time.perf_counter() - start) / 10 < 0.05


def test_errors_are_chat_template_errors():
    for source in ("{{ 1 / 0 }}", "{{ [] + 1 }}", "{{ range(10**6) }}", "{{ x.y }}", '{% include "other" %}',
                   "{{ ''.__class__.__mro__ }}", "{{ '%d' % 'x' }}", "{{ 'x'.center('y') }}"):
        try:
            ChatTemplate(source).render([])
        except ChatTemplateError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{source!r} raised {type(exc).__name__}, not ChatTemplateError")
    with pytest.raises(ChatTemplateError, match="refused the messages: no"):
        ChatTemplate('{{ raise_exception("no") }}').render([])
    with pytest.raises(ChatTemplateError, match="does not compile"):  # Python's nesting limit
        ChatTemplate("{% for a in b %}" * 25 + "{% endfor %}" * 25)


def test_concurrent_renders_keep_their_own_limits():
    fast, slow = ChatTemplate(NORMAL), ChatTemplate(NESTED_LOOPS, time_limit_s=0.3)
    results = []

    def run(template):
        try:
            results.append(template.render(HELLO))
        except ChatTemplateError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=run, args=(t,)) for t in (slow, fast, slow, fast)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["<user>Hello</user>"] * 2 + ["the chat template ran past its time limit of 0.3 s "
                                                            "(time_limit_s)"] * 2


def test_arguments_are_checked():
    for value in ("1", None, True, [1]):
        with pytest.raises(ArgumentTypeError):
            ChatTemplate(NORMAL, time_limit_s=value)
    for value in (0, -1, float("nan"), float("inf"), 10_000):
        with pytest.raises(InvalidArgumentError):
            ChatTemplate(NORMAL, time_limit_s=value)
    for value in (1.0, "1", None, True):
        with pytest.raises(ArgumentTypeError):
            ChatTemplate(NORMAL, max_output_bytes=value)
    for value in (0, -5, 1 << 31):
        with pytest.raises(InvalidArgumentError):
            ChatTemplate(NORMAL, max_output_bytes=value)
    with pytest.raises(ChatTemplateError, match="over the limit"):
        ChatTemplate("x" * (MAX_TEMPLATE_CHARS + 1))
    ChatTemplate("x" * MAX_TEMPLATE_CHARS)
    with pytest.raises(ArgumentTypeError, match="bos_token"):
        ChatTemplate(NORMAL).render(HELLO, bos_token="<s>")
    template = ChatTemplate(NORMAL, time_limit_s=2, max_output_bytes=100)
    assert (template.time_limit_s, template.max_output_bytes) == (2.0, 100)


def test_from_metadata_passes_the_limits():
    metadata = {"tokenizer.chat_template": '{{ bos_token }}{{ "x" * 200 }}', "tokenizer.ggml.tokens": ["<s>", "</s>"],
                "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}
    template = ChatTemplate.from_metadata(metadata, time_limit_s=0.5, max_output_bytes=100)
    assert (template.time_limit_s, template.max_output_bytes, template.bos_token) == (0.5, 100, "<s>")
    with pytest.raises(ChatTemplateError, match="size limit"):
        template.render(HELLO)
    assert ChatTemplate.from_metadata(metadata).render(HELLO) == "<s>" + "x" * 200
