"""A hostile guest, written in WAT here, calls every realm_* import with bad ids,
out-of-bounds and u32-overflowing pointers, non-UTF-8 names and too-small buffers.
Each call must return its documented code, write nothing outside the buffer it
names (nothing at all on failure), and leave the host working."""

from __future__ import annotations

import gc
import logging
import struct
import weakref

import numpy as np
import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings, strategies as st

from attackers import every_import_wat, imports
from conftest import require
from gguf_helpers import RawTensor, build_gguf, tensor_bytes
import realm.host as host_module
from realm import abi
from realm.abi import Err
from realm.cache import LayerCache
from realm.host import add_realm_imports
from realm.limits import Limits
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT
from realm.store import ModelStore

PAGE = 65536
BAD_IDS = [0, -1, 2**63 - 1, -(2**63), 10**12]
# (ptr, len) pairs that leave a one-page memory, several wrapping around u32
BAD_SPANS = [(PAGE, 1), (PAGE - 1, 2), (0xFFFF_FFF0, 0x20), (16, 0xFFFF_FFFF),
             (0xFFFF_FFFF, 1), (0x8000_0000, 0), (0xFFFF_FFFF, 0xFFFF_FFFF)]
NOT_UTF8 = [b"\xff", b"blk.\xc0\xaf", b"\xed\xa0\x80", b"tail\xe2\x82", b"\xf4\x90\x80\x80", b"\x80abc"]


class Hostile:
    """One instance of the hostile module with its own RealmHost."""

    def __init__(self, store: ModelStore, *, export_memory: bool = True, **host_options):
        engine = wasmtime.Engine()
        self.wasm = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        self.host = add_realm_imports(linker, store, **host_options)
        module = wasmtime.Module(engine, every_import_wat(export_memory=export_memory))
        self.exports = linker.instantiate(self.wasm, module).exports(self.wasm)
        self.memory = self.exports["memory"] if export_memory else None
        self.rng = np.random.default_rng(7)

    def call(self, name: str, *args: int) -> int:
        sig = abi.IMPORTS[name]
        wasm_args = [(a & 0xFFFF_FFFF) - ((a & 0x8000_0000) << 1) if t == "i32" else a
                     for a, t in zip(args, sig.params)]
        return self.exports[f"call_{name}"](self.wasm, *wasm_args)

    @property
    def size(self) -> int:
        return self.memory.data_len(self.wasm)

    def fill(self) -> bytes:
        """Random bytes everywhere; returns them."""
        data = self.rng.integers(0, 256, self.size, dtype=np.uint8).tobytes()
        self.memory.write(self.wasm, data, 0)
        return data

    def put(self, ptr: int, data: bytes) -> None:
        self.memory.write(self.wasm, data, ptr)

    def snapshot(self) -> bytes:
        return bytes(self.memory.read(self.wasm, 0, self.size))


def assert_only(before: bytes, after: bytes, start: int = 0, length: int = 0) -> None:
    """Memory differs from `before` at most inside [start, start + length)."""
    assert len(after) == len(before)
    assert after[:start] == before[:start], "guest memory changed before the buffer"
    assert after[start + length:] == before[start + length:], "guest memory changed after the buffer"


# -- models -------------------------------------------------------------------------

