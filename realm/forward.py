"""The transformer forward pass in the host, without a guest.

    store = realm.ModelStore()
    model_id = store.load("SmolLM2-135M-Instruct.Q4_1.gguf")
    with HostModel(store, model_id) as model:
        kv = model.new_kv_cache(512)
        logits = model.forward(prompt_ids, kv)               # [n_tokens, n_vocab]
        next_logits = model.forward([next_id], kv)           # appended at kv.length

The weights stay quantized where the store mapped them; the C code
(csrc/forward.c) multiplies them block by block.  The pieces -- `embed`,
`layer`, `lm_head` -- are what the guest's `realm_forward_*` imports call;
`forward` runs them all in one call.  Supported architectures: `llama`
(SmolLM2, TinyLlama, Llama 3.x with rope_freqs, Mistral), `qwen2` (Qwen2 and Qwen2.5),
`qwen3`, `phi3` and `gemma3` (the table `ARCHITECTURES`); the configuration is read from
the GGUF metadata with llama.cpp's defaults (see `ForwardConfig`).
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import _native
from ._native import ContextFullError, ForwardError, KVCache
from .errors import ArgumentTypeError, InvalidArgumentError, ModelNotFoundError, RealmError
from .store import ModelStore, QuantizedTensor, StoredModel
from .threads import check_threads

__all__ = ["HostModel", "ForwardConfig", "Architecture", "ARCHITECTURES", "KVCache", "UnsupportedModelError",
           "ContextFullError", "ForwardError", "DEFAULT_KV_MAX_BYTES", "forward_config"]

#: Largest KV cache `HostModel.new_kv_cache` makes unless told otherwise.
DEFAULT_KV_MAX_BYTES = 2 << 30

# GGUF tensor names of a layer (after "blk.N.") -> roles of csrc/forward.h's realm_layer_weights
_LAYER_TENSORS = {
    "attn_norm.weight": "attn_norm", "attn_q.weight": "wq", "attn_k.weight": "wk", "attn_v.weight": "wv",
    "attn_output.weight": "wo", "ffn_norm.weight": "ffn_norm", "ffn_gate.weight": "ffn_gate",
    "ffn_up.weight": "ffn_up", "ffn_down.weight": "ffn_down",
}


@dataclass(frozen=True)
class Architecture:
    """What an architecture's layers do, as flags the C forward pass follows (forward.h), and
    llama.cpp's values for it where a file has no key.

    qk_norm: RMSNorm per head of q and k (blk.N.attn_q_norm / attn_k_norm); post_norms: RMSNorm
    of the attention and FFN outputs (post_attention_norm / post_ffw_norm); scale_q: q times
    attn_scale after RoPE instead of a scaled softmax; gelu: GELU gate (else SiLU); rope_neox:
    RoPE pairs (i, i + n_rot/2) (else (2i, 2i+1)); qkv_bias: q, k and v must have biases
    (attn_q.bias, ...; other architectures use them where a file has them, as llama.cpp);
    fused_gate_up: ffn_up holds the gate's rows, then the up rows (no ffn_gate); rope_freqs: a
    rope_freqs.weight tensor of RoPE frequency divisors is used where the file has one (llama3);
    embd_scale: embeddings times sqrt(n_embd); sliding_window: local layers with
    attention.sliding_window (required), one global layer in swa_pattern (default below), their
    RoPE base rope.freq_base_swa (default below) -- other architectures ignore a window key, as
    llama.cpp does; n_embd_head_scale_layers: a block count at which llama.cpp scales attention
    by 1/sqrt(n_embd / n_head) instead of 1/sqrt(head_dim) (gemma3 27B).  Every architecture
    takes a fused attn_qkv (q, k, then v rows) in place of attn_q/k/v, as llama.cpp's loader."""

    qk_norm: bool = False
    post_norms: bool = False
    scale_q: bool = False
    gelu: bool = False
    qkv_bias: bool = False
    rope_neox: bool = False
    fused_gate_up: bool = False
    rope_freqs: bool = False
    embd_scale: bool = False
    sliding_window: bool = False
    swa_pattern: int = 0
    rope_base_swa: float = 10000.0
    n_embd_head_scale_layers: int = 0

    def layer_tensors(self) -> dict[str, str]:
        """GGUF tensor names of a layer -> roles of forward.h's realm_layer_weights (with the
        separate q, k, v and gate, up matrices; `_tensor_table` splits fused ones)."""
        names = dict(_LAYER_TENSORS)
        if self.fused_gate_up:
            del names["ffn_gate.weight"]
            names["ffn_up.weight"] = "ffn_gate_up"
        if self.qk_norm:
            names.update({"attn_q_norm.weight": "attn_q_norm", "attn_k_norm.weight": "attn_k_norm"})
        if self.post_norms:
            names.update({"post_attention_norm.weight": "attn_post_norm", "post_ffw_norm.weight": "ffn_post_norm"})
        return names


