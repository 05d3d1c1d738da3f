"""The OpenAI request bodies realm serves, as pydantic models (validated before any guest starts).

Fields follow OpenAI's API; realm's own extras are `top_k`, `min_p`, `repeat_penalty` and
`ignore_eos`.  A null is the field's default (OpenAI's fields are nullable; clients send
`"temperature": null`).  OpenAI's fields that realm does not implement are refused (400, the
field as `param`) unless their value changes nothing (`logit_bias: {}`, `tool_choice: "none"`...):
ignoring them would answer something else than was asked.  Unknown fields are ignored
(clients send `metadata`, `store`...).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..host import TOP_LOGPROBS_MAX

#: Longest prompt text (or all messages' text), in characters, a request may carry.
MAX_PROMPT_CHARS = 1 << 20
#: Stop strings one request may give (realm's guest takes 16).
MAX_STOPS = 16


#: OpenAI's fields realm does not implement, and the values of each that change nothing.
_INERT: dict[str, tuple[Any, ...]] = {
    "logit_bias": ({},), "suffix": ("",), "best_of": (1,), "echo": (False,),
    "tools": ([],), "tool_choice": ("none",), "functions": ([],), "function_call": ("none",),
    "response_format": ({"type": "text"},),
}


def _inert(value: Any, info: ValidationInfo) -> Any:
    """A field of _INERT: refused unless None or a value that changes nothing."""
    if value is not None and not any(type(value) is type(ok) and value == ok for ok in _INERT[info.field_name]):
        raise ValueError(f"{info.field_name} is not supported by realm")
    return value


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """What both endpoints take."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    # realm's extras (llama.cpp's names)
    top_k: int = Field(default=0, ge=0, le=1 << 20)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    logit_bias: Any = None

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        """A null field is a field not given: its default."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    _logit_bias = field_validator("logit_bias")(_inert)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def options(self) -> dict[str, Any]:
        """`Realm.generate` options (max_tokens None: the model's context decides)."""
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                    top_k=self.top_k, min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                    presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                    seed=self.seed, stop=self.stop, ignore_eos=self.ignore_eos)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    logprobs: int | None = Field(default=None, ge=0, le=5)  # the legacy endpoint's bound
    echo: Any = None
    suffix: Any = None
    best_of: Any = None

    _unsupported = field_validator("echo", "suffix", "best_of")(_inert)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=TOP_LOGPROBS_MAX)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None

    _unsupported = field_validator("tools", "tool_choice", "functions", "function_call", "response_format")(_inert)

    @field_validator("messages")
    @classmethod
    def _bounded(cls, v: list[Message]) -> list[Message]:
        if sum(len(m.text()) for m in v) > MAX_PROMPT_CHARS:
            raise ValueError(f"the messages hold more than {MAX_PROMPT_CHARS} characters")
        return v

    def options(self) -> dict[str, Any]:
        opts = super().options()
        if self.max_completion_tokens is not None:
            opts["max_tokens"] = self.max_completion_tokens
        return opts

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them ("developer" is OpenAI's new "system")."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def n_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None