def _small_gguf() -> bytes:
    data = np.arange(16, dtype=np.float32).tobytes()
    raw, _ = build_gguf([("general.architecture", VT.STRING, "llama")],
                        [RawTensor("w", (16,), GGMLType.F32, data)])
    return raw


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A store holding: two tiny llamas (to share), another tenant's model, a model with an
    I32 tensor (no f32 conversion) and one with a 2 GiB-as-f32 tensor (a sparse file)."""
    require("gguf")
    from gguf_helpers import write_tiny_llama

    tmp = tmp_path_factory.mktemp("hostile")
    store = ModelStore(LayerCache(64 << 20))
    tiny = store.load(write_tiny_llama(tmp / "tiny.gguf"))
    tiny2 = store.load(write_tiny_llama(tmp / "tiny2.gguf", seed=1))
    other = store.store_bytes(_small_gguf())

    raw, _ = build_gguf([("general.architecture", VT.STRING, "llama")],
                        [RawTensor("ids", (8,), GGMLType.I32, bytes(range(32)))])
    ints = store.store_bytes(raw)

    n = 1 << 29  # 2^29 floats = 2 GiB
    raw, layout = build_gguf([("general.architecture", VT.STRING, "llama")],
                             [RawTensor("huge", (n,), GGMLType.Q8_0)])
    path = tmp / "huge.gguf"
    with open(path, "wb") as f:
        f.write(raw)
        f.truncate(layout.data_offset + tensor_bytes(GGMLType.Q8_0, (n,)))
    huge = store.load(path)
    yield {"store": store, "tiny": tiny, "tiny2": tiny2, "other": other, "ints": ints, "huge": huge}
    store.close()


@pytest.fixture
def guest(models):
    g = Hostile(models["store"], shared=[models["tiny"], models["tiny2"], models["ints"], models["huge"]])
    yield g
    g.host.close()


def _expected_f32(models, name: str) -> bytes:
    return models["store"].get(models["tiny"]).tensors[name].dequantize().astype("<f4").tobytes()


NAME_AT, OUT_AT = 256, 4096
TINY_EMBD = 256  # n_embd of gguf_helpers.write_tiny_llama


def _tensor_args(models, name: bytes = b"output_norm.weight", *, model=None, out_len=PAGE - OUT_AT):
    return (models["tiny"] if model is None else model, NAME_AT, len(name), OUT_AT, out_len)


# -- every import: unknown ids -------------------------------------------------------------

MODEL_CALLS = {
    "realm_get_tensor": lambda mid: (mid, NAME_AT, 18, OUT_AT, 1024),
    "realm_get_model_info": lambda mid: (mid, 0, 8),
    "realm_remove_model": lambda mid: (mid,),
    "realm_get_metadata": lambda mid: (mid, OUT_AT, 1024),
    "realm_forward_embedding": lambda mid: (mid, NAME_AT, 2, OUT_AT),
    "realm_forward_layer": lambda mid: (mid, 0, OUT_AT, TINY_EMBD, 0, 1, OUT_AT),
    "realm_forward_lm_head": lambda mid: (mid, OUT_AT, TINY_EMBD, OUT_AT, 0),
    "realm_forward": lambda mid: (mid, NAME_AT, 1, 0, 1, OUT_AT, 64),
    "realm_kv_create": lambda mid: (mid, 16),
}


@pytest.mark.parametrize("name", sorted(MODEL_CALLS))
def test_unknown_and_foreign_model_ids(guest, models, name):
    guest.fill()
    guest.put(NAME_AT, b"output_norm.weight")
    before = guest.snapshot()
    for model_id in [*BAD_IDS, models["other"]]:  # "other": in the store, not visible to this guest
        assert guest.call(name, *MODEL_CALLS[name](model_id)) == Err.NO_MODEL, model_id
    assert_only(before, guest.snapshot())


# -- every pointer argument: out of bounds, wrapping, current memory -------------------------

SPAN_CALLS = {  # import -> builders placing a bad (ptr, len) in each pointer argument
    "realm_store_model": [lambda p, n, m: (p, n)],
    "realm_get_tensor": [lambda p, n, m: (m["tiny"], p, n, OUT_AT, 1024),
                         lambda p, n, m: (m["tiny"], NAME_AT, 18, p, n)],
    "realm_get_metadata": [lambda p, n, m: (m["tiny"], p, n)],
    "realm_log": [lambda p, n, m: (abi.LogLevel.INFO, p, n)],
    # forward: lengths count 4-byte values (m["kv"] is a KV cache the test made first)
    "realm_forward_embedding": [lambda p, n, m: (m["tiny"], p, n, OUT_AT)],
    "realm_forward_layer": [lambda p, n, m: (m["tiny"], 0, p, n, 0, m["kv"], OUT_AT)],
    "realm_forward_lm_head": [lambda p, n, m: (m["tiny"], p, n, OUT_AT, 1024),
                              lambda p, n, m: (m["tiny"], OUT_AT, TINY_EMBD, p, n)],
    "realm_forward": [lambda p, n, m: (m["tiny"], p, n, 0, m["kv"], OUT_AT, 64),
                      lambda p, n, m: (m["tiny"], NAME_AT, 1, 0, m["kv"], p, n)],
    "realm_emit_text": [lambda p, n, m: (p, n)],
}

KV_CALLS = {  # imports taking a KV cache id (and nothing else to attack)
    "realm_kv_free": lambda kv: (kv,),
    "realm_kv_truncate": lambda kv: (kv, 0),
}


def test_every_import_is_attacked_here():
    """A new import must bring its hostile cases to this file."""
    assert set(MODEL_CALLS) | set(SPAN_CALLS) | set(KV_CALLS) == set(abi.IMPORTS)


@pytest.mark.parametrize("name,which", [(n, i) for n, b in SPAN_CALLS.items() for i in range(len(b))])
def test_out_of_bounds_spans(guest, models, name, which):
    ctx = dict(models, kv=guest.call("realm_kv_create", models["tiny"], 16))
    guest.fill()
    guest.put(NAME_AT, b"output_norm.weight")
    before = guest.snapshot()
    for ptr, length in BAD_SPANS:
        args = SPAN_CALLS[name][which](ptr, length, ctx)
        assert guest.call(name, *args) == Err.BAD_POINTER, (ptr, length)
    assert_only(before, guest.snapshot())


@pytest.mark.parametrize("count_ptr,size_ptr", [(PAGE - 3, 0), (0, PAGE - 7), (0xFFFF_FFFF, 0),
                                                (0, 0xFFFF_FFFC), (PAGE, PAGE)])
def test_model_info_out_of_bounds(guest, models, count_ptr, size_ptr):
    before = guest.fill()
    assert guest.call("realm_get_model_info", models["tiny"], count_ptr, size_ptr) == Err.BAD_POINTER
    assert_only(before, guest.snapshot())


def test_pointers_are_checked_against_the_current_memory(guest, models):
    """A buffer in a page the guest has not grown yet is out of bounds; after memory.grow it is not."""
    name = b"output_norm.weight"
    expected = _expected_f32(models, "output_norm.weight")
    guest.put(NAME_AT, name)
    args = (models["tiny"], NAME_AT, len(name), PAGE + 100, len(expected))
    assert guest.call("realm_get_tensor", *args) == Err.BAD_POINTER
    assert guest.exports["grow"](guest.wasm, 1) == 1
    before = guest.fill()
    guest.put(NAME_AT, name)
    before = guest.snapshot()
    assert guest.call("realm_get_tensor", *args) == len(expected)
    after = guest.snapshot()
    assert_only(before, after, PAGE + 100, len(expected))
    assert after[PAGE + 100:PAGE + 100 + len(expected)] == expected


def test_guest_without_exported_memory_has_no_valid_pointers(models):
    g = Hostile(models["store"], export_memory=False, shared=[models["tiny"]])
    assert g.call("realm_get_metadata", models["tiny"], 0, 16) == Err.BAD_POINTER
    assert g.call("realm_log", abi.LogLevel.INFO, 0, 1) == Err.BAD_POINTER
    assert g.call("realm_store_model", 0, 16) == Err.BAD_POINTER
    g.host.close()


# -- realm_get_tensor ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["output_norm.weight", "token_embd.weight", "blk.0.attn_q.weight",
                                  "blk.1.ffn_gate.weight", "blk.1.ffn_down.weight", "blk.0.attn_output.weight"])
def test_get_tensor_writes_exactly_the_f32_tensor(guest, models, name):
    expected = _expected_f32(models, name)
    guest.exports["grow"](guest.wasm, len(expected) // PAGE + 1)
    guest.fill()
    guest.put(NAME_AT, name.encode())
    before = guest.snapshot()
    args = (models["tiny"], NAME_AT, len(name), OUT_AT, len(expected) + 100)
    assert guest.call("realm_get_tensor", *args[:4], 0) == len(expected)  # a size query writes nothing
    assert_only(before, guest.snapshot())
    assert guest.call("realm_get_tensor", *args) == len(expected)
    after = guest.snapshot()
    assert_only(before, after, OUT_AT, len(expected))
    assert after[OUT_AT:OUT_AT + len(expected)] == expected


def test_get_tensor_refusals(guest, models):
    tiny = models["tiny"]
    guest.fill()
    long_name = b"x" * (abi.NAME_MAX + 1)
    guest.put(NAME_AT, long_name)
    before = guest.snapshot()
    assert guest.call("realm_get_tensor", tiny, NAME_AT, len(long_name), OUT_AT, 1024) == Err.BAD_ARGUMENT
    for bad in NOT_UTF8:
        guest.put(NAME_AT, bad)
        before = guest.snapshot()
        assert guest.call("realm_get_tensor", tiny, NAME_AT, len(bad), OUT_AT, 1024) == Err.BAD_UTF8, bad
        assert_only(before, guest.snapshot())
    for missing in [b"nope", b"output_norm.weigh", b"output_norm.weight\0", b""]:
        guest.put(NAME_AT, missing)
        before = guest.snapshot()
        assert guest.call("realm_get_tensor", tiny, NAME_AT, len(missing), OUT_AT, 1024) == Err.NO_TENSOR
        assert_only(before, guest.snapshot())

    for model, name, code in [(models["ints"], b"ids", Err.UNSUPPORTED), (models["huge"], b"huge", Err.TOO_LARGE)]:
        guest.put(NAME_AT, name)
        before = guest.snapshot()
        for out_len in (0, PAGE - OUT_AT):
            assert guest.call("realm_get_tensor", model, NAME_AT, len(name), OUT_AT, out_len) == code
        assert_only(before, guest.snapshot())


def test_get_tensor_too_small_buffer(guest, models):
    name = "blk.0.attn_norm.weight"
    need = len(_expected_f32(models, name))
    guest.fill()
    guest.put(NAME_AT, name.encode())
    before = guest.snapshot()
    for out_len in (need - 1, need - 4, 1):
        args = (models["tiny"], NAME_AT, len(name), OUT_AT, out_len)
        assert guest.call("realm_get_tensor", *args) == Err.BUFFER_TOO_SMALL
    assert_only(before, guest.snapshot())


def test_host_failure_is_internal_error_not_a_trap(guest, models, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(models["store"], "get_tensor_f32", broken)
    guest.fill()
    guest.put(NAME_AT, b"output_norm.weight")
    before = guest.snapshot()
    with caplog.at_level(logging.ERROR, logger="realm.host"):
        assert guest.call("realm_get_tensor", *_tensor_args(models)) == Err.INTERNAL
    assert "disk on fire" in caplog.text
    assert_only(before, guest.snapshot())
    monkeypatch.undo()
    assert guest.call("realm_get_tensor", *_tensor_args(models)) > 0  # the host lives on


# -- realm_get_model_info / realm_get_metadata ---------------------------------------------------

def test_get_model_info_writes_exactly_12_bytes(guest, models):
    info = models["store"].info(models["tiny"])
    before = guest.fill()
    assert guest.call("realm_get_model_info", models["tiny"], 1000, 2001) == abi.OK
    after = guest.snapshot()
    assert_only(before, after, 1000, 2001 + 8 - 1000)
    assert after[1004:2001] == before[1004:2001]
    assert struct.unpack_from("<I", after, 1000)[0] == info.tensor_count
    assert struct.unpack_from("<Q", after, 2001)[0] == info.total_size


def test_get_metadata(guest, models):
    header = models["store"].get(models["tiny"]).header
    assert len(header) < PAGE - OUT_AT
    before = guest.fill()
    assert guest.call("realm_get_metadata", models["tiny"], 0, 0) == len(header)
    for out_len in (len(header) - 1, 1):
        assert guest.call("realm_get_metadata", models["tiny"], OUT_AT, out_len) == Err.BUFFER_TOO_SMALL
    assert_only(before, guest.snapshot())
    assert guest.call("realm_get_metadata", models["tiny"], OUT_AT, PAGE - OUT_AT) == len(header)
    after = guest.snapshot()
    assert_only(before, after, OUT_AT, len(header))
    assert after[OUT_AT:OUT_AT + len(header)] == header


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ptr=st.one_of(st.integers(0, 2 * PAGE), st.integers(0, 2**32 - 1)),
       length=st.one_of(st.integers(0, 2 * PAGE), st.integers(0, 2**32 - 1)))
def test_get_metadata_any_span(guest, models, ptr, length):
    """Against a model of the contract: BAD_POINTER iff the span leaves memory; a query
    or BUFFER_TOO_SMALL write nothing; a fitting buffer gets the header and nothing else."""
    header = models["store"].get(models["tiny"]).header
    before = guest.fill()
    rc = guest.call("realm_get_metadata", models["tiny"], ptr, length)
    after = guest.snapshot()
    if ptr + length > len(before):
        assert rc == Err.BAD_POINTER
    elif length == 0:
        assert rc == len(header)
    elif length < len(header):
        assert rc == Err.BUFFER_TOO_SMALL
    else:
        assert rc == len(header)
        assert after[ptr:ptr + len(header)] == header
        assert_only(before, after, ptr, len(header))
        return
    assert after == before


# -- realm_store_model / realm_remove_model ---------------------------------------------------------

def test_store_and_remove(guest, models):
    store = models["store"]
    raw = _small_gguf()
    guest.fill()
    guest.put(OUT_AT, raw)
    before = guest.snapshot()
    model_id = guest.call("realm_store_model", OUT_AT, len(raw))
    assert model_id > 0 and model_id in store and guest.host.owned_models == [model_id]
    assert store.get(model_id).tensors["w"].dequantize().tolist() == list(range(16))
    assert guest.call("realm_get_metadata", model_id, 0, 0) == len(store.get(model_id).header)
    assert_only(before, guest.snapshot())

    assert guest.call("realm_remove_model", models["tiny"]) == Err.DENIED  # shared: the host's
    assert models["tiny"] in store
    assert guest.call("realm_remove_model", model_id) == abi.OK
    assert model_id not in store
    assert guest.call("realm_remove_model", model_id) == Err.NO_MODEL
    assert guest.call("realm_get_metadata", model_id, 0, 0) == Err.NO_MODEL


def test_store_bad_gguf(guest, models):
    raw = _small_gguf()
    count = len(models["store"])
    for bad in [b"", b"GGUF", b"\0" * 64, raw[: len(raw) // 2], b"FUGG" + raw[4:], raw[:-1]]:
        guest.put(OUT_AT, bad)
        assert guest.call("realm_store_model", OUT_AT, len(bad)) == Err.BAD_GGUF, bad[:8]
    assert len(models["store"]) == count and guest.host.owned_models == []
    assert guest.call("realm_store_model", OUT_AT, 0) == Err.BAD_GGUF


def test_store_quota(models):
    raw = _small_gguf()
    store = models["store"]
    probe = store.store_bytes(raw)
    cost = store.get(probe).host_bytes  # its bytes and its parsed header
    store.remove(probe)
    assert cost > len(raw)
    g = Hostile(store, limits=Limits(stored_models=2, stored_bytes=10 * cost))
    g.put(OUT_AT, raw)
    first = g.call("realm_store_model", OUT_AT, len(raw))
    assert g.call("realm_store_model", OUT_AT, len(raw)) > first
    assert g.call("realm_store_model", OUT_AT, len(raw)) == Err.LIMIT  # models
    assert g.call("realm_remove_model", first) == abi.OK
    assert g.call("realm_store_model", OUT_AT, len(raw)) > 0  # room again
    g.host.close()

    g = Hostile(store, limits=Limits(stored_bytes=cost + 10))
    g.put(OUT_AT, raw)
    assert g.call("realm_store_model", OUT_AT, len(raw)) > 0
    assert g.host.stored_bytes == cost
    assert g.call("realm_store_model", OUT_AT, len(raw)) == Err.LIMIT  # bytes
    assert "quota" in g.host.last_error
    g.host.close()

    g = Hostile(store, limits=Limits(stored_bytes=len(raw) + 10))  # the bytes fit, not with the header
    g.put(OUT_AT, raw)
    count = len(store)
    assert g.call("realm_store_model", OUT_AT, len(raw)) == Err.LIMIT
    assert len(store) == count and g.host.stored_bytes == 0  # nothing kept
    g.host.close()


def test_close_removes_owned_and_releases_shared(models):
    store = models["store"]
    raw = _small_gguf()
    g = Hostile(store, shared=[models["tiny"]])
    g.put(OUT_AT, raw)
    owned = g.call("realm_store_model", OUT_AT, len(raw))
    assert owned in store
    g.host.close()
    assert owned not in store and models["tiny"] in store
    assert g.call("realm_get_metadata", models["tiny"], 0, 0) == Err.NO_MODEL
    assert g.call("realm_store_model", OUT_AT, len(raw)) == Err.LIMIT


def test_shared_model_outlives_its_removal_from_the_store():
    """The host removing a model it shared does not pull it from under the guest."""
    store = ModelStore()
    model_id = store.store_bytes(_small_gguf())
    g = Hostile(store, shared=[model_id])
    store.remove(model_id)
    assert g.call("realm_get_metadata", model_id, 0, 0) == len(store.get(model_id).header)
    g.host.close()
    with pytest.raises(KeyError):
        store.get(model_id)


# -- realm_log ---------------------------------------------------------------------------------------

def test_log(guest, caplog):
    guest.fill()
    guest.put(OUT_AT, "héllo from the guest".encode())
    before = guest.snapshot()
    n = len("héllo from the guest".encode())
    with caplog.at_level(logging.DEBUG, logger="realm.guest"):
        for level in abi.LogLevel:
            assert guest.call("realm_log", level, OUT_AT, n) == abi.OK
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
    assert all(r.getMessage() == "héllo from the guest" for r in caplog.records)
    assert guest.host.last_error == "héllo from the guest"

    for level in (-1, 4, 2**31 - 1):
        assert guest.call("realm_log", level, OUT_AT, n) == Err.BAD_ARGUMENT
    assert guest.call("realm_log", abi.LogLevel.INFO, 0, abi.LOG_MAX + 1) == Err.BAD_ARGUMENT
    assert_only(before, guest.snapshot())
    for bad in NOT_UTF8:
        guest.put(OUT_AT, bad)
        before = guest.snapshot()
        assert guest.call("realm_log", abi.LogLevel.INFO, OUT_AT, len(bad)) == Err.BAD_UTF8
        assert_only(before, guest.snapshot())


def test_one_host_serves_one_linker_per_tenant(models):
    """Two tenants see their own stored models only."""
    raw = _small_gguf()
    a, b = Hostile(models["store"]), Hostile(models["store"])
    a.put(OUT_AT, raw)
    mine = a.call("realm_store_model", OUT_AT, len(raw))
    assert a.call("realm_get_metadata", mine, 0, 0) > 0
    assert b.call("realm_get_metadata", mine, 0, 0) == Err.NO_MODEL
    assert b.call("realm_remove_model", mine) == Err.NO_MODEL
    a.host.close()
    b.host.close()


# -- the forward pass and KV caches -------------------------------------------------------------
# The tiny llama: 2 layers, n_embd 256, n_vocab 64, context 256.  Lengths count 4-byte values.

TOK_AT, HID_AT, LOGITS_AT = 1024, 8192, 40960


@pytest.fixture(scope="module")
def tiny_host(models):
    from realm.forward import HostModel

    with HostModel(models["store"], models["tiny"], threads=2) as host_model:
        yield host_model


def _f32_at(guest, ptr: int, count: int) -> np.ndarray:
    return np.frombuffer(guest.snapshot()[ptr:ptr + 4 * count], dtype="<f4").reshape(-1, TINY_EMBD)


@pytest.mark.parametrize("name", sorted(KV_CALLS))
def test_unknown_and_foreign_kv_ids(guest, models, name):
    other = Hostile(models["store"], shared=[models["tiny"]])
    foreign = other.call("realm_kv_create", models["tiny"], 16)
    assert foreign > 0
    before = guest.fill()
    for kv in [0, -1, 2**31 - 1, -(2**31), foreign, foreign + 1000]:
        assert guest.call(name, *KV_CALLS[name](kv)) == Err.NO_KV_CACHE, kv
    assert guest.call("realm_forward_layer", models["tiny"], 0, HID_AT, TINY_EMBD, 0, foreign, HID_AT) \
        == Err.NO_KV_CACHE
    assert guest.call("realm_forward", models["tiny"], TOK_AT, 1, 0, foreign, LOGITS_AT, 64) == Err.NO_KV_CACHE
    assert_only(before, guest.snapshot())
    other.host.close()


def test_forward_through_imports_equals_host_model(guest, models, tiny_host):
    """A 5-token prompt as one batch per layer, then a decoded token: the guest's memory gets
    exactly HostModel's hidden states and logits, and nothing else changes."""
    tiny, tokens = models["tiny"], [1, 17, 5, 63, 2]
    kv = guest.call("realm_kv_create", tiny, 32)
    assert kv > 0
    before = guest.fill()
    guest.put(TOK_AT, np.array(tokens, dtype="<i4").tobytes())
    n = len(tokens) * TINY_EMBD
    assert guest.call("realm_forward_embedding", tiny, TOK_AT, len(tokens), HID_AT) == n
    np.testing.assert_array_equal(_f32_at(guest, HID_AT, n), tiny_host.embed(tokens))
    for il in range(2):  # in place: out == hidden
        assert guest.call("realm_forward_layer", tiny, il, HID_AT, n, 0, kv, HID_AT) == n
    assert guest.call("realm_forward_lm_head", tiny, HID_AT + 4 * (n - TINY_EMBD), TINY_EMBD, LOGITS_AT, 0) == 64
    assert guest.call("realm_forward_lm_head", tiny, HID_AT + 4 * (n - TINY_EMBD), TINY_EMBD, LOGITS_AT, 64) == 64
    guest.put(TOK_AT, np.array([9], dtype="<i4").tobytes())
    assert guest.call("realm_forward_embedding", tiny, TOK_AT, 1, HID_AT) == TINY_EMBD
    nxt = HID_AT + 4 * n  # layer 0 writes elsewhere, layer 1 works there in place
    assert guest.call("realm_forward_layer", tiny, 0, HID_AT, TINY_EMBD, 5, kv, nxt) == TINY_EMBD
    assert guest.call("realm_forward_layer", tiny, 1, nxt, TINY_EMBD, 5, kv, nxt) == TINY_EMBD
    assert guest.call("realm_forward_lm_head", tiny, HID_AT + 4 * n, TINY_EMBD, LOGITS_AT + 256, 64) == 64
    assert guest.call("realm_kv_truncate", kv, 1000) == 6

    after = guest.snapshot()
    cache = tiny_host.new_kv_cache(32)
    want = tiny_host.forward(tokens, cache, last_only=True)
    want_next = tiny_host.forward([9], cache)
    got = np.frombuffer(after[LOGITS_AT:LOGITS_AT + 512], dtype="<f4").reshape(2, 64)
    np.testing.assert_array_equal(got, np.concatenate([want, want_next]))
    # changed: the tokens we put, the hidden rows (prompt + 1 token), the two logit rows
    for lo, hi in [(0, TOK_AT), (TOK_AT + 4 * len(tokens), HID_AT),
                   (HID_AT + 4 * (n + TINY_EMBD), LOGITS_AT), (LOGITS_AT + 512, len(before))]:
        assert after[lo:hi] == before[lo:hi], (lo, hi)


