"""The child process of tests/test_import_edges.py: a guest calls realm_* imports with
arguments from the edges, so that a host crash kills this process, not pytest.

    python import_edges_child.py properties MODEL.gguf    every import, driven by hypothesis
    python import_edges_child.py regression CASE [MODEL.gguf]  one call whose span wraps u32

Every call is printed (flushed) before it runs: the last line of a crashed run names
the call that crashed it.  Exit status 0: every check held.
"""

from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import wasmtime
from hypothesis import HealthCheck, given, settings, strategies as st

from attackers import documented_codes, every_import_wat
from gguf_helpers import RawTensor, build_gguf
from realm import abi
from realm.abi import Err
from realm.forward import forward_config
from realm.host import add_realm_imports
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT
from realm.store import ModelStore

PAGE = 1 << 16
U32 = 1 << 32
EXAMPLES = 80  # hypothesis examples per import and model
PAGES = (1, 2, 4)  # guest memory sizes; 4 pages hold SmolLM2's 49,152 logits
KV_CTX = 16  # positions of the KV cache an example makes
NAME_AT, GGUF_AT = 256, 512  # where an example puts a tensor name, a GGUF to store
TENSOR_NAMES = (b"output_norm.weight", b"blk.0.attn_norm.weight", b"token_embd.weight", b"no.such", b"\xff\xfe")

Draw = Callable[[st.SearchStrategy[Any]], Any]
Span = tuple[int, int]  # (pointer, bytes)


def _small_gguf() -> bytes:
    """A GGUF the store accepts (no forward pass: one F32 tensor)."""
    data = np.arange(16, dtype="<f4").tobytes()
    return build_gguf([("general.architecture", VT.STRING, "llama")], [RawTensor("w", (16,), GGMLType.F32, data)])[0]


SMALL_GGUF = _small_gguf()


# -- the guest ------------------------------------------------------------------------------

_ENGINE = wasmtime.Engine()
_MODULE = wasmtime.Module(_ENGINE, every_import_wat())


class Guest:
    """One instance of the module, a fresh tenant sharing model `shared`, its memory grown to `pages`."""

    def __init__(self, store: ModelStore, shared: int, pages: int):
        self.wasm = wasmtime.Store(_ENGINE)
        linker = wasmtime.Linker(_ENGINE)
        self.host = add_realm_imports(linker, store, shared=[shared])
        self.exports = linker.instantiate(self.wasm, _MODULE).exports(self.wasm)
        self.memory = self.exports["memory"]
        grown = self.exports["grow"](self.wasm, pages - 1)
        assert grown == 1, grown
        self.size = pages * PAGE

    def call(self, name: str, *args: int) -> int:
        """The import's answer to args (i32 arguments given as u32 or signed)."""
        print(f"{name}{args}", flush=True)
        wasm_args = [(a & 0xFFFF_FFFF) - ((a & 0x8000_0000) << 1) if t == "i32" else a
                     for a, t in zip(args, abi.IMPORTS[name].params)]
        return self.exports[f"call_{name}"](self.wasm, *wasm_args)

    def put(self, ptr: int, data: bytes) -> None:
        self.memory.write(self.wasm, data, ptr)

    def snapshot(self) -> bytes:
        return bytes(self.memory.read(self.wasm, 0, self.size))


@dataclass(frozen=True)
class Model:
    """What the checks need to know of the model the guests share."""

    id: int
    n_embd: int
    n_vocab: int
    n_layer: int
    n_ctx_train: int
    header_len: int
    f32_bytes: dict[bytes, int]  # name -> bytes of the tensor as f32, for those realm can dequantize

    @classmethod
    def load(cls, store: ModelStore, path: str) -> "Model":
        model_id = store.load(path)
        stored = store.get(model_id)
        cfg = forward_config(stored)
        return cls(model_id, cfg.n_embd, cfg.n_vocab, cfg.n_layer, cfg.n_ctx_train, len(stored.header),
                   {name.encode(): 4 * t.n_elements for name, t in stored.tensors.items() if t.dequantizable})


# -- strategies: edge values ------------------------------------------------------------------

def near(*centers: int, k: int = 8) -> st.SearchStrategy[int]:
    """A center plus or minus up to k, as the u32 the guest passes (0 - 1 is 2^32 - 1)."""
    return st.builds(lambda c, d: (c + d) % U32, st.sampled_from(centers), st.integers(-k, k))


