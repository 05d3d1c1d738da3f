"""Chat templates: a model's `tokenizer.chat_template` rendered with jinja2.

    template = ChatTemplate.from_metadata(store.get(model_id).metadata)
    prompt = template.render([{"role": "user", "content": "Hi!"}])

The template comes from the GGUF file, so it is untrusted: it runs in jinja2's
immutable sandbox (no attribute access to Python internals, no mutation of the
messages).  The environment is the one Hugging Face's `apply_chat_template`
and llama-cpp-python's `Jinja2ChatFormatter` give templates: `trim_blocks`
and `lstrip_blocks`, the `loopcontrols` extension, a pass-through
`{% generation %}` tag, a `tojson` filter that keeps non-ASCII text, and the
globals `raise_exception(message)` and `strftime_now(format)`; the variables
are `messages`, `bos_token`, `eos_token`, `add_generation_prompt` and any
extra keyword (e.g. `tools`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ArgumentTypeError, RealmError
from .reader import StringArray

__all__ = ["ChatTemplate", "ChatTemplateError"]

TEMPLATE_KEY = "tokenizer.chat_template"


class ChatTemplateError(RealmError, ValueError):
    """A model has no chat template, a template does not parse, or it refused the messages."""


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (Hugging Face's marker for assistant text):
    renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


class ChatTemplate:
    """A jinja2 chat template with the model's BOS and EOS token texts."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("a chat template must be a non-empty string")
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"the chat template does not parse: {exc} (line {exc.lineno})") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, name: str = "the model") -> "ChatTemplate":
        """The template of a GGUF file's metadata; ChatTemplateError when it has none."""
        source = metadata.get(TEMPLATE_KEY)
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError(f"{name} has no chat template ({TEMPLATE_KEY}): give one "
                                    "(chat_template=..., or `realm chat --chat-template FILE`) or use generate")
        return cls(source, **special_token_texts(metadata))

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               **extra: Any) -> str:
        """The prompt text for `messages` (dicts with "role" and "content", as OpenAI's API)."""
        if isinstance(messages, (str, bytes)) or not all(isinstance(m, Mapping) for m in messages):
            raise ArgumentTypeError("messages must be a sequence of dicts with 'role' and 'content'")
        try:
            return self._template.render(messages=list(messages), bos_token=self.bos_token,
                                         eos_token=self.eos_token, add_generation_prompt=add_generation_prompt,
                                         **extra)
        except jinja2.TemplateError as exc:  # sandbox refusals, undefined calls, template bugs
            raise ChatTemplateError(f"the chat template failed: {exc}") from exc


def special_token_texts(metadata: Mapping[str, Any]) -> dict[str, str]:
    """{"bos_token": ..., "eos_token": ...}: the texts of the BOS and EOS tokens ("" when absent),
    as llama.cpp's token_get_text gives them to templates."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, (StringArray, list)):  # absent, or not an array of strings
        tokens = None
    out = {}
    for var, key in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        token_id = metadata.get(key)
        ok = tokens is not None and isinstance(token_id, int) and 0 <= token_id < len(tokens)
        out[var] = str(tokens[token_id]) if ok else ""
    return out