def test_forward_layer_refusals(guest, models, tiny_host):
    tiny, n = models["tiny"], TINY_EMBD
    kv = guest.call("realm_kv_create", tiny, 8)
    other_model = guest.call("realm_kv_create", models["tiny2"], 8)
    before = guest.fill()
    cases = [
        ((tiny, 2, HID_AT, n, 0, kv, HID_AT), Err.BAD_ARGUMENT),  # layer out of range
        ((tiny, 0xFFFF_FFFF, HID_AT, n, 0, kv, HID_AT), Err.BAD_ARGUMENT),
        ((tiny, 0, HID_AT, n + 1, 0, kv, HID_AT), Err.BAD_ARGUMENT),  # not whole rows
        ((tiny, 0, HID_AT, n - 1, 0, kv, HID_AT), Err.BAD_ARGUMENT),
        ((tiny, 0, HID_AT, 0, 0, kv, HID_AT), Err.BAD_ARGUMENT),  # no rows
        ((tiny, 0, HID_AT + 2, n, 0, kv, HID_AT), Err.BAD_ARGUMENT),  # misaligned
        ((tiny, 0, HID_AT, n, 0, kv, HID_AT + 1), Err.BAD_ARGUMENT),
        ((tiny, 0, HID_AT, n, 0, other_model, HID_AT), Err.BAD_ARGUMENT),  # another model's cache
        ((tiny, 0, HID_AT, n, 8, kv, HID_AT), Err.CONTEXT_FULL),  # position past the KV size
        ((tiny, 0, HID_AT, 2 * n, 7, kv, HID_AT), Err.CONTEXT_FULL),
        ((tiny, 0, HID_AT, 9 * n, 0, kv, HID_AT), Err.CONTEXT_FULL),
        ((tiny, 0, HID_AT, n, 0xFFFF_FFFF, kv, HID_AT), Err.CONTEXT_FULL),
        ((tiny, 0, HID_AT, n, 1, kv, HID_AT), Err.BAD_ARGUMENT),  # a gap: nothing at position 0 yet
    ]
    for args, code in cases:
        assert guest.call("realm_forward_layer", *args) == code, args
    assert_only(before, guest.snapshot())
    assert guest.call("realm_kv_truncate", kv, 8) == 0  # nothing was stored

    # after 3 positions of layer 0 only: layer 1 has a gap at 1, layer 0 may rewrite 0..3
    assert guest.call("realm_forward_layer", tiny, 0, HID_AT, 3 * n, 0, kv, HID_AT) == 3 * n
    before = guest.snapshot()
    assert guest.call("realm_forward_layer", tiny, 1, HID_AT, n, 1, kv, HID_AT) == Err.BAD_ARGUMENT
    assert guest.call("realm_forward_layer", tiny, 0, HID_AT, n, 4, kv, HID_AT) == Err.BAD_ARGUMENT
    assert_only(before, guest.snapshot())
    assert guest.call("realm_kv_truncate", kv, 8) == 0  # layer 1 holds nothing yet
    assert guest.call("realm_forward_layer", tiny, 0, HID_AT, n, 3, kv, HID_AT) == n