#: One entry per architecture realm runs (general.architecture -> its features).  Mistral's
#: files are `llama` ones (llama.cpp reads no sliding window for them, nor does realm).
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(rope_freqs=True),
    "qwen2": Architecture(qkv_bias=True, rope_neox=True),
    "qwen3": Architecture(qk_norm=True, rope_neox=True),
    "phi3": Architecture(scale_q=True, rope_neox=True, fused_gate_up=True),
    "gemma3": Architecture(qk_norm=True, post_norms=True, scale_q=True, gelu=True, rope_neox=True,
                           embd_scale=True, sliding_window=True, swa_pattern=6, rope_base_swa=10000.0,
                           n_embd_head_scale_layers=62),
}


class UnsupportedModelError(RealmError, ValueError):
    """The model's architecture, tensors or hyper-parameters are beyond realm's forward pass."""


@dataclass(frozen=True)
class ForwardConfig:
    """What the forward pass needs from a GGUF's metadata ({arch} = general.architecture).

    n_ff: {arch}.feed_forward_length; n_head_kv: attention.head_count_kv (default n_head);
    head_dim: attention.key_length (default n_embd / n_head); n_rot: rope.dimension_count
    (default head_dim); n_vocab: rows of token_embd; rope_freq_scale: 1 / rope.scaling.factor;
    sliding_window: attention.sliding_window (gemma3 only; 0: none); swa_pattern:
    attention.sliding_window_pattern (gemma3 default 6: layer i is local iff i % 6 < 5);
    rope_base_swa: rope.freq_base_swa (gemma3 default 10000; llama: rope_base); attn_scale: llama
    1/sqrt(head_dim) on the scores, gemma3 multiplies q by it (1/sqrt(head_dim), or
    1/sqrt(n_embd / n_head) for the 62-layer 27B, as llama.cpp); embd_scale: gemma3 sqrt(n_embd).
    qk_norm, post_norms, scale_q, gelu: the architecture's features (`Architecture`); qkv_bias:
    the file's layers have q, k and v biases (required by qwen2).
    """

    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_base_swa: float
    rope_freq_scale: float
    rope_neox: bool
    sliding_window: int
    swa_pattern: int
    attn_scale: float
    embd_scale: float
    tied_output: bool
    qk_norm: bool
    post_norms: bool
    scale_q: bool
    gelu: bool
    qkv_bias: bool

    def layer_is_local(self, il: int) -> bool:
        """Whether layer il uses the sliding window (and rope_base_swa)."""
        if self.sliding_window <= 0:
            return False
        return self.swa_pattern == 0 or il % self.swa_pattern < self.swa_pattern - 1


def _f32(x: float) -> float:
    return float(np.float32(x))


class _Meta:
    """Typed reads of `{arch}.*` metadata keys with defaults."""

    def __init__(self, metadata: Mapping[str, Any], arch: str):
        self.md, self.arch = metadata, arch

    def _get(self, key: str) -> Any:
        return self.md.get(f"{self.arch}.{key}")

    def int(self, key: str, default: int | None = None) -> int:
        v = self._get(key)
        if v is None:
            if default is None:
                raise UnsupportedModelError(f"the model has no {self.arch}.{key}")
            return default
        if isinstance(v, np.ndarray):
            raise UnsupportedModelError(f"{self.arch}.{key} varies per layer; realm needs one value")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise UnsupportedModelError(f"{self.arch}.{key} must be a non-negative integer, not {v!r}")
        return int(v)

    def float(self, key: str, default: float | None = None) -> float:
        v = self._get(key)
        if v is None:
            if default is None:
                raise UnsupportedModelError(f"the model has no {self.arch}.{key}")
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise UnsupportedModelError(f"{self.arch}.{key} must be a finite number, not {v!r}")
        return float(v)


