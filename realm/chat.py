"""Chat templates: a model's `tokenizer.chat_template` rendered with jinja2.

    template = ChatTemplate.from_metadata(store.get(model_id).metadata)
    prompt = template.render([{"role": "user", "content": "Hi!"}])

The environment is the one Hugging Face's `apply_chat_template` and
llama-cpp-python's `Jinja2ChatFormatter` give templates: `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a pass-through
`{% generation %}` tag, a `tojson` filter that keeps non-ASCII text, and the
globals `raise_exception(message)` and `strftime_now(format)`; the variables
are `messages`, `bos_token`, `eos_token`, `add_generation_prompt` and any
extra keyword (e.g. `tools`).

The template comes from the GGUF file, so it is untrusted: it compiles and
renders in realm/template_limits.py's sandbox, within `time_limit_s` (default
1 s) and `max_output_bytes` (default 1 MiB); past either, or on anything the
template gets wrong, `ChatTemplateError`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from .errors import ArgumentTypeError, ChatTemplateError
from .reader import StringArray
from .template_limits import (DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIME_LIMIT_S, MAX_TEMPLATE_CHARS, Budget,
                              SandboxEnvironment, check_limits, limited, render_text)

__all__ = ["ChatTemplate", "ChatTemplateError", "special_token_texts", "vocabulary"]

TEMPLATE_KEY = "tokenizer.chat_template"


class ChatTemplate:
    """A jinja2 chat template with the model's BOS and EOS token texts, compiled and rendered
    within `time_limit_s` seconds each and `max_output_bytes` of output (see the module's
    documentation for what the limits cover)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "",
                 time_limit_s: float = DEFAULT_TIME_LIMIT_S, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES):
        self.time_limit_s, self.max_output_bytes = check_limits(time_limit_s, max_output_bytes)
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("a chat template must be a non-empty string")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(f"the chat template has {len(source):,} characters, over the limit of "
                                    f"{MAX_TEMPLATE_CHARS:,}")
        environment = SandboxEnvironment()
        self._template = limited(lambda: environment.from_string(source), self._budget(), "compile")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, name: str = "the model",
                      time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                      max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> "ChatTemplate":
        """The template of a GGUF file's metadata; ChatTemplateError when it has none."""
        source = metadata.get(TEMPLATE_KEY)
        if not isinstance(source, str) or not source.strip():
            raise no_template_error(name)
        return cls(source, **special_token_texts(metadata), time_limit_s=time_limit_s,
                   max_output_bytes=max_output_bytes)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               **extra: Any) -> str:
        """The prompt text for `messages` (dicts with "role" and "content", as OpenAI's API)."""
        if isinstance(messages, (str, bytes)) or not all(isinstance(m, Mapping) for m in messages):
            raise ArgumentTypeError("messages must be a sequence of dicts with 'role' and 'content'")
        variables = {"messages": list(messages), "bos_token": self.bos_token, "eos_token": self.eos_token,
                     "add_generation_prompt": add_generation_prompt}
        if clash := sorted(variables.keys() & extra.keys()):
            raise ArgumentTypeError(f"render() got multiple values for {', '.join(clash)}")
        variables.update(extra)
        budget = self._budget()
        return limited(lambda: render_text(self._template, variables, budget), budget, "render")

    def _budget(self) -> Budget:
        return Budget(self.time_limit_s, self.max_output_bytes)


def no_template_error(name: str) -> ChatTemplateError:
    """The error for a model whose file carries no chat template."""
    return ChatTemplateError(f"{name} has no chat template ({TEMPLATE_KEY}): give one "
                             "(chat_template=..., or `realm chat --chat-template FILE`) or use generate")


@functools.lru_cache(maxsize=32)
def compiled(source: str, bos_token: str, eos_token: str) -> ChatTemplate:
    """A ChatTemplate with the default limits, compiled once for its source and token texts
    (compiling a large template takes tens of ms; rendering one, a few)."""
    return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)


def vocabulary(metadata: Mapping[str, Any]) -> StringArray | list | None:
    """tokenizer.ggml.tokens when it is a sequence of them (a GGUF's array of strings, or a list
    in metadata built by hand); None when absent or a scalar."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    return tokens if isinstance(tokens, (StringArray, list)) else None


def special_token_texts(metadata: Mapping[str, Any]) -> dict[str, str]:
    """{"bos_token": ..., "eos_token": ...}: the texts of the BOS and EOS tokens ("" when absent),
    as llama.cpp's token_get_text gives them to templates."""
    tokens = vocabulary(metadata)
    out = {}
    for var, key in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        token_id = metadata.get(key)
        ok = tokens is not None and isinstance(token_id, int) and 0 <= token_id < len(tokens)
        out[var] = str(tokens[token_id]) if ok else ""
    return out
