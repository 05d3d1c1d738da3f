"""The jinja2 sandbox chat templates render in, with limits that hold whatever a template does.

A chat template comes from a GGUF file, so it is untrusted.  It runs in
jinja2's immutable sandbox (no attribute access to Python internals, no
mutation of the messages), and within limits:

- Time: compiling it, and each rendering, get `time_limit_s` (default 1 s).
  The work runs on a worker thread; code that checks the deadline (every
  operator, call, filter and piece of output) stops itself, and a loop that
  checks nothing is stopped by an asynchronous exception.
- Size: the rendered text may not exceed `max_output_bytes` (UTF-8, default
  1 MiB).  No single value the template builds may be longer than that (in
  characters, or for a list or dict, in the characters its text would have;
  at least 64 KiB), and every amplifying operation (`*`, `**`, `+`, `%`, `~`,
  `str.format`, padding, `replace`, `join`, `indent`, `tojson`...) is checked
  *before* it builds its result.  All the text and lists it builds together
  (output included) may not exceed `WORK_FACTOR` times that, which bounds its
  memory; integers are limited to `MAX_INT_BITS`.
- Source: at most `MAX_TEMPLATE_CHARS` characters; a template nested too
  deeply for the parser is refused.  `lipsum` is not available.
Past a limit `ChatTemplateError` says which; every other error the template
causes (RecursionError and MemoryError included) is a `ChatTemplateError` too.
Size estimates are conservative: a value refused as too big is within a small
factor of the limit.

realm/chat.py uses it through `SandboxEnvironment`, `Budget`, `limited`,
`render_text` and `check_limits`.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import math
import re
import threading
import time
import types
from collections import abc
from datetime import datetime
from typing import Any, Callable, TypeVar

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter, SecurityError
from jinja2.utils import Namespace, _PassArg, pass_environment
from markupsafe import Markup

from .errors import ArgumentTypeError, ChatTemplateError, InvalidArgumentError

#: Seconds that compiling a template, and each rendering, may take by default.
DEFAULT_TIME_LIMIT_S = 1.0
#: Largest rendered text by default, in UTF-8 bytes (the guest's tokenizer takes at most 256 KiB).
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
#: Largest template source, in characters (real chat templates are a few KiB, the largest ~20 KiB).
MAX_TEMPLATE_CHARS = 64 * 1024
#: Text and lists one rendering may build in all, as a multiple of max_output_bytes.
WORK_FACTOR = 16
#: Largest integer a template may compute, in bits (about 4,900 decimal digits).
MAX_INT_BITS = 1 << 14
#: Bounds of the arguments (beyond them, limits stop meaning anything).
MAX_TIME_LIMIT_S = 3600.0
MAX_OUTPUT_BYTES_LIMIT = 1 << 30

# Python's compile() of the module jinja2 generates cannot be interrupted: it starts only if this
# many times the time jinja2 took to parse and generate it is left (it has taken at most ~2x).
_COMPILE_FACTOR = 3
# A rendering that keeps the GIL this long sleeps _YIELD_S, so that other threads' calls (a tenant's
# imports, each needing the GIL) get through: its cost is small, a busy template's never-ending claim.
_YIELD_EVERY_S = 0.001
_YIELD_S = 0.0001
# A worker stopped at its deadline has this long to unwind before the caller gets the error anyway.
_STOP_GRACE_S = 0.25
_STOP_RESEND_S = 0.02
# Characters a list item costs at least in the budget (its pointer; "x, " in its text).
_ITEM_CHARS = 8
# The size limit of the values a template builds (and so of its work) is never below this, so
# that a small max_output_bytes still lets it read the messages.
_MIN_VALUE_CHARS = 64 * 1024
# What a piece of output costs beyond its text (a str object and a buffer slot).
_PIECE_CHARS = 48
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits at
_CONTEXT_KWARGS = ("_loop_vars", "_block_vars")  # jinja's own keywords on calls made in loops and blocks

T = TypeVar("T")


class _Abort(BaseException):
    """A limit was hit inside the worker.  A BaseException, so that jinja2's and the template's
    `except Exception` handlers do not swallow it."""


class _TimeUp(_Abort):
    """Raised in the worker at its deadline, by itself or by the caller's asynchronous exception."""


# -- budgets --------------------------------------------------------------------------------------