def forward_config(model: StoredModel) -> ForwardConfig:
    """The forward pass's configuration of a stored model; UnsupportedModelError if it cannot run."""
    arch = model.architecture
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch!r} is not supported (realm runs {', '.join(ARCHITECTURES)})")
    a = ARCHITECTURES[arch]
    m = _Meta(model.metadata, arch)
    n_embd, n_head = m.int("embedding_length"), m.int("attention.head_count")
    if n_head == 0:
        raise UnsupportedModelError(f"{arch}.attention.head_count is 0")
    head_dim = m.int("attention.key_length", n_embd // n_head)
    if m.int("attention.value_length", head_dim) != head_dim:
        raise UnsupportedModelError("attention.value_length differs from attention.key_length")
    embd = model.tensors.get("token_embd.weight")
    if embd is None or len(embd.shape) != 2:
        raise UnsupportedModelError("the model has no 2-D token_embd.weight")
    scaling = model.metadata.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise UnsupportedModelError(f"RoPE scaling {scaling!r} is not supported")
    factor = m.float("rope.scaling.factor", 0.0) or m.float("rope.scale_linear", 0.0)
    sliding_window = m.int("attention.sliding_window", 0) if a.sliding_window else 0
    if a.sliding_window and sliding_window == 0:
        raise UnsupportedModelError(f"a {arch} model needs {arch}.attention.sliding_window")
    n_layer = m.int("block_count")
    rope_base = _f32(m.float("rope.freq_base", 10000.0))
    attn_dim = n_embd // n_head if a.n_embd_head_scale_layers and n_layer == a.n_embd_head_scale_layers else head_dim
    return ForwardConfig(
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=m.int("feed_forward_length"),
        n_head=n_head,
        n_head_kv=m.int("attention.head_count_kv", n_head),
        head_dim=head_dim,
        n_rot=m.int("rope.dimension_count", head_dim),
        n_vocab=embd.shape[0],
        n_ctx_train=m.int("context_length", 0),
        rms_eps=_f32(m.float("attention.layer_norm_rms_epsilon")),
        rope_base=rope_base,
        rope_base_swa=_f32(m.float("rope.freq_base_swa", a.rope_base_swa)) if a.sliding_window else rope_base,
        rope_freq_scale=_f32(1.0 / factor) if factor else 1.0,
        rope_neox=a.rope_neox,
        sliding_window=sliding_window,
        swa_pattern=m.int("attention.sliding_window_pattern", a.swa_pattern) if a.sliding_window else 0,
        attn_scale=float(np.float32(1) / np.sqrt(np.float32(attn_dim))) if attn_dim else 0.0,
        embd_scale=float(np.sqrt(np.float32(n_embd))) if a.embd_scale else 1.0,
        tied_output="output.weight" not in model.tensors,
        qk_norm=a.qk_norm, post_norms=a.post_norms, scale_q=a.scale_q, gelu=a.gelu,
        qkv_bias=a.qkv_bias or "blk.0.attn_q.bias" in model.tensors or "blk.0.attn_qkv.bias" in model.tensors,
    )




def _spec(t: QuantizedTensor) -> tuple[int, np.ndarray, int, int]:
    """(type, bytes, rows, cols) of a 1-D or 2-D tensor."""
    if len(t.shape) == 1:
        rows, cols = 1, t.shape[0]
    elif len(t.shape) == 2:
        rows, cols = t.shape
    else:
        raise UnsupportedModelError(f"{t.name} has {len(t.shape)} dimensions; realm expects 1 or 2")
    return int(t.dtype), t.data.reshape(-1), rows, cols


def _split_rows(spec: tuple[int, np.ndarray, int, int], parts: Sequence[int], name: str) -> list[tuple]:
    """A fused matrix (or bias) cut into consecutive runs of rows (values), one spec each: the
    products of each row are the same in any matrix, so the results are the fused product's."""
    qtype, data, rows, cols = spec
    if rows == 1 and sum(parts) == cols:  # a bias vector
        if qtype != 0:
            raise UnsupportedModelError(f"{name} is not F32")
        edges = np.cumsum([0, *parts])
        return [(qtype, data[a * 4:b * 4], 1, b - a) for a, b in zip(edges[:-1], edges[1:])]
    if rows != sum(parts):
        raise UnsupportedModelError(f"{name} has {rows} rows, not {' + '.join(map(str, parts))}")
    # llama.cpp multiplies a matrix of 8k rows as it repacks it (matmul.h): the parts must agree
    if any((p % 8 == 0) != (rows % 8 == 0) for p in parts):
        raise UnsupportedModelError(f"{name}: rows {parts} do not split on multiples of 8")
    row_bytes = data.shape[0] // rows
    edges = np.cumsum([0, *parts])
    return [(qtype, data[a * row_bytes:b * row_bytes], b - a, cols) for a, b in zip(edges[:-1], edges[1:])]


def _tensor_table(model: StoredModel, cfg: ForwardConfig) -> tuple[dict, list[dict]]:
    arch = ARCHITECTURES[cfg.architecture]
    tensors = model.tensors
    used = {"token_embd.weight", "output_norm.weight", "output.weight"}

    def get(name: str) -> tuple[int, np.ndarray, int, int]:
        if name not in tensors:
            raise UnsupportedModelError(f"the model has no tensor {name!r}")
        used.add(name)
        return _spec(tensors[name])

    top = {"tok_embd": get("token_embd.weight"), "output_norm": get("output_norm.weight"),
           "output": get("token_embd.weight" if cfg.tied_output else "output.weight")}
    if arch.rope_freqs and "rope_freqs.weight" in tensors:
        top["rope_freqs"] = get("rope_freqs.weight")
    q_rows, kv_rows = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    layers = []
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        names = arch.layer_tensors()
        spec = {}
        if p + "attn_qkv.weight" in tensors:  # q, k and v in one matrix
            for gguf_name in ("attn_q.weight", "attn_k.weight", "attn_v.weight"):
                del names[gguf_name]
            spec["wq"], spec["wk"], spec["wv"] = _split_rows(get(p + "attn_qkv.weight"), (q_rows, kv_rows, kv_rows),
                                                      p + "attn_qkv.weight")
        for gguf_name, role in names.items():
            spec[role] = get(p + gguf_name)
        if "ffn_gate_up" in spec:
            spec["ffn_gate"], spec["ffn_up"] = _split_rows(spec.pop("ffn_gate_up"), (cfg.n_ff, cfg.n_ff), p + "ffn_up.weight")
        if cfg.qkv_bias:
            if p + "attn_qkv.bias" in tensors:
                spec["bq"], spec["bk"], spec["bv"] = _split_rows(get(p + "attn_qkv.bias"), (q_rows, kv_rows, kv_rows),
                                                          p + "attn_qkv.bias")
            else:
                spec["bq"], spec["bk"], spec["bv"] = (get(p + f"attn_{x}.bias") for x in "qkv")
        layers.append(spec)
    unknown = sorted(set(tensors) - used)
    if unknown:  # a bias, rope factors, experts...: computing without them would be wrong
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UnsupportedModelError(f"realm's {cfg.architecture} forward pass does not use the tensors "
                                    f"{', '.join(unknown[:5])}{more}")
    return top, layers


class HostModel:
    """The forward pass of one stored model, run in the host.

    Holds the model in the store (`store.retain`) until `close()` (or garbage collection),
    so its weights stay mapped.  Thread-safe: any number of threads may run it at once,
    each with its own KV cache.  `threads`: threads per op (None: every core this process
    may use).  `held`: the caller holds the model already (see `ModelStore.retain`), so a
    model removed meanwhile still runs.  With the environment variable REALM_PROFILE=1 every
    KV cache times its layer calls per op (`KVCache.profile()`).
    """

    def __init__(self, store: ModelStore, model_id: int, *, threads: int | None = None, held: bool = False):
        check_threads(threads)
        stored = store.retain(model_id, held=held)
        self._release = weakref.finalize(self, _release, store, model_id)
        self._release.atexit = False  # not at the interpreter's exit: a pass may still read the model
        try:
            self.config: ForwardConfig = forward_config(stored)
            top, layers = _tensor_table(stored, self.config)
            config = asdict(self.config)
            del config["architecture"]  # the C code gets the features, not the name
            profile = os.environ.get("REALM_PROFILE", "") not in ("", "0")
            try:
                self._fm = _native.ForwardModel(config, top, layers, threads=threads, profile=profile)
            except InvalidArgumentError as exc:  # the C code's checks of shapes, types and sizes
                raise UnsupportedModelError(str(exc)) from None
        except BaseException:
            self._release()
            raise
        self.store = store
        self.model_id = model_id
        self.model = stored

    @property
    def threads(self) -> int:
        return self._fm.threads

    @property
    def closed(self) -> bool:
        return not self._release.alive

    # -- KV caches ------------------------------------------------------------------
    def kv_cache_bytes(self, n_ctx: int, dtype: str = "f16") -> int:
        """Bytes of a KV cache of n_ctx positions."""
        size = self._fm.kv_bytes(n_ctx, dtype)
        if size < 0:
            raise InvalidArgumentError(f"n_ctx must be in [1, 2^24], not {n_ctx}")
        return size

    def new_kv_cache(self, n_ctx: int, dtype: str = "f16", *, max_bytes: int = DEFAULT_KV_MAX_BYTES) -> KVCache:
        """A KV cache for n_ctx positions (rows of "f16", as llama.cpp, or "f32").

        Refused (ValueError) beyond the model's training context or beyond max_bytes."""
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
            raise InvalidArgumentError(f"n_ctx must be a positive int, not {n_ctx!r}")
        if self.config.n_ctx_train and n_ctx > self.config.n_ctx_train:
            raise InvalidArgumentError(f"n_ctx={n_ctx} exceeds the model's training context of {self.config.n_ctx_train}")
        size = self.kv_cache_bytes(n_ctx, dtype)
        if size > max_bytes:
            raise InvalidArgumentError(f"a KV cache of {n_ctx} positions takes {size} bytes, over the cap of {max_bytes}")
        return KVCache(self._fm, n_ctx, dtype)

    # -- the pieces -----------------------------------------------------------------
    def embed(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Hidden states [n_tokens, n_embd] of token ids (gemma3: scaled by sqrt(n_embd))."""
        return self._fm.embed(_token_array(tokens))

    def layer(self, il: int, hidden: np.ndarray, pos: int, kv: KVCache, *, out: np.ndarray | None = None
              ) -> np.ndarray:
        """Layer il for hidden [n_tokens, n_embd] at positions pos .. pos + n_tokens - 1;
        writes their K and V into kv.  `out` may be `hidden` (in place)."""
        hidden = _rows(hidden)
        return self._fm.layer(il, hidden, pos, kv, out)

    def lm_head(self, hidden: np.ndarray) -> np.ndarray:
        """Logits [n_rows, n_vocab] of hidden states [n_rows, n_embd] (final norm + output)."""
        return self._fm.lm_head(_rows(hidden))

    def forward(self, tokens: Sequence[int] | np.ndarray, kv: KVCache, *, last_only: bool = False) -> np.ndarray:
        """Logits [n_tokens, n_vocab] (or [1, n_vocab] with last_only) of tokens appended to the
        sequence in kv at position kv.length: the prompt as one batch per layer, or one token."""
        return self._fm.forward(_token_array(tokens), kv, None, last_only)

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Release the model in the store (KV caches made from it keep the weights alive)."""
        self._release()

    def __enter__(self) -> "HostModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (f"HostModel(model {self.model_id}, {c.architecture}, {c.n_layer} layers, n_embd {c.n_embd}, "
                f"{self.threads} threads)")


def _release(store: ModelStore, model_id: int) -> None:
    try:
        store.release(model_id)
    except ModelNotFoundError:  # the store was closed first
        pass


def _token_array(tokens: Sequence[int] | np.ndarray | Iterable[int]) -> np.ndarray:
    if isinstance(tokens, np.ndarray):
        if tokens.dtype.kind not in "iu":
            raise ArgumentTypeError(f"token ids must be integers, not {tokens.dtype}")
        if tokens.size and (tokens.min() < -2**31 or tokens.max() >= 2**31):
            raise InvalidArgumentError("token ids must fit in int32")
        return np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
    try:
        return np.array(list(tokens), dtype=np.int32).reshape(-1)
    except OverflowError:
        raise InvalidArgumentError("token ids must fit in int32") from None


def _rows(hidden: np.ndarray) -> np.ndarray:
    """A 1-D vector becomes one row (ForwardModel checks the dtype and width)."""
    if isinstance(hidden, np.ndarray) and hidden.ndim == 1:
        hidden = hidden.reshape(1, -1)
    return hidden
