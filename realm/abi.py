"""The realm host/guest ABI as Python constants.

`guest/realm_abi.h` is the single source of truth; this module mirrors it for
the host, and `tests/test_abi_header.py` parses the header and fails on any
difference.  Wasm value types are written "i32", "i64", "f32", "f64";
pointers and lengths are i32 (read as u32), model ids i64.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Mapping

ABI_VERSION = 1
IMPORT_MODULE = "env"

OK = 0
NAME_MAX = 256  #: longest tensor name a guest may pass, in bytes
LOG_MAX = 4096  #: longest log message, in bytes
LOG_CALLS_MAX = 64  #: realm_log calls the host takes during one call into the guest
FORWARD_MAX_TOKENS = 512  #: rows (tokens) one realm_forward_* call takes at most


class Err(enum.IntEnum):
    """Error codes returned by imports and exports (REALM_E_* in the header)."""

    BAD_POINTER = -1
    BUFFER_TOO_SMALL = -2
    NO_MODEL = -3
    NO_TENSOR = -4
    BAD_ARGUMENT = -5
    BAD_UTF8 = -6
    INTERNAL = -7
    BAD_GGUF = -8
    NO_MEMORY = -9
    DENIED = -10
    LIMIT = -11
    UNSUPPORTED = -12
    TOO_LARGE = -13
    NO_KV_CACHE = -14
    CONTEXT_FULL = -15
    DEADLINE = -16


ERROR_TEXT: Mapping[Err, str] = MappingProxyType({
    Err.BAD_POINTER: "a pointer/length pair lies outside guest memory",
    Err.BUFFER_TOO_SMALL: "the output buffer is too small",
    Err.NO_MODEL: "no such model (or not visible to this guest)",
    Err.NO_TENSOR: "the model has no tensor of that name",
    Err.BAD_ARGUMENT: "an argument is outside its documented range",
    Err.BAD_UTF8: "a name or message is not valid UTF-8",
    Err.INTERNAL: "internal host error (see the host's log)",
    Err.BAD_GGUF: "malformed or truncated GGUF data",
    Err.NO_MEMORY: "the guest is out of memory",
    Err.DENIED: "the model is shared: only the host may remove it",
    Err.LIMIT: "a tenant's quota, the host's budget or a per-call bound is reached",
    Err.UNSUPPORTED: "the host cannot do this for this tensor type or model",
    Err.TOO_LARGE: "the result would be 2 GiB or more",
    Err.NO_KV_CACHE: "no such KV cache (or not this guest's)",
    Err.CONTEXT_FULL: "the tokens would not fit in the KV cache",
    Err.DEADLINE: "the tenant's deadline has passed",
})


def describe(code: int) -> str:
    """`REALM_E_NAME (-n): what it means` for an error code."""
    try:
        err = Err(code)
    except ValueError:
        return f"unknown error code {code}"
    return f"REALM_E_{err.name} ({int(err)}): {ERROR_TEXT[err]}"


class LogLevel(enum.IntEnum):
    """Levels of `realm_log` (REALM_LOG_* in the header)."""

    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


class Tokenizer(enum.IntEnum):
    """`ModelConfig.tokenizer`: the kind named by tokenizer.ggml.model (REALM_TOKENIZER_*)."""

    NONE = 0
    GPT2 = 1
    LLAMA = 2
    OTHER = 3


@dataclass(frozen=True)
class Signature:
    """A wasm function type: parameter and result value types."""

    params: tuple[str, ...]
    results: tuple[str, ...]


def _sig(params: str, results: str = "") -> Signature:
    return Signature(tuple(params.split()), tuple(results.split()))


#: Host functions, module "env": name -> wasm signature.
IMPORTS: Mapping[str, Signature] = MappingProxyType({
    "realm_store_model": _sig("i32 i32", "i64"),
    "realm_get_tensor": _sig("i64 i32 i32 i32 i32", "i32"),
    "realm_get_model_info": _sig("i64 i32 i32", "i32"),
    "realm_remove_model": _sig("i64", "i32"),
    "realm_get_metadata": _sig("i64 i32 i32", "i32"),
    "realm_log": _sig("i32 i32 i32", "i32"),
    "realm_forward_embedding": _sig("i64 i32 i32 i32", "i32"),
    "realm_forward_layer": _sig("i64 i32 i32 i32 i32 i32 i32", "i32"),
    "realm_forward_lm_head": _sig("i64 i32 i32 i32 i32", "i32"),
    "realm_forward": _sig("i64 i32 i32 i32 i32 i32 i32", "i32"),
    "realm_kv_create": _sig("i64 i32", "i32"),
    "realm_kv_free": _sig("i32", "i32"),
    "realm_kv_truncate": _sig("i32 i32", "i32"),
    "realm_emit_text": _sig("i32 i32", "i32"),
})

#: Guest functions: name -> wasm signature.  The module also exports "memory"
#: and wasi-libc's reactor entry point "_initialize" (called once, first).
EXPORTS: Mapping[str, Signature] = MappingProxyType({
    "guest_abi_version": _sig("", "i32"),
    "guest_alloc": _sig("i32", "i32"),
    "guest_free": _sig("i32"),
    "guest_load_model": _sig("i32 i32", "i64"),
    "guest_attach_model": _sig("i64", "i32"),
    "guest_unload_model": _sig("", "i32"),
    "guest_config": _sig("", "i32"),
    "guest_fetch_tensor": _sig("i32 i32 i32 i32", "i32"),
    "guest_tokenize": _sig("i32 i32 i32 i32 i32", "i32"),
    "guest_detokenize": _sig("i32 i32 i32 i32 i32", "i32"),
    "guest_generate_start": _sig("i32 i32 i32 i32 i32", "i32"),
    "guest_generate_prefill": _sig("", "i32"),
    "guest_generate_run": _sig("", "i32"),
    "guest_generate_result": _sig("", "i32"),
    "guest_generate_end": _sig("", "i32"),
})


@dataclass(frozen=True)
class ModelConfig:
    """`struct realm_config`: the model configuration the guest parsed from a GGUF header.

    Field meanings and defaults are documented on the struct in realm_abi.h.
    """

    model_id: int
    n_tensors: int
    total_size: int
    header_len: int
    gguf_version: int
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_v: int
    rope_dim: int
    n_vocab: int
    n_ctx_train: int
    sliding_window: int
    swa_pattern: int
    rope_freq_base: float
    rope_freq_base_swa: float
    rope_scale: float
    rms_eps: float
    tokenizer: Tokenizer
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_bos: int
    add_eos: int
    add_space_prefix: int
    architecture: str

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ModelConfig":
        """Decode the struct's CONFIG_SIZE bytes as read from guest memory."""
        values = dict(zip((name for name, _ in CONFIG_LAYOUT), _CONFIG_STRUCT.unpack(raw)))
        values["tokenizer"] = Tokenizer(values["tokenizer"])
        values["architecture"] = values["architecture"].split(b"\0", 1)[0].decode("utf-8")
        return cls(**values)