class Budget:
    """What one compilation or rendering may still use.  The worker thread keeps it in `_local`,
    where the sandbox's hooks find it."""

    __slots__ = ("time_limit_s", "deadline", "max_output_bytes", "max_chars", "max_items", "max_work", "work",
                 "next_yield")

    def __init__(self, time_limit_s: float, max_output_bytes: int):
        self.time_limit_s = time_limit_s
        self.deadline = time.monotonic() + time_limit_s
        self.max_output_bytes = max_output_bytes
        self.max_chars = max(max_output_bytes, _MIN_VALUE_CHARS)  # a character is at least one UTF-8 byte
        self.max_items = self.max_chars // _ITEM_CHARS
        self.max_work = WORK_FACTOR * self.max_chars
        self.work = 0
        self.next_yield = time.monotonic() + _YIELD_EVERY_S

    def tick(self) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise _TimeUp()
        if now > self.next_yield:
            time.sleep(_YIELD_S)
            self.next_yield = time.monotonic() + _YIELD_EVERY_S

    def check(self, size: int, what: str) -> None:
        """Refuse to build `what` of about `size` characters if that is over the size limit."""
        if size > self.max_chars:
            raise _Abort(f"the chat template would build {what} of about {size:,} characters, over its size "
                         f"limit of {self.max_chars:,} characters (max_output_bytes)")

    def check_items(self, count: int, what: str) -> None:
        if count > self.max_items:
            raise _Abort(f"the chat template would build {what} of {count:,} items, over its size limit of "
                         f"{self.max_items:,} items (max_output_bytes / {_ITEM_CHARS})")

    def check_bits(self, bits: int) -> None:
        if bits > MAX_INT_BITS:  # str() of a huge int takes quadratic time in one C call
            raise _Abort(f"the chat template would compute an integer of about {bits:,} bits, over its limit of "
                         f"{MAX_INT_BITS:,} bits")

    def charge(self, size: int) -> None:
        """Count `size` characters built towards the total this rendering may build."""
        self.work += size
        if self.work > self.max_work:
            raise _Abort(f"the chat template built more than {self.max_work:,} characters of text and lists in "
                         f"all, over its size limit ({WORK_FACTOR} x max_output_bytes)")

    def size(self, value: Any, per_node: int = 0, per_level: int = 0) -> int:
        return _text_size(value, self.max_chars, per_node, per_level)

    def produced(self, value: T) -> T:
        """Check and count a value the template built (or was handed by a call or filter)."""
        if isinstance(value, (str, bytes)):
            self.check(len(value), "a text")
            self.charge(len(value))
        elif isinstance(value, int):
            self.check_bits(value.bit_length())
        elif isinstance(value, _CONTAINERS):
            # Shared references make a small list print huge (and compare or hash in exponential
            # time): bound what it would print, and count what it holds.
            self.check(self.size(value), "a list or dict")
            self.charge(_ITEM_CHARS * len(value) if hasattr(value, "__len__") else _ITEM_CHARS)
        return value


_local = threading.local()


def _budget() -> Budget:
    return _local.budget  # set by _run_limited on the worker thread


_CONTAINERS = (list, tuple, set, frozenset, dict, abc.KeysView, abc.ValuesView, abc.ItemsView, Namespace)


def _text_size(value: Any, limit: int, per_node: int = 0, per_level: int = 0) -> int:
    """About len(str(value)) (a little more, so that every node counts), found by walking the
    value; it stops once past `limit`, so shared and cyclic structures cost at most that.
    `per_node` and `per_level` add what each node, and each level of nesting, adds to a layout
    (json's indent, pprint's)."""
    if isinstance(value, (str, bytes)) and not per_node:
        return len(value)
    total = 0
    stack: list[abc.Iterator[Any]] = [iter((value,))]
    while stack:
        height = len(stack)
        for item in stack[-1]:  # after a descent, this resumes where it left off
            total += per_node + per_level * (height - 1)
            kind = type(item)
            if kind is str:
                total += len(item) + 4  # quotes, ", "
            elif kind is int:
                total += item.bit_length() // 3 + 3
            elif kind is list or kind is tuple:
                total += 2
                stack.append(iter(item))
            elif kind is dict:
                total += 2 + 4 * len(item)
                stack.append(itertools.chain.from_iterable(item.items()))
            else:
                total += _other_size(item, stack)
            if total > limit:
                return total
            if len(stack) > height:
                break  # descend into what was pushed
        else:
            stack.pop()
    return total