def test_forward_embedding_and_lm_head_refusals(guest, models, tiny_host):
    tiny = models["tiny"]
    before = guest.fill()
    for tokens in ([64], [0, -1], [2**31 - 1], [5, 5, 1000]):
        guest.put(TOK_AT, np.array(tokens, dtype="<i4").tobytes())
        before = guest.snapshot()
        assert guest.call("realm_forward_embedding", tiny, TOK_AT, len(tokens), HID_AT) == Err.BAD_ARGUMENT
        assert_only(before, guest.snapshot())
    guest.put(TOK_AT, np.array([3, 4], dtype="<i4").tobytes())
    before = guest.snapshot()
    assert guest.call("realm_forward_embedding", tiny, TOK_AT, 0, HID_AT) == Err.BAD_ARGUMENT
    assert guest.call("realm_forward_embedding", tiny, TOK_AT + 1, 2, HID_AT) == Err.BAD_ARGUMENT
    assert guest.call("realm_forward_embedding", tiny, TOK_AT, 2, HID_AT + 2) == Err.BAD_ARGUMENT
    assert guest.call("realm_forward_embedding", tiny, TOK_AT, 2, PAGE - 4 * 2 * TINY_EMBD + 4) == Err.BAD_POINTER
    for args, code in [((tiny, HID_AT, TINY_EMBD + 1, LOGITS_AT, 64), Err.BAD_ARGUMENT),
                       ((tiny, HID_AT, 0, LOGITS_AT, 64), Err.BAD_ARGUMENT),
                       ((tiny, HID_AT + 1, TINY_EMBD, LOGITS_AT, 64), Err.BAD_ARGUMENT),
                       ((tiny, HID_AT, TINY_EMBD, LOGITS_AT + 3, 64), Err.BAD_ARGUMENT),
                       ((tiny, HID_AT, TINY_EMBD, LOGITS_AT, 63), Err.BUFFER_TOO_SMALL),
                       ((tiny, HID_AT, 2 * TINY_EMBD, LOGITS_AT, 64), Err.BUFFER_TOO_SMALL),
                       ((tiny, HID_AT, TINY_EMBD, PAGE - 4 * 63, 64), Err.BAD_POINTER)]:
        assert guest.call("realm_forward_lm_head", *args) == code, args
    assert_only(before, guest.snapshot())
    assert guest.call("realm_forward_lm_head", tiny, HID_AT, 3 * TINY_EMBD, LOGITS_AT, 0) == 3 * 64
    # the output may overlap the input: every row is normalized first
    guest.put(HID_AT, np.random.default_rng(1).standard_normal(TINY_EMBD).astype("<f4").tobytes())
    want = tiny_host.lm_head(np.frombuffer(guest.snapshot()[HID_AT:HID_AT + 4 * TINY_EMBD], dtype="<f4").copy())
    assert guest.call("realm_forward_lm_head", tiny, HID_AT, TINY_EMBD, HID_AT, 64) == 64
    np.testing.assert_array_equal(np.frombuffer(guest.snapshot()[HID_AT:HID_AT + 256], dtype="<f4"), want[0])