#: (field, struct format) in memory order; "<" little-endian, no padding.
CONFIG_LAYOUT: tuple[tuple[str, str], ...] = (
    ("model_id", "q"), ("n_tensors", "Q"), ("total_size", "Q"),
    ("header_len", "I"), ("gguf_version", "I"), ("n_layers", "I"), ("n_embd", "I"), ("n_ff", "I"),
    ("n_head", "I"), ("n_head_kv", "I"), ("head_dim", "I"), ("head_dim_v", "I"), ("rope_dim", "I"),
    ("n_vocab", "I"), ("n_ctx_train", "I"), ("sliding_window", "I"), ("swa_pattern", "I"),
    ("rope_freq_base", "f"), ("rope_freq_base_swa", "f"), ("rope_scale", "f"), ("rms_eps", "f"),
    ("tokenizer", "I"), ("bos_id", "i"), ("eos_id", "i"), ("unk_id", "i"), ("pad_id", "i"),
    ("add_bos", "i"), ("add_eos", "i"), ("add_space_prefix", "i"),
    ("architecture", "64s"),
)
_CONFIG_STRUCT = struct.Struct("<" + "".join(fmt for _, fmt in CONFIG_LAYOUT))
CONFIG_SIZE = _CONFIG_STRUCT.size
assert [f.name for f in fields(ModelConfig)] == [name for name, _ in CONFIG_LAYOUT]


# -- tokenizer and text generation (the last section of realm_abi.h) ----------------------

TEXT_MAX = 65536  #: longest text one realm_emit_text call takes, in bytes
EMIT_STOP = 1  #: realm_emit_text's answer when the host wants no more text
STOP_STRINGS_MAX = 16  #: stop strings one generation takes
STOP_STRING_MAX = 1024  #: longest stop string, in bytes
BATCH_DEFAULT = 512  #: prompt tokens per forward call when n_batch is 0


TOKENIZE_ADD_SPECIAL = 1  #: BOS / EOS where the vocabulary asks for them
TOKENIZE_PARSE_SPECIAL = 2  #: the text of control tokens ("<|im_start|>") becomes them
GENERATE_IGNORE_EOG = 4  #: generation goes on past end-of-generation tokens
DETOKENIZE_SPECIAL = 1  #: guest_detokenize: control tokens render as their text


class StopReason(enum.IntEnum):
    """Why a generation stopped (REALM_STOP_* in the header)."""

    NONE = 0
    EOG = 1
    STRING = 2
    LENGTH = 3
    HOST = 4


#: `struct realm_generate_params`, what guest_generate_start reads: (field, struct format).
GENERATE_PARAMS_LAYOUT: tuple[tuple[str, str], ...] = (
    ("seed", "Q"), ("n_ctx", "I"), ("max_tokens", "i"), ("temperature", "f"), ("top_k", "i"),
    ("top_p", "f"), ("min_p", "f"), ("repeat_penalty", "f"), ("frequency_penalty", "f"),
    ("presence_penalty", "f"), ("penalty_last_n", "i"), ("flags", "I"), ("n_batch", "I"),
)
#: `struct realm_generate_result`, what guest_generate_result points to.
GENERATE_RESULT_LAYOUT: tuple[tuple[str, str], ...] = (
    ("tokens", "I"), ("n_prompt", "I"), ("n_completion", "I"), ("n_decoded", "I"), ("n_ctx", "I"),
    ("stop_reason", "I"),
)
GENERATE_PARAMS_STRUCT = struct.Struct("<" + "".join(fmt for _, fmt in GENERATE_PARAMS_LAYOUT))
GENERATE_RESULT_STRUCT = struct.Struct("<" + "".join(fmt for _, fmt in GENERATE_RESULT_LAYOUT))
GENERATE_PARAMS_SIZE = GENERATE_PARAMS_STRUCT.size
GENERATE_RESULT_SIZE = GENERATE_RESULT_STRUCT.size