def _other_size(item: Any, stack: list[abc.Iterator[Any]]) -> int:
    """_text_size for the less common types (and subclasses); pushes what it has to walk."""
    if type(item) is Namespace:
        stack.append(iter((object.__getattribute__(item, "_Namespace__attrs"),)))
        return 14
    if isinstance(item, (str, bytes)):
        return len(item) + 4
    if isinstance(item, int):
        return item.bit_length() // 3 + 3
    if isinstance(item, float) or item is None:
        return 26
    if isinstance(item, (dict, abc.ItemsView)):
        stack.append(itertools.chain.from_iterable(item.items() if isinstance(item, dict) else item))
        return 2 + 4 * len(item)
    if isinstance(item, _CONTAINERS):
        stack.append(iter(item))
        return 2
    return 48  # a macro, a loop, undefined...: a short repr


def _int(value: Any) -> int:
    """An integer argument, or 0 when it is not one (the operation then raises TypeError itself)."""
    return value if isinstance(value, int) else 0


def _digits(text: str, budget: Budget, what: str) -> int:
    """A width or precision written in a format: refused, without converting it, when too long."""
    if len(text) > 9:
        budget.check(10 ** 9, what)
    return int(text)


# -- sizes of what amplifying operations build ----------------------------------------------------

def _printf_size(budget: Budget, fmt: str | bytes, args: Any) -> int:
    """An upper bound on len(fmt % args), parsing fmt as CPython does (keys may nest parentheses;
    `*` takes a width or precision from the arguments)."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else str(fmt)
    positional = iter(args if isinstance(args, tuple) else (args,))
    mapping = args if isinstance(args, abc.Mapping) else None
    size, i, n = len(text), 0, len(text)

    def next_arg() -> Any:
        return next(positional, None)

    while (i := text.find("%", i) + 1) > 0:
        value, keyed = None, False
        if i < n and text[i] == "(":  # %(key)s
            depth, j = 1, i + 1
            while j < n and depth:
                depth += (text[j] == "(") - (text[j] == ")")
                j += 1
            if mapping is not None:
                try:
                    value = mapping[text[i + 1:j - 1]]
                except Exception:  # the format itself will raise
                    value = None
            i, keyed = j, True
        while i < n and text[i] in "-+ #0":
            i += 1
        spans = []
        for prefix in ("", "."):
            if prefix and not text.startswith(".", i):
                continue
            i += len(prefix)
            if text.startswith("*", i):
                spans.append(abs(_int(next_arg())))
                i += 1
            else:
                j = i
                while j < n and text[j].isdigit():
                    j += 1
                spans.append(_digits(text[i:j], budget, "a %-format width") if j > i else 0)
                i = j
        while i < n and text[i] in "hlL":
            i += 1
        conversion = text[i] if i < n else ""
        i += 1
        if conversion == "%":
            continue
        if not keyed:
            value = next_arg()
        size += sum(spans) + 24 + budget.size(value)
        if size > budget.max_chars:
            break
    return size


_SPEC_NUMBER = re.compile(r"\d+")


def _format_field_size(budget: Budget, value: Any, spec: str) -> int:
    """An upper bound on len(format(value, spec)): its text plus every number in the spec (the
    width and precision; a digit used as the fill character only adds to the bound)."""
    numbers = sum(_digits(m.group(), budget, "a format width") for m in _SPEC_NUMBER.finditer(spec))
    return budget.size(value) + numbers + 24


def _replace_size(s: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    kind = str if isinstance(s, str) else bytes
    if not isinstance(old, kind) or not isinstance(new, kind):
        return len(s)  # replace raises TypeError
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(len(new) - len(old), 0)


def _line_count(s: str | bytes) -> int:
    """An upper bound on len(s.splitlines()), counting without splitting."""
    breaks = _LINE_BREAKS if isinstance(s, str) else (b"\n", b"\r")
    return sum(s.count(c) for c in breaks) + 1


def _bounded_items(budget: Budget, value: Any, what: str) -> Any:
    """`value`, if it is a collection of acceptable length; an iterator is read into a list, at
    most max_items long."""
    if isinstance(value, abc.Sized):
        budget.check_items(len(value), what)
        return value
    if not isinstance(value, abc.Iterable):
        return value  # the caller raises TypeError
    items: list[Any] = []
    for item in value:
        items.append(item)
        if len(items) > budget.max_items:
            budget.check_items(len(items), what)
    return items


# Methods of str and bytes (and int.to_bytes) that build more than they are given.  Each takes
# the budget, the object and the method's arguments, checks what the method would build, and
# returns the arguments to call it with (join reads an iterator into a list first).

def _padded(budget: Budget, s: Any, width: Any = 0, *rest: Any) -> None:
    budget.check(max(len(s), _int(width)), "a padded text")


def _expanded(budget: Budget, s: Any, tabsize: Any = 8) -> None:
    budget.check(len(s) + s.count("\t" if isinstance(s, str) else b"\t") * max(_int(tabsize), 0),
                 "a text with tabs expanded")


def _replaced(budget: Budget, s: Any, old: Any = "", new: Any = "", count: Any = -1) -> None:
    budget.check(_replace_size(s, old, new, count), "a text with replacements")


def _translated(budget: Budget, s: Any, table: Any = None) -> None:
    values = table.values() if isinstance(table, abc.Mapping) else table
    if isinstance(s, str) and isinstance(values, abc.Iterable):
        longest = 1
        for value in _bounded_items(budget, values, "a translation table"):
            if isinstance(value, str):
                longest = max(longest, len(value))
        budget.check(len(s) * longest, "a translated text")


def _split(budget: Budget, s: Any, sep: Any = None, maxsplit: Any = -1) -> None:
    if 0 <= _int(maxsplit) < budget.max_items or len(s) + 1 <= budget.max_items:
        return
    if sep is None:  # the words, split no further than the limit
        pieces = len(s.split(None, budget.max_items))
    else:
        pieces = s.count(sep) + 1
    budget.check_items(pieces, "a list of pieces")


def _splitlines(budget: Budget, s: Any, keepends: Any = False) -> None:
    if len(s) + 1 > budget.max_items:
        budget.check_items(_line_count(s), "a list of lines")


def _joined(budget: Budget, sep: Any, iterable: Any = ()) -> tuple[tuple[Any, ...], dict[str, Any]]:
    items = _bounded_items(budget, iterable, "a list to join")
    size = max(len(items) - 1, 0) * len(sep) if isinstance(items, abc.Sized) else 0
    for item in items:
        size += len(item) if isinstance(item, (str, bytes)) else 0
        if size > budget.max_chars:
            break
    budget.check(size, "a joined text")
    return (items,), {}


def _to_bytes(budget: Budget, number: Any, length: Any = 1, *rest: Any, **options: Any) -> None:
    budget.check(_int(length), "a byte string")


def _fromkeys(budget: Budget, cls: Any, iterable: Any = (), *rest: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (_bounded_items(budget, iterable, "a dict"), *rest), {}


_METHOD_CHECKS: dict[str, Callable[..., Any]] = {
    "center": _padded, "ljust": _padded, "rjust": _padded, "zfill": _padded,
    "expandtabs": _expanded, "replace": _replaced, "translate": _translated,
    "split": _split, "rsplit": _split, "splitlines": _splitlines, "join": _joined,
}


def _method_check(obj: Any) -> Callable[..., Any] | None:
    """The check for calling `obj`, when it is an amplifying method of a str, bytes or int."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", None)
    if isinstance(owner, (str, bytes)):
        return _METHOD_CHECKS.get(name)  # type: ignore[arg-type]
    if isinstance(owner, int) and name == "to_bytes":
        return _to_bytes
    if isinstance(owner, type) and issubclass(owner, dict) and name == "fromkeys":
        return _fromkeys
    return None