def test_realm_forward_equals_the_pieces(guest, models, tiny_host):
    """realm_forward -- embedding, every layer and the last token's logits in one call -- gives
    exactly HostModel's logits for a prompt in two chunks and a decoded token, and writes only
    the logits (the hidden rows stay in the host)."""
    tiny, tokens = models["tiny"], [1, 17, 5, 63, 2]
    kv = guest.call("realm_kv_create", tiny, 32)
    before = guest.fill()
    guest.put(TOK_AT, np.array([*tokens, 9], dtype="<i4").tobytes())
    before = guest.snapshot()
    assert guest.call("realm_forward", tiny, TOK_AT, 3, 0, kv, 0, 0) == 0  # a chunk: no logits
    assert_only(before, guest.snapshot())
    assert guest.call("realm_forward", tiny, TOK_AT + 12, 2, 3, kv, LOGITS_AT, 64) == 64
    assert guest.call("realm_forward", tiny, TOK_AT + 20, 1, 5, kv, LOGITS_AT + 256, 100) == 64
    after = guest.snapshot()
    assert_only(before, after, LOGITS_AT, 512)
    cache = tiny_host.new_kv_cache(32)
    want = np.concatenate([tiny_host.forward(tokens, cache, last_only=True), tiny_host.forward([9], cache)])
    np.testing.assert_array_equal(np.frombuffer(after[LOGITS_AT:LOGITS_AT + 512], dtype="<f4").reshape(2, 64), want)