def pointer(size: int, align: int = 1, room: int = 0) -> st.SearchStrategy[int]:
    """Near 0, the first page's end, the memory's end, 2^30, 2^31 or 2^32; or align-aligned with
    `room` bytes after it in memory (when they fit)."""
    inside = st.integers(0, max(size - room, 0) // align).map(lambda i: i * align)
    return st.one_of(near(0, PAGE, size, 2**30, 2**31, U32), inside)


def length(size: int, ptr: int, unit: int = 1, *centers: int) -> st.SearchStrategy[int]:
    """A length in units of `unit` bytes for a span at ptr: near 0, the memory's end, 2^32 / unit,
    2^31, 2^32 or `centers`; any length that fits; or, for unit > 1, 2^32 / unit + k where
    unit * length taken modulo 2^32 would fit (the product wraps back into memory)."""
    room = max(size - ptr, 0) // unit
    options = [near(0, (size - ptr) // unit, U32 // unit, 2**31, U32, *centers), st.integers(0, room)]
    if unit > 1:
        options.append(st.integers(0, room).map(lambda k: U32 // unit + k))
    return st.one_of(*options)


def hidden_len(size: int, n_embd: int) -> st.SearchStrategy[int]:
    """f32 values of hidden state: whole rows -- 1 to 3, or near KV_CTX, FORWARD_MAX_TOKENS or
    2^32 / (4 n_embd) (where 4 * n_embd * rows wraps u32) -- or any length()."""
    rows = st.one_of(st.integers(1, 3), near(KV_CTX, abi.FORWARD_MAX_TOKENS, -(-U32 // (4 * n_embd))))
    return st.one_of(rows.map(lambda r: r * n_embd % U32), length(size, 0, 4))


def mostly(good: int, bad: list[int]) -> st.SearchStrategy[int]:
    """Mostly `good` (three in four draws of 0-3), else one of `bad`: most examples get past the id checks."""
    return st.integers(0, 3).flatmap(lambda i: st.sampled_from(bad) if i == 3 else st.just(good))


def model_ids(good: int, *more: int) -> st.SearchStrategy[int]:
    """Mostly `good`; else 0, -1, the i64 extremes, -good, good +- 2^32 (good in the low 32 bits),
    or `more`."""
    return mostly(good, [0, -1, -(2**63), 2**63 - 1, -good, good + U32, good - U32, *more])


def kv_ids(good: int) -> st.SearchStrategy[int]:
    """Mostly `good`; else 0, -1, the i32 extremes, -good or good + 1."""
    return mostly(good, [0, -1, 2**31 - 1, -(2**31), -good, good + 1])


# -- one call per import, and what its contract says of it -----------------------------------

@dataclass
class Call:
    """An import call; `success` whether an answer >= 0 is the documented one; `spans` the
    (pointer, bytes) it must check against memory, `checked` whether every check before them
    passes (then BAD_POINTER iff a span leaves memory); `writes` what a success may change."""

    name: str
    args: tuple[int, ...]
    success: Callable[[int], bool]
    spans: list[Span] = field(default_factory=list)
    checked: bool = True
    writes: Callable[[int], list[Span]] = lambda rc: []


def _store_model(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    g.put(GGUF_AT, SMALL_GGUF)
    ptr = draw(st.one_of(st.just(GGUF_AT), pointer(g.size)))
    n = draw(st.one_of(st.just(len(SMALL_GGUF)), length(g.size, ptr)))
    return Call("realm_store_model", (ptr, n), lambda rc: rc > 0, [(ptr, n)])


def _get_tensor(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    name = draw(st.sampled_from(TENSOR_NAMES))
    g.put(NAME_AT, name)
    model = draw(model_ids(m.id, foreign))
    name_ptr = draw(st.one_of(st.just(NAME_AT), pointer(g.size)))
    name_len = draw(st.one_of(st.just(len(name)), length(g.size, name_ptr)))
    f32 = m.f32_bytes.get(name, 0)
    out = draw(pointer(g.size, 1, f32))
    out_len = draw(length(g.size, out, 1, f32))
    need = m.f32_bytes.get(g.snapshot()[name_ptr:name_ptr + name_len])  # the name the host reads
    return Call("realm_get_tensor", (model, name_ptr, name_len, out, out_len), lambda rc: rc == need,
                [(name_ptr, name_len), (out, out_len)], model == m.id, lambda rc: [(out, rc if out_len else 0)])


def _get_model_info(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    model = draw(model_ids(m.id, foreign))
    count_ptr, size_ptr = draw(pointer(g.size)), draw(pointer(g.size))
    spans = [(count_ptr, 4), (size_ptr, 8)]
    return Call("realm_get_model_info", (model, count_ptr, size_ptr), lambda rc: rc == abi.OK, spans, model == m.id,
                lambda rc: spans)


def _remove_model(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    g.put(GGUF_AT, SMALL_GGUF)
    owned = g.call("realm_store_model", GGUF_AT, len(SMALL_GGUF))
    assert owned > 0, owned
    model = draw(st.one_of(st.just(owned), model_ids(m.id, foreign)))  # m.id is shared: DENIED
    return Call("realm_remove_model", (model,), lambda rc: rc == abi.OK and model == owned)


def _get_metadata(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    model = draw(model_ids(m.id, foreign))
    out = draw(pointer(g.size))
    out_len = draw(length(g.size, out, 1, m.header_len))
    return Call("realm_get_metadata", (model, out, out_len), lambda rc: rc == m.header_len, [(out, out_len)],
                model == m.id, lambda rc: [(out, rc if out_len else 0)])


def _log(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    level = draw(st.one_of(st.sampled_from(abi.LogLevel), near(0, 3, 2**31, U32)))
    ptr = draw(pointer(g.size))
    n = draw(length(g.size, ptr, 1, abi.LOG_MAX))
    return Call("realm_log", (level, ptr, n), lambda rc: rc == abi.OK, [(ptr, n)], level in set(abi.LogLevel))


def _forward_embedding(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    model = draw(model_ids(m.id, foreign))
    n = draw(st.one_of(st.integers(1, 4), length(g.size, 0, 4, abi.FORWARD_MAX_TOKENS, -(-U32 // (4 * m.n_embd)))))
    tokens = draw(pointer(g.size, 4, 4 * n))
    values = n * m.n_embd
    out = draw(st.one_of(pointer(g.size, 4, 4 * values), near(g.size - 4 * values)))
    return Call("realm_forward_embedding", (model, tokens, n, out), lambda rc: rc == values,
                [(tokens, 4 * n), (out, 4 * values)], model == m.id, lambda rc: [(out, 4 * values)])


def _forward_layer(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    kv = g.call("realm_kv_create", m.id, KV_CTX)
    assert kv > 0, kv
    model = draw(model_ids(m.id, foreign))
    layer = draw(st.one_of(st.integers(0, m.n_layer - 1), near(0, m.n_layer, 2**31, U32)))
    n = draw(hidden_len(g.size, m.n_embd))
    hidden = draw(pointer(g.size, 4, 4 * n))
    position = draw(st.one_of(st.just(0), near(0, KV_CTX, 2**31, U32)))  # the cache is empty: 0 fits
    kv_id = draw(kv_ids(kv))
    out = draw(st.one_of(st.just(hidden), pointer(g.size, 4, 4 * n), near(g.size - 4 * n)))
    return Call("realm_forward_layer", (model, layer, hidden, n, position, kv_id, out), lambda rc: rc == n,
                [(hidden, 4 * n), (out, 4 * n)], model == m.id and kv_id == kv, lambda rc: [(out, 4 * n)])


def _forward_lm_head(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    model = draw(model_ids(m.id, foreign))
    n = draw(hidden_len(g.size, m.n_embd))
    hidden = draw(pointer(g.size, 4, 4 * n))
    need = n // m.n_embd * m.n_vocab if n and n % m.n_embd == 0 else 0  # 0: no success possible
    out = draw(st.one_of(pointer(g.size, 4, 4 * need), near(g.size - 4 * need)))
    out_len = draw(length(g.size, out, 4, need))
    return Call("realm_forward_lm_head", (model, hidden, n, out, out_len), lambda rc: rc == need,
                [(hidden, 4 * n), (out, 4 * out_len)], model == m.id, lambda rc: [(out, 4 * rc if out_len else 0)])


def _forward(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    kv = g.call("realm_kv_create", m.id, KV_CTX)
    assert kv > 0, kv
    model = draw(model_ids(m.id, foreign))
    n = draw(st.one_of(st.integers(1, 4), length(g.size, 0, 4, abi.FORWARD_MAX_TOKENS, U32 // 4)))
    tokens = draw(pointer(g.size, 4, 4 * n))
    position = draw(st.one_of(st.just(0), near(0, KV_CTX, 2**31, U32)))  # the cache is empty: 0 fits
    kv_id = draw(kv_ids(kv))
    out = draw(st.one_of(pointer(g.size, 4, 4 * m.n_vocab), near(g.size - 4 * m.n_vocab)))
    out_len = draw(st.one_of(st.just(0), length(g.size, out, 4, m.n_vocab)))  # 0: no logits
    return Call("realm_forward", (model, tokens, n, position, kv_id, out, out_len),
                lambda rc: rc == (m.n_vocab if out_len else 0), [(tokens, 4 * n), (out, 4 * out_len)],
                model == m.id and kv_id == kv, lambda rc: [(out, 4 * rc)])


def _kv_create(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    model = draw(model_ids(m.id, foreign))
    n_ctx = draw(st.one_of(st.integers(1, KV_CTX), near(0, m.n_ctx_train, 2**24, 2**31, U32)))
    return Call("realm_kv_create", (model, n_ctx), lambda rc: rc > 0)


def _kv_free(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    kv = g.call("realm_kv_create", m.id, KV_CTX)
    assert kv > 0, kv
    kv_id = draw(kv_ids(kv))
    return Call("realm_kv_free", (kv_id,), lambda rc: rc == abi.OK and kv_id == kv)


def _kv_truncate(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    kv = g.call("realm_kv_create", m.id, KV_CTX)
    assert kv > 0, kv
    kv_id = draw(kv_ids(kv))
    n = draw(near(0, KV_CTX, 2**31, U32))
    return Call("realm_kv_truncate", (kv_id, n), lambda rc: rc == 0 and kv_id == kv)  # it holds nothing


def _emit_text(draw: Draw, g: Guest, m: Model, foreign: int) -> Call:
    ptr = draw(pointer(g.size))
    n = draw(length(g.size, ptr, 1, abi.TEXT_MAX))
    return Call("realm_emit_text", (ptr, n), lambda rc: rc == abi.OK, [(ptr, n)])  # no sink: go on


CALLS: dict[str, Callable[[Draw, Guest, Model, int], Call]] = {
    "realm_store_model": _store_model, "realm_get_tensor": _get_tensor, "realm_get_model_info": _get_model_info,
    "realm_remove_model": _remove_model, "realm_get_metadata": _get_metadata, "realm_log": _log,
    "realm_forward_embedding": _forward_embedding, "realm_forward_layer": _forward_layer,
    "realm_forward_lm_head": _forward_lm_head, "realm_forward": _forward, "realm_kv_create": _kv_create, "realm_kv_free": _kv_free,
    "realm_kv_truncate": _kv_truncate, "realm_emit_text": _emit_text,
}


def verify(call: Call, rc: int, before: bytes, after: bytes, codes: frozenset[Err]) -> None:
    """rc is a documented success or one of the import's codes; BAD_POINTER exactly when a span
    leaves memory (once the checks before the spans pass); memory changed only where a success
    may write, and nowhere on a failure."""
    if rc >= 0:
        assert call.success(rc), f"{call.name}{call.args} answered {rc}, not its documented success"
    else:
        assert rc in codes, f"{call.name}{call.args} answered {rc} ({abi.describe(rc)}), not one of {sorted(codes)}"
    if call.checked:
        outside = any(ptr + n > len(before) for ptr, n in call.spans)
        assert (rc == Err.BAD_POINTER) == outside, \
            f"{call.name}{call.args} answered {rc} for spans {call.spans} of a {len(before)}-byte memory"
    allowed = np.zeros(len(before), dtype=bool)
    for ptr, n in call.writes(rc) if rc >= 0 else []:
        allowed[ptr:ptr + n] = True
    changed = np.flatnonzero(np.frombuffer(before, np.uint8) != np.frombuffer(after, np.uint8))
    stray = changed[~allowed[changed]]
    assert not stray.size, f"{call.name}{call.args} -> {rc} changed {stray.size} bytes it may not, first at {stray[0]}"


def _fill(g: Guest, kind: str, seed: int) -> None:
    """Token ids in [0, 64) (valid for both models; tiny floats as hidden state) or random bytes."""
    rng = np.random.default_rng(seed)
    if kind == "token ids":
        g.put(0, rng.integers(0, 64, g.size // 4, dtype=np.int32).astype("<i4").tobytes())
    else:
        g.put(0, rng.integers(0, 256, g.size, dtype=np.uint8).tobytes())


def check_import(name: str, store: ModelStore, m: Model, foreign: int, codes: frozenset[Err]) -> None:
    """Hypothesis over one import's arguments, each example in a fresh tenant."""
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        g = Guest(store, m.id, data.draw(st.sampled_from(PAGES), label="pages"))
        try:
            _fill(g, data.draw(st.sampled_from(["token ids", "random"]), label="memory"),
                  data.draw(st.integers(0, U32 - 1), label="seed"))
            call = CALLS[name](data.draw, g, m, foreign)
            before = g.snapshot()
            rc = g.call(call.name, *call.args)
            verify(call, rc, before, g.snapshot(), codes)
        finally:
            g.host.close()

    check()


def properties(path: str) -> int:
    """Every import of abi.IMPORTS against the model at path; the number of imports that failed."""
    assert set(CALLS) == set(abi.IMPORTS), "an import without edge cases here"
    codes = documented_codes()
    store = ModelStore()
    model = Model.load(store, path)
    foreign = store.store_bytes(SMALL_GGUF)  # in the store, not shared with the guests
    failed = []
    for name in abi.IMPORTS:
        try:
            check_import(name, store, model, foreign, codes[name])
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print(f"{len(abi.IMPORTS) - len(failed)} imports held, failed: {failed or 'none'}", flush=True)
    return len(failed)


# -- regressions: u32 products that wrapped before the bounds check -------------------------

WIDE_EMBD, WIDE_CTX = 1 << 14, 1 << 16  # 2^16 rows of 2^14 values: 4 * hidden_len is 2^32


def _wide_gguf() -> bytes:
    """A one-layer llama (zeros) whose context holds the rows that make 4 * hidden_len wrap."""
    def zeros(name: str, *ne: int) -> RawTensor:
        return RawTensor(name, ne, GGMLType.F32, bytes(4 * int(np.prod(ne))))

    e, ff = WIDE_EMBD, 16
    kvs = [("general.architecture", VT.STRING, "llama"), ("llama.embedding_length", VT.UINT32, e),
           ("llama.block_count", VT.UINT32, 1), ("llama.feed_forward_length", VT.UINT32, ff),
           ("llama.attention.head_count", VT.UINT32, 1), ("llama.attention.key_length", VT.UINT32, 2),
           ("llama.context_length", VT.UINT32, WIDE_CTX),
           ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-5)]
    tensors = [zeros("token_embd.weight", e, 2), zeros("output_norm.weight", e), zeros("blk.0.attn_norm.weight", e),
               zeros("blk.0.attn_q.weight", e, 2), zeros("blk.0.attn_k.weight", e, 2),
               zeros("blk.0.attn_v.weight", e, 2), zeros("blk.0.attn_output.weight", 2, e),
               zeros("blk.0.ffn_norm.weight", e), zeros("blk.0.ffn_gate.weight", e, ff),
               zeros("blk.0.ffn_up.weight", e, ff), zeros("blk.0.ffn_down.weight", ff, e)]
    return build_gguf(kvs, tensors)[0]


def regression(case: str, path: str | None = None) -> int:
    """One call whose span, computed in u32, wraps back into memory, on the model at path (none:
    the wide model): it must be BAD_POINTER and change nothing."""
    store = ModelStore()
    model = store.load(path) if path else store.store_bytes(_wide_gguf())
    cfg = forward_config(store.get(model))
    rows = -(-U32 // (4 * cfg.n_embd))  # the fewest rows of hidden state that take 2^32 bytes or more
    g = Guest(store, model, 4 * rows // PAGE + 1 if case == "embedding" else 1)
    if case == "lm_head":  # out: 4 * 2^30 bytes wraps to 0, at the last 4 bytes of memory
        name, args = "realm_forward_lm_head", (model, 0, cfg.n_embd, PAGE - 4, U32 // 4)
    elif case == "embedding":  # tokens (all 0: valid ids) fit in memory; out: 4 * rows * n_embd wraps
        name, args = "realm_forward_embedding", (model, 0, rows, 0)
    else:  # hidden and out: 4 * rows * n_embd wraps; a KV cache that holds the rows, where the model allows
        kv = g.call("realm_kv_create", model, rows if rows <= cfg.n_ctx_train else KV_CTX)
        assert kv > 0, kv
        name, args = "realm_forward_layer", (model, 0, 4096, rows * cfg.n_embd, 0, kv, 0)
    before = g.snapshot()
    rc = g.call(name, *args)
    assert rc == Err.BAD_POINTER, f"{name}{args} answered {rc} ({abi.describe(rc)}), not BAD_POINTER"
    assert g.snapshot() == before, f"{name}{args} changed guest memory"
    g.host.close()
    print(f"{case}: BAD_POINTER", flush=True)
    return 0


if __name__ == "__main__":
    logging.getLogger("realm.guest").setLevel(logging.CRITICAL + 1)  # realm_log's messages: random bytes
    mode, *rest = sys.argv[1:]
    sys.exit({"properties": properties, "regression": regression}[mode](*rest))