def _check_binop(budget: Budget, op: str, left: Any, right: Any) -> None:
    """Refuse `left op right` when it would build a text, list or integer over the limits."""
    if op == "%":
        if isinstance(left, (str, bytes)):
            budget.check(_printf_size(budget, left, right), "a %-formatted text")
        return
    if isinstance(left, int) and isinstance(right, int):  # bool too
        if op == "*":
            bits = left.bit_length() + right.bit_length()
        elif op == "**":
            bits = 0 if abs(left) <= 1 or right <= 0 else min(right, MAX_INT_BITS + 1) * left.bit_length()
        else:
            return
        budget.check_bits(bits)
        return
    if op == "*":
        count, seq = (right, left) if isinstance(right, int) else (left, right)
        if isinstance(count, int) and isinstance(seq, (str, bytes, list, tuple)):
            _check_length(budget, seq, len(seq) * max(count, 0))
    elif op == "+" and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
        _check_length(budget, left, len(left) + len(right))


def _check_length(budget: Budget, like: Any, length: int) -> None:
    if isinstance(like, (str, bytes)):
        budget.check(length, "a text")
    else:
        budget.check_items(length, "a list")


# -- filters ----------------------------------------------------------------------------------------
# Every filter checks the deadline and the size of what it returns.  Those that turn their
# arguments into text first check how long that text is; those that read an iterable whole read
# at most max_items of it; those that amplify check their result's size before building it.