def test_realm_forward_refusals(guest, models):
    tiny = models["tiny"]
    kv = guest.call("realm_kv_create", tiny, 8)
    other_model = guest.call("realm_kv_create", models["tiny2"], 8)
    guest.fill()
    guest.put(TOK_AT, np.array([3, 4, 64, 5], dtype="<i4").tobytes())
    before = guest.snapshot()
    cases = [
        ((0, TOK_AT, 1, 0, kv, LOGITS_AT, 64), Err.NO_MODEL),
        ((models["ints"], TOK_AT, 1, 0, kv, LOGITS_AT, 64), Err.UNSUPPORTED),
        ((tiny, TOK_AT, 1, 0, 0x7FFF_FFFF, LOGITS_AT, 64), Err.NO_KV_CACHE),
        ((tiny, PAGE - 4, 2, 0, kv, LOGITS_AT, 64), Err.BAD_POINTER),
        ((tiny, TOK_AT, 0x4000_0001, 0, kv, LOGITS_AT, 64), Err.BAD_POINTER),  # 4 * n wraps u32
        ((tiny, TOK_AT, 1, 0, kv, PAGE - 4 * 63, 64), Err.BAD_POINTER),
        ((tiny, TOK_AT, 1, 0, kv, 8, 0x4000_0001), Err.BAD_POINTER),
        ((tiny, TOK_AT, 1, 0, other_model, LOGITS_AT, 64), Err.BAD_ARGUMENT),
        ((tiny, TOK_AT + 2, 1, 0, kv, LOGITS_AT, 64), Err.BAD_ARGUMENT),  # misaligned
        ((tiny, TOK_AT, 1, 0, kv, LOGITS_AT + 2, 64), Err.BAD_ARGUMENT),
        ((tiny, TOK_AT, 0, 0, kv, LOGITS_AT, 64), Err.BAD_ARGUMENT),  # no tokens
        ((tiny, TOK_AT, 1, 0, kv, LOGITS_AT, 63), Err.BUFFER_TOO_SMALL),
        ((tiny, TOK_AT, 3, 0, kv, LOGITS_AT, 64), Err.BAD_ARGUMENT),  # token 64 is outside the vocabulary
        ((tiny, TOK_AT, 2, 7, kv, LOGITS_AT, 64), Err.CONTEXT_FULL),
        ((tiny, TOK_AT, 1, 0xFFFF_FFFF, kv, LOGITS_AT, 64), Err.CONTEXT_FULL),
        ((tiny, TOK_AT, 1, 1, kv, LOGITS_AT, 64), Err.BAD_ARGUMENT),  # a gap
    ]
    for args, code in cases:
        assert guest.call("realm_forward", *args) == code, args
    assert_only(before, guest.snapshot())
    assert guest.call("realm_kv_truncate", kv, 8) == 0  # nothing was stored


