"""A hostile guest, written in WAT here, calls every realm_* import with bad ids,
out-of-bounds and u32-overflowing pointers, non-UTF-8 names and too-small buffers.
Each call must return its documented code, write nothing outside the buffer it
names (nothing at all on failure), and leave the host working."""

from __future__ import annotations

import logging
import struct
import numpy as np
import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import require
from gguf_helpers import RawTensor, build_gguf, tensor_bytes
from realm import abi
from realm.abi import Err
from realm.cache import LayerCache
from realm.host import add_realm_imports
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT
from realm.store import ModelStore

PAGE = 65536
BAD_IDS = [0, -1, 2**63 - 1, -(2**63), 10**12]
# (ptr, len) pairs that leave a one-page memory, several wrapping around u32
BAD_SPANS = [(PAGE, 1), (PAGE - 1, 2), (0xFFFF_FFF0, 0x20), (16, 0xFFFF_FFFF),
             (0xFFFF_FFFF, 1), (0x8000_0000, 0), (0xFFFF_FFFF, 0xFFFF_FFFF)]
NOT_UTF8 = [b"\xff", b"blk.\xc0\xaf", b"\xed\xa0\x80", b"tail\xe2\x82", b"\xf4\x90\x80\x80", b"\x80abc"]


def _hostile_wat(export_memory: bool = True) -> str:
    """Imports every realm_* function and re-exports each as call_<name>, so the
    test drives the guest side of every call directly."""
    lines = ["(module"]
    for name, sig in abi.IMPORTS.items():
        lines.append(f'  (import "env" "{name}" (func ${name} (param {" ".join(sig.params)})'
                     f' (result {" ".join(sig.results)})))')
    lines.append('  (memory (export "memory") 1)' if export_memory else "  (memory 1)")
    for name, sig in abi.IMPORTS.items():
        gets = " ".join(f"(local.get {i})" for i in range(len(sig.params)))
        lines.append(f'  (func (export "call_{name}") (param {" ".join(sig.params)})'
                     f' (result {" ".join(sig.results)}) (call ${name} {gets}))')
    lines.append('  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))')
    lines.append(")")
    return "\n".join(lines)


class Hostile:
    """One instance of the hostile module with its own RealmHost."""

    def __init__(self, store: ModelStore, *, export_memory: bool = True, **host_options):
        engine = wasmtime.Engine()
        self.wasm = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        self.host = add_realm_imports(linker, store, **host_options)
        module = wasmtime.Module(engine, _hostile_wat(export_memory))
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
    """A store holding: a tiny llama (to share), another tenant's model, a model with an
    I32 tensor (no f32 conversion) and one with a 2 GiB-as-f32 tensor (a sparse file)."""
    require("gguf")
    from gguf_helpers import write_tiny_llama

    tmp = tmp_path_factory.mktemp("hostile")
    store = ModelStore(LayerCache(64 << 20))
    tiny = store.load(write_tiny_llama(tmp / "tiny.gguf"))
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
    yield {"store": store, "tiny": tiny, "other": other, "ints": ints, "huge": huge}
    store.close()


@pytest.fixture
def guest(models):
    g = Hostile(models["store"], shared=[models["tiny"], models["ints"], models["huge"]])
    yield g
    g.host.close()


def _expected_f32(models, name: str) -> bytes:
    return models["store"].get(models["tiny"]).tensors[name].dequantize().astype("<f4").tobytes()


NAME_AT, OUT_AT = 256, 4096


def _tensor_args(models, name: bytes = b"output_norm.weight", *, model=None, out_len=PAGE - OUT_AT):
    return (models["tiny"] if model is None else model, NAME_AT, len(name), OUT_AT, out_len)


# -- every import: unknown ids -------------------------------------------------------------

MODEL_CALLS = {
    "realm_get_tensor": lambda mid: (mid, NAME_AT, 18, OUT_AT, 1024),
    "realm_get_model_info": lambda mid: (mid, 0, 8),
    "realm_remove_model": lambda mid: (mid,),
    "realm_get_metadata": lambda mid: (mid, OUT_AT, 1024),
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
}


def test_every_import_is_attacked_here():
    """A new import must bring its hostile cases to this file."""
    assert set(MODEL_CALLS) | set(SPAN_CALLS) == set(abi.IMPORTS)


@pytest.mark.parametrize("name,which", [(n, i) for n, b in SPAN_CALLS.items() for i in range(len(b))])
def test_out_of_bounds_spans(guest, models, name, which):
    guest.fill()
    guest.put(NAME_AT, b"output_norm.weight")
    before = guest.snapshot()
    for ptr, length in BAD_SPANS:
        args = SPAN_CALLS[name][which](ptr, length, models)
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
    g = Hostile(models["store"], max_stored_models=2, max_stored_bytes=10 * len(raw))
    g.put(OUT_AT, raw)
    first = g.call("realm_store_model", OUT_AT, len(raw))
    assert g.call("realm_store_model", OUT_AT, len(raw)) > first
    assert g.call("realm_store_model", OUT_AT, len(raw)) == Err.LIMIT  # models
    assert g.call("realm_remove_model", first) == abi.OK
    assert g.call("realm_store_model", OUT_AT, len(raw)) > 0  # room again
    g.host.close()

    g = Hostile(models["store"], max_stored_bytes=len(raw) + 10)
    g.put(OUT_AT, raw)
    assert g.call("realm_store_model", OUT_AT, len(raw)) > 0
    assert g.call("realm_store_model", OUT_AT, len(raw)) == Err.LIMIT  # bytes
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