_STRINGIFYING = {"capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower", "replace",
                 "safe", "string", "striptags", "title", "trim", "truncate", "upper", "urlencode", "urlize",
                 "wordcount", "wordwrap", "xmlattr"}
_MATERIALIZING = {"groupby", "join", "list", "reverse", "slice", "sort", "sum"}
# Filters that iterate their input: a text becomes as many 1-character strings (~50-80 bytes each).
_ITERATING = _MATERIALIZING - {"reverse"} | {"batch", "map", "reject", "rejectattr", "select", "selectattr",
                                            "unique"}


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)  # bounded: the input was checked


def _center_size(b: Budget, value: Any, width: Any = 80) -> int:
    return max(b.size(value), _int(width))


def _indent_size(b: Budget, s: Any, width: Any = 4, first: Any = False, blank: Any = False) -> int:
    pad = len(width) if isinstance(width, str) else max(_int(width), 0)
    text = _as_text(s)
    return len(text) + (_line_count(text) + 1) * pad


def _replace_filter_size(b: Budget, s: Any, old: Any, new: Any, count: Any = None) -> int:
    return _replace_size(_as_text(s), _as_text(old), _as_text(new), -1 if count is None else count)


def _format_filter_size(b: Budget, value: Any, *args: Any, **kwargs: Any) -> int:
    return _printf_size(b, _as_text(value), kwargs or args)


def _wordwrap_size(b: Budget, s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                   break_on_hyphens: Any = True) -> int:
    # at most one line per character, each followed by wrapstring
    return b.size(s) * (1 + (b.size(wrapstring) if wrapstring is not None else 1))


def _urlize_size(b: Budget, value: Any, trim_url_limit: Any = None, nofollow: Any = False, target: Any = None,
                 rel: Any = None, extra_schemes: Any = None) -> int:
    # every word may become a link, written twice and escaped, with its attributes
    return b.size(value) * (16 + b.size(target or "") + b.size(rel or ""))


def _batch_size(b: Budget, value: Any, linecount: Any, fill_with: Any = None) -> int:
    return max(_int(linecount), 0) * (_ITEM_CHARS + (b.size(fill_with) if fill_with is not None else 0))


def _slice_size(b: Budget, value: Any, slices: Any, fill_with: Any = None) -> int:
    return _batch_size(b, value, slices, fill_with)


def _join_size(b: Budget, value: Any, d: Any = "", attribute: Any = None) -> int:
    size = max(len(value) - 1, 0) * b.size(d) if isinstance(value, abc.Sized) else 0
    for item in value if isinstance(value, abc.Iterable) else ():
        size += b.size(item)
        if size > b.max_chars:
            break
    return size


def _tojson_size(b: Budget, value: Any, ensure_ascii: Any = False, indent: Any = None, separators: Any = None,
                 sort_keys: Any = False) -> int:
    per_level = len(indent) if isinstance(indent, str) else max(_int(indent), 0)
    seps = separators if isinstance(separators, (tuple, list)) and len(separators) == 2 else (", ", ": ")
    return b.size(value, per_node=1 + b.size(seps[0]) + b.size(seps[1]), per_level=per_level)


def _pprint_size(b: Budget, value: Any) -> int:
    return b.size(value, per_node=2, per_level=1)