def test_forward_out_spans(guest, models):
    """Output buffers sized by the input (embedding, layer) are checked too."""
    tiny = models["tiny"]
    kv = guest.call("realm_kv_create", tiny, 8)
    guest.put(TOK_AT, np.array([3], dtype="<i4").tobytes())
    before = guest.fill()
    guest.put(TOK_AT, np.array([3], dtype="<i4").tobytes())
    before = guest.snapshot()
    for out in (PAGE - 4 * TINY_EMBD + 4, PAGE, 0xFFFF_FFFC, 0x8000_0000):
        assert guest.call("realm_forward_embedding", tiny, TOK_AT, 1, out) == Err.BAD_POINTER
        assert guest.call("realm_forward_layer", tiny, 0, HID_AT, TINY_EMBD, 0, kv, out) == Err.BAD_POINTER
    assert_only(before, guest.snapshot())


def test_unsupported_models_answer_unsupported(guest, models):
    before = guest.fill()
    for name, args in [("realm_forward_embedding", (TOK_AT, 1, HID_AT)), ("realm_kv_create", (8,)),
                       ("realm_forward_layer", (0, HID_AT, TINY_EMBD, 0, 1, HID_AT)),
                       ("realm_forward_lm_head", (HID_AT, TINY_EMBD, LOGITS_AT, 64))]:
        assert guest.call(name, models["ints"], *args) == Err.UNSUPPORTED, name
    assert_only(before, guest.snapshot())


def test_kv_create_limits(models):
    tiny = models["tiny"]
    g = Hostile(models["store"], shared=[tiny], limits=Limits(kv_caches=2))
    assert g.call("realm_kv_create", tiny, 0) == Err.BAD_ARGUMENT
    assert g.call("realm_kv_create", tiny, 257) == Err.BAD_ARGUMENT  # the tiny model's context is 256
    assert g.call("realm_kv_create", tiny, 0xFFFF_FFFF) == Err.BAD_ARGUMENT
    a, b = g.call("realm_kv_create", tiny, 256), g.call("realm_kv_create", tiny, 1)
    assert 0 < a < b
    assert g.call("realm_kv_create", tiny, 1) == Err.LIMIT  # count
    assert g.call("realm_kv_free", a) == abi.OK
    assert g.call("realm_kv_free", a) == Err.NO_KV_CACHE
    assert g.call("realm_kv_create", tiny, 1) > b  # room again; ids are not reused
    g.host.close()
    assert g.call("realm_kv_truncate", b, 0) == Err.NO_KV_CACHE  # close frees them
    assert g.call("realm_kv_create", tiny, 1) == Err.NO_MODEL

    one = 2 * 2 * 16 * 128 * 2 + 2 * 8  # 16 positions: K and V, 2 layers, 128 values, f16 + bookkeeping
    g = Hostile(models["store"], shared=[tiny], limits=Limits(kv_bytes=one + 100))
    assert g.call("realm_kv_create", tiny, 16) > 0
    assert g.call("realm_kv_create", tiny, 1) == Err.LIMIT  # bytes
    g.host.close()


def test_removed_model_stops_forwarding(models):
    """A model the guest stored and removed answers NO_MODEL, and its KV caches -- which would keep
    its weights alive -- go with it, their bytes back in the quota and the budget."""
    store = models["store"]
    before = store.budget.used  # the prefix caches of the other tests' models
    g = Hostile(store)
    data = store.get(models["tiny"]).path.read_bytes()
    g.exports["grow"](g.wasm, len(data) // PAGE + 2)
    g.put(PAGE, data)
    mine = g.call("realm_store_model", PAGE, len(data))
    assert mine > 0
    kv = g.call("realm_kv_create", mine, 8)
    assert kv > 0
    g.put(TOK_AT, np.array([3], dtype="<i4").tobytes())
    assert g.call("realm_forward_embedding", mine, TOK_AT, 1, HID_AT) == TINY_EMBD
    assert g.host.kv_bytes > 0 and g.host.stored_bytes > len(data)
    budget = store.budget.used
    assert g.call("realm_remove_model", mine) == abi.OK
    assert g.host.kv_bytes == 0 and g.host.stored_bytes == 0
    assert store.budget.used == before and budget > before
    assert g.call("realm_forward_embedding", mine, TOK_AT, 1, HID_AT) == Err.NO_MODEL
    assert g.call("realm_forward_layer", mine, 0, HID_AT, TINY_EMBD, 0, kv, HID_AT) == Err.NO_MODEL
    assert g.call("realm_kv_free", kv) == Err.NO_KV_CACHE
    g.host.close()


# -- realm_emit_text ------------------------------------------------------------------------------

def test_emit_text(guest):
    """Text goes to the host's sink as str; a true answer from the sink is REALM_EMIT_STOP; bad
    spans, over-long and non-UTF-8 text are refused without calling the sink."""
    got: list[str] = []
    text = "héllo 😀 wörld".encode()
    assert guest.exports["grow"](guest.wasm, 1) == 1  # room for more than REALM_TEXT_MAX bytes
    guest.fill()
    guest.put(OUT_AT, text)
    before = guest.snapshot()
    assert guest.call("realm_emit_text", OUT_AT, len(text)) == abi.OK  # no sink: dropped
    guest.host.text_sink = lambda piece: got.append(piece) or piece == "stop"
    assert guest.call("realm_emit_text", OUT_AT, len(text)) == abi.OK
    assert guest.call("realm_emit_text", OUT_AT, 0) == abi.OK
    guest.put(NAME_AT, b"stop")
    assert guest.call("realm_emit_text", NAME_AT, 4) == abi.EMIT_STOP
    assert got == ["héllo 😀 wörld", "", "stop"]
    guest.put(NAME_AT, before[NAME_AT:NAME_AT + 4])
    assert guest.call("realm_emit_text", 0, abi.TEXT_MAX + 1) == Err.BAD_ARGUMENT
    for bad in [*NOT_UTF8, "😀".encode()[:3]]:
        guest.put(OUT_AT, bad)
        assert guest.call("realm_emit_text", OUT_AT, len(bad)) == Err.BAD_UTF8, bad
    assert len(got) == 3
    guest.put(OUT_AT, before[OUT_AT:OUT_AT + 64])
    assert_only(before, guest.snapshot())


# -- the C trampoline (realm/_imports.pxi) ----------------------------------------------------------

def test_an_export_named_memory_that_is_no_memory_has_no_valid_pointers(models):
    """The trampoline finds the caller's memory by kind as well as name: a function exported as
    "memory" gives the import no memory at all."""
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    host = add_realm_imports(linker, models["store"], shared=[models["tiny"]])
    module = wasmtime.Module(engine, f"""(module {imports('realm_get_metadata')} (memory 1)
      (func (export "memory") (result i32) (i32.const 0))
      (func (export "meta") (param i64 i32 i32) (result i32)
        (call $realm_get_metadata (local.get 0) (local.get 1) (local.get 2))))""")
    wasm = wasmtime.Store(engine)
    meta = linker.instantiate(wasm, module).exports(wasm)["meta"]
    assert meta(wasm, models["tiny"], 0, 0) > 0  # a size query names no span
    assert meta(wasm, models["tiny"], 0, 16) == Err.BAD_POINTER
    host.close()


def test_an_exception_that_is_no_error_reaches_the_guests_caller(models, monkeypatch):
    """A KeyboardInterrupt (or SystemExit) raised in an import traps the guest and is raised
    again, as itself, by the call into the guest (as wasmtime-py's own trampoline does); the
    guest's store works on."""
    interrupts = [KeyboardInterrupt("Ctrl-C in an import")]
    real_log = host_module._IMPORTS["realm_log"]

    def interrupted(self, mem, level, ptr, length):
        if interrupts:
            raise interrupts.pop()
        return real_log(self, mem, level, ptr, length)

    monkeypatch.setitem(host_module._IMPORTS, "realm_log", interrupted)
    g = Hostile(models["store"])
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C in an import"):
        g.call("realm_log", abi.LogLevel.INFO, 0, 0)
    assert g.call("realm_log", abi.LogLevel.INFO, 0, 0) == abi.OK
    assert g.call("realm_get_metadata", models["tiny"], 0, 0) == Err.NO_MODEL
    g.host.close()


def test_a_dropped_linker_and_store_let_go_of_the_host(models):
    """Each definition holds its import (and so the RealmHost) until Wasmtime drops it: once the
    linker and the store that instantiated from it are gone, the host can be collected."""
    g = Hostile(models["store"], shared=[models["tiny"]])
    assert g.call("realm_get_metadata", models["tiny"], 0, 0) > 0
    g.host.close()
    ref = weakref.ref(g.host)
    del g
    gc.collect()
    assert ref() is None