_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": _center_size, "indent": _indent_size, "replace": _replace_filter_size, "format": _format_filter_size,
    "wordwrap": _wordwrap_size, "urlize": _urlize_size, "batch": _batch_size, "slice": _slice_size,
    "join": _join_size, "tojson": _tojson_size, "pprint": _pprint_size,
}


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@pass_environment
def _sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """jinja2's sum, adding anything but numbers through the checked `+` (the builtin sum of
    lists copies in quadratic time, in one C call that cannot be stopped)."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = list(iterable)
    if all(isinstance(x, (int, float)) for x in itertools.chain(items, (start,))):
        return sum(items, start)
    total = start
    for item in items:
        total = environment.call_binop(None, "+", total, item)
    return total


def _limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passed = 1 if _PassArg.from_obj(func) is not None else 0  # jinja's context/environment argument
    stringifies, size_of = name in _STRINGIFYING, _FILTER_SIZES.get(name)
    materializes, iterates = name in _MATERIALIZING, name in _ITERATING

    @functools.wraps(func)  # keeps jinja_pass_arg
    def limited(*args: Any, **kwargs: Any) -> Any:
        b = _budget()
        b.tick()
        if len(args) > passed:
            value = args[passed]
            if iterates and isinstance(value, (str, bytes)):
                b.check_items(len(value), f"the characters of the {name} filter's input")
            elif materializes and not isinstance(value, (str, bytes)):
                args = (*args[:passed], _bounded_items(b, value, f"the input of the {name} filter"), *args[passed + 1:])
        if stringifies:
            size = 0
            for arg in itertools.chain(args[passed:], kwargs.values()):
                size += b.size(arg)
            b.check(size, f"the text of the {name} filter's arguments")
        if size_of is not None:
            b.check(size_of(b, *args[passed:], **kwargs), f"the result of the {name} filter")
        return b.produced(func(*args, **kwargs))

    return limited


_LIMITED_FILTERS = {name: _limited_filter(name, func)
                    for name, func in {**FILTERS, "tojson": _tojson, "sum": _sum}.items()}


# -- globals ---------------------------------------------------------------------------------------

class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (Hugging Face's marker for assistant text):
    renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _shorten(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the messages: {_shorten(str(message))}")


def _dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    """The `dict` global, reading at most max_items pairs from an iterator before building."""
    if args:
        args = (_bounded_items(_budget(), args[0], "a dict"), *args[1:])
    return dict(*args, **kwargs)


def _strftime_now(fmt: str) -> str:
    if isinstance(fmt, str):  # a conversion writes at most a few dozen characters
        _budget().check(32 * len(fmt), "a date")
    return datetime.now().strftime(fmt)


# -- the sandbox ------------------------------------------------------------------------------------

class _FormatterLimits:
    """str.format's fields, checked before they are converted and formatted."""

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        b = _budget()  # !r and !s make text of the value before format_field sees it
        b.check(b.size(value), "a formatted field")
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        b = _budget()
        b.tick()
        size = _format_field_size(b, value, format_spec)
        b.check(size, "a formatted field")
        b.charge(size)
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _Formatter(_FormatterLimits, SandboxedFormatter):
    pass


class _EscapeFormatter(_FormatterLimits, SandboxedEscapeFormatter):
    pass


class _CodeGenerator(CodeGenerator):
    """jinja2's code generator, with every piece of output, `~` concatenation and list, tuple or
    dict display routed through the environment's checks."""

    def _output_child_pre(self, node: nodes.Expr, frame: Any, finalize: Any) -> None:
        self.write("environment.realm_out(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Any, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def _output_const_repr(self, group: Any) -> str:
        return f"environment.realm_out({super()._output_const_repr(group)})"

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        # as jinja2's, with the join function and the parts handed to realm_concat
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.realm_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _checked_display(self, visit: Callable[[Any, Any], None], node: Any, frame: Any, parts: list[Any]) -> None:
        if all(isinstance(part, nodes.Const) for part in parts):  # its size is the source's
            visit(node, frame)
            return
        self.write("environment.realm_value(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Any) -> None:
        self._checked_display(super().visit_List, node, frame, node.items)

    def visit_Tuple(self, node: nodes.Tuple, frame: Any) -> None:
        if node.ctx != "load":  # an assignment target
            super().visit_Tuple(node, frame)
            return
        self._checked_display(super().visit_Tuple, node, frame, node.items)

    def visit_Dict(self, node: nodes.Dict, frame: Any) -> None:
        parts = [part for pair in node.items for part in (pair.key, pair.value)]
        self._checked_display(super().visit_Dict, node, frame, parts)


_LOOP_FILTER = "realm loop"


def _loop_iterable(iterable: T) -> T:
    """What a `{% for %}` goes over: a text becomes one string per character (`loop.length`
    keeps them all)."""
    b = _budget()
    b.tick()
    if isinstance(iterable, (str, bytes)):
        b.check_items(len(iterable), "the characters a loop goes over")
    return iterable


def _finalize(value: Any) -> Any:
    """Every expression the template outputs: bound the text it will turn into."""
    if type(value) is not str:
        b = _budget()
        b.check(b.size(value), "an output value")
    return value


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with the time and size limits of the running `Budget`."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, finalize=_finalize,
                         extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        self.filters.update(_LIMITED_FILTERS)
        self.filters[_LOOP_FILTER] = _loop_iterable
        del self.globals["lipsum"]  # builds any amount of text from one call
        self.globals.update(dict=_dict, raise_exception=_raise_exception, strftime_now=_strftime_now)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):  # through a filter that templates cannot name
            loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno)
        return tree

    def _compile(self, source: str, filename: str) -> Any:
        b = _budget()
        now = time.monotonic()
        if now + _COMPILE_FACTOR * (now - (b.deadline - b.time_limit_s)) > b.deadline:  # refuse now, not late
            raise _Abort(f"the chat template is too big to compile within its time limit of {b.time_limit_s:g} s "
                         "(time_limit_s)")
        return super()._compile(source, filename)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = _budget()
        b.tick()
        _check_binop(b, operator, left, right)
        return b.produced(self.binop_table[operator](left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja2's names)
        b = _budget()
        b.tick()
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        _check_repeated_arguments(b, args, kwargs)
        if isinstance(__obj, LoopContext) and args:  # loop(...) in a recursive loop
            args = (_loop_iterable(args[0]), *args[1:])
        check = _method_check(__obj)
        if check is not None:
            plain = {k: v for k, v in kwargs.items() if k not in _CONTEXT_KWARGS}
            replaced = check(b, __obj.__self__, *args, **plain)
            if replaced is not None:
                args, kwargs = replaced[0], {**replaced[1], **{k: kwargs[k] for k in _CONTEXT_KWARGS if k in kwargs}}
        return b.produced(__context.call(__obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # jinja2's, with formatters that check each field
        if (not isinstance(value, (types.MethodType, types.BuiltinMethodType))
                or value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str)):
            return None
        f_self: str = value.__self__
        str_type = type(f_self)
        is_format_map = value.__name__ == "format_map"
        if isinstance(f_self, Markup):
            formatter: SandboxedFormatter = _EscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _Formatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return str_type(formatter.vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    # -- called by the code _CodeGenerator writes ---------------------------------------------------
    def realm_out(self, text: str) -> str:
        """A piece of output, streamed or buffered (by a macro, a block or `{% set %}`)."""
        b = _budget()
        b.tick()
        b.charge(len(text) + _PIECE_CHARS)
        return text

    def realm_concat(self, join: Callable[[Any], str], parts: tuple[Any, ...]) -> str:
        b = _budget()
        b.tick()
        size = 0
        for part in parts:
            size += b.size(part)
            b.check(size, "a concatenated text")
        return b.produced(join(parts))

    def realm_value(self, value: T) -> T:
        b = _budget()
        b.tick()
        return b.produced(value)


def _check_repeated_arguments(b: Budget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A macro collects its arguments into `varargs` and `kwargs` unchecked: passing it one list
    twice would double its size, call after call.  Such a call must fit the size limit."""
    seen: set[int] = set()
    passed = [*args, *(v for k, v in kwargs.items() if k not in _CONTEXT_KWARGS)]
    for arg in passed:
        if isinstance(arg, _CONTAINERS):
            if id(arg) in seen:
                b.check(b.size(passed), "the arguments of a call")
                return
            seen.add(id(arg))


# -- running under the limits ---------------------------------------------------------------------

def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in the thread at its next bytecode (None: withdraw one not yet raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


def _run_limited(work: Callable[[], T], budget: Budget) -> T:
    """work() on a worker thread with `budget` as its limits; the caller waits until the deadline,
    then stops the worker with _TimeUp.  Returns what work returns, or raises what it raised."""
    lock = threading.Lock()
    state: dict[str, Any] = {"started": False, "done": False, "stopping": False, "outcome": None}

    def worker() -> None:
        outcome: tuple[bool, Any] | None = None
        while True:  # a _TimeUp arriving late lands in one of the handlers, and the loop goes on
            try:
                if outcome is None:
                    try:
                        state["started"] = True  # from here on, a _TimeUp lands in these handlers
                        _local.budget = budget
                        budget.tick()  # it may have started late
                        outcome = (True, work())
                    except BaseException as exc:
                        outcome = (False, exc)
                with lock:
                    state["outcome"], state["done"] = outcome, True
                    if state["stopping"]:  # sent as work finished: withdraw it if still pending
                        _async_raise(threading.get_ident(), None)
                break
            except _TimeUp as exc:
                if outcome is None:
                    outcome = (False, exc)
        _local.budget = None

    def stop(thread: threading.Thread) -> None:
        with lock:
            if state["started"] and not state["done"]:
                state["stopping"] = True
                _async_raise(thread.ident, _TimeUp)  # type: ignore[arg-type]

    thread = threading.Thread(target=worker, name="realm-chat-template", daemon=True)
    thread.start()
    try:
        thread.join(max(budget.deadline - time.monotonic(), 0.0))
        give_up = time.monotonic() + _STOP_GRACE_S
        while thread.is_alive() and not state["done"] and time.monotonic() < give_up:
            stop(thread)  # again, if it landed where Python ignores it (a __del__)
            thread.join(_STOP_RESEND_S)
    finally:
        stop(thread)  # the caller was interrupted (KeyboardInterrupt), or the worker is stuck
    outcome = state["outcome"]
    if outcome is None:  # stuck in one long C call: it stops at its next bytecode
        raise ChatTemplateError(_time_message(budget))
    ok, value = outcome
    if ok:
        return value
    raise value


def _time_message(budget: Budget) -> str:
    return f"the chat template ran past its time limit of {budget.time_limit_s:g} s (time_limit_s)"


def _template_error(exc: BaseException, budget: Budget, doing: str) -> BaseException:
    """What `exc`, raised while compiling or rendering, becomes for the caller."""
    if isinstance(exc, _TimeUp):
        return ChatTemplateError(_time_message(budget))
    if isinstance(exc, _Abort):
        return ChatTemplateError(str(exc))
    if isinstance(exc, ChatTemplateError):  # raise_exception
        return exc
    if isinstance(exc, jinja2.TemplateSyntaxError) and doing == "compile":
        return ChatTemplateError(f"the chat template does not parse: {_shorten(str(exc))} (line {exc.lineno})")
    if isinstance(exc, SyntaxError) and doing == "compile":  # Python's limits on the module jinja2 wrote
        return ChatTemplateError(f"the chat template does not compile: {_shorten(str(exc))}")
    if isinstance(exc, RecursionError):
        return ChatTemplateError(f"the chat template nests too deeply to {doing} (RecursionError)")
    if isinstance(exc, MemoryError):
        return ChatTemplateError(f"the chat template ran out of memory while trying to {doing}")
    if isinstance(exc, jinja2.TemplateError):  # sandbox refusals, undefined calls, template bugs
        return ChatTemplateError(f"the chat template failed: {_shorten(str(exc))}")
    if isinstance(exc, Exception):  # TypeError, ZeroDivisionError...: a bug in the template
        return ChatTemplateError(f"the chat template failed: {type(exc).__name__}: {_shorten(str(exc))}")
    return exc  # KeyboardInterrupt, SystemExit


def limited(work: Callable[[], T], budget: Budget, doing: str) -> T:
    try:
        return _run_limited(work, budget)
    except BaseException as exc:
        error = _template_error(exc, budget, doing)
        if error is exc:
            raise
        raise error from (exc if not isinstance(exc, _Abort) else None)


def render_text(template: jinja2.Template, variables: dict[str, Any], budget: Budget) -> str:
    """The rendering, streamed so that its size is known as it grows."""
    parts: list[str] = []
    chunks: list[str] = []  # joined every so often: a small str costs ~50 bytes more than its text
    size = 0
    for chunk in template.generate(variables):
        size += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
        if size > budget.max_output_bytes:
            raise _Abort(f"the chat template's output exceeds its size limit of {budget.max_output_bytes:,} bytes "
                         "(max_output_bytes)")
        chunks.append(chunk)
        if len(chunks) == 256:
            parts.append("".join(chunks))
            chunks.clear()
    return "".join(parts) + "".join(chunks)


def check_limits(time_limit_s: Any, max_output_bytes: Any) -> tuple[float, int]:
    if isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float)):
        raise ArgumentTypeError(f"time_limit_s must be a number of seconds, not {type(time_limit_s).__name__}")
    if not (math.isfinite(time_limit_s) and 0 < time_limit_s <= MAX_TIME_LIMIT_S):
        raise InvalidArgumentError(f"time_limit_s must be above 0 and at most {MAX_TIME_LIMIT_S:g}, "
                                   f"not {time_limit_s!r}")
    if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int):
        raise ArgumentTypeError(f"max_output_bytes must be an int, not {type(max_output_bytes).__name__}")
    if not 1 <= max_output_bytes <= MAX_OUTPUT_BYTES_LIMIT:
        raise InvalidArgumentError(f"max_output_bytes must be between 1 and {MAX_OUTPUT_BYTES_LIMIT:,}, "
                                   f"not {max_output_bytes:,}")
    return float(time_limit_s), max_output_bytes
