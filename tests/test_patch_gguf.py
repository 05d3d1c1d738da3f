"""realm.patch_gguf(): gguf-py's dequantize through realm, with gguf-py's results and errors,
undone exactly, counted when nested."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import realm
from realm import GGMLType
from conftest import assert_same_bits, require

gguf = require("gguf")
import gguf.quants as gq  # noqa: E402

GQT = gguf.GGMLQuantizationType
ORIGINAL = gq.dequantize
# Types realm has no kernel for, which gguf-py dequantizes: they must reach gguf-py unchanged.
# types gguf-py dequantizes and realm does not (NVFP4 in gguf-py 0.19): the patch hands them back
FALLBACK = [t for t in GQT if t.name in ("NVFP4", "IQ4_NL", "TQ2_0", "IQ2_XXS")
            and int(t) not in {int(s) for s in realm.SUPPORTED_TYPES}]
assert FALLBACK, "no type left to test the fallback with"
SHAPES = [(3,), (2, 3), (2, 2, 3)]  # blocks per row in the last axis


@pytest.fixture(autouse=True)
def _gguf_restored():
    """Every test starts and ends with gguf-py's own functions in place."""
    assert gq.dequantize is ORIGINAL and gguf.dequantize is ORIGINAL
    yield
    leaked = gq.dequantize is not ORIGINAL or gguf.dequantize is not ORIGINAL
    gq.dequantize = gguf.dequantize = ORIGINAL
    assert not leaked, "a test left gguf-py patched"


@pytest.fixture
def realm_calls(monkeypatch):
    """Counts the calls the patch makes to realm.dequantize."""
    calls = []
    real = realm.quants.dequantize

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(realm.quants, "dequantize", spy)
    return calls


def type_size(qtype) -> int:
    return gguf.GGML_QUANT_SIZES[GQT(int(qtype))][1]


def random_blocks(qtype, shape, seed=0) -> np.ndarray:
    """Bytes of shape[:-1] rows of shape[-1] blocks: any bit pattern is a legal block."""
    rng = np.random.default_rng(seed + int(qtype))
    return rng.integers(0, 256, (*shape[:-1], shape[-1] * type_size(qtype)), dtype=np.uint8)


def outcome(fn, data, qtype):
    """fn's result, or the type and message of what it raised."""
    with np.errstate(all="ignore"):  # random scales overflow in gguf-py's NumPy code
        try:
            return fn(data, qtype)
        except Exception as exc:  # compared, not hidden
            return (type(exc), str(exc))


def assert_same_outcome(a, b) -> None:
    if isinstance(a, tuple) or isinstance(b, tuple):
        assert a == b
        return
    assert type(a) is type(b)  # GGUFReader's F16 and F32 tensors come back as np.memmap
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert_same_bits(a, b)


def patched_and_not(data, qtype, fn=lambda d, q: gq.dequantize(d, q)):
    expected = outcome(fn, data, qtype)
    with realm.patch_gguf():
        got = outcome(fn, data, qtype)
    return got, expected


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("qtype", [*realm.SUPPORTED_TYPES, *FALLBACK], ids=lambda t: t.name)
def test_same_arrays_with_and_without_the_patch(qtype, shape, realm_calls):
    data = random_blocks(qtype, shape)
    got, expected = patched_and_not(data, GQT(int(qtype)))
    assert_same_outcome(got, expected)
    # realm ran exactly for the types both implement; F32 (a view in gguf-py), Q8_K (not in
    # gguf-py) and realm's missing types stay with gguf-py
    routed = int(qtype) in {int(t) for t in realm.SUPPORTED_TYPES} and qtype not in (GGMLType.F32, GGMLType.Q8_K)
    assert len(realm_calls) == int(routed)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q6_K, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_both_bindings_are_patched(qtype, realm_calls):
    data = random_blocks(qtype, (4, 8))
    with realm.patch_gguf():
        assert gguf.dequantize is gq.dequantize is not ORIGINAL
        from gguf import dequantize  # how transformers' GGUF loader binds it, at call time

        got = outcome(lambda d, q: dequantize(d, q), data, GQT(int(qtype)))
        got_int = outcome(lambda d, q: gq.dequantize(d, q), data, int(qtype))  # an int qtype too
    assert len(realm_calls) == 2
    expected = outcome(ORIGINAL, data, GQT(int(qtype)))
    assert_same_outcome(got, expected)
    assert_same_outcome(got_int, expected)


def test_large_tensor_goes_through_realm(realm_calls):
    data = random_blocks(GGMLType.Q4_K, (256, 16))  # 1M elements
    got, expected = patched_and_not(data, GQT.Q4_K)
    assert_same_outcome(got, expected)
    assert realm_calls == [GGMLType.Q4_K]


def _misaligned(qtype, shape):
    raw = random_blocks(qtype, shape)
    buf = np.empty(raw.size + 1, dtype=np.uint8)[1:].reshape(raw.shape)
    buf[...] = raw
    return buf


# Inputs gguf-py takes that realm alone would refuse or read differently, and ones gguf-py refuses.
EDGE_INPUTS = {
    "non-contiguous rows": lambda q: random_blocks(q, (6, 2))[::2],
    "fortran order": lambda q: np.asfortranarray(random_blocks(q, (3, 2))),
    "misaligned": lambda q: _misaligned(q, (3, 2)),
    "int8 bytes": lambda q: random_blocks(q, (2, 2)).view(np.int8),
    "read-only": lambda q: _read_only(random_blocks(q, (2, 2))),
    "empty rows": lambda q: random_blocks(q, (0, 2)),
    "empty last axis": lambda q: random_blocks(q, (2, 0)),
    "0-d": lambda q: np.array(7, dtype=np.uint8),
    "not whole blocks": lambda q: random_blocks(q, (2, 2))[:, :-1],
    "uint16 items": lambda q: random_blocks(q, (2, 2)).view(np.uint16),
    "float16 items": lambda q: random_blocks(q, (2, 2)).view(np.float16),
    "transposed float16": lambda q: np.ascontiguousarray(random_blocks(q, (2, 4)).view(np.float16)).T,
    "big-endian float16": lambda q: random_blocks(q, (2, 2)).view(">f2"),
    "ndarray subclass": lambda q: random_blocks(q, (2, 2)).view(_Sub),
    "bytes": lambda q: random_blocks(q, (2,)).tobytes(),
    "list": lambda q: [1, 2, 3, 4],
}


class _Sub(np.ndarray):
    pass


#: Inputs realm takes for the block types (after a copy for the first three), as gguf-py does.
ROUTED_EDGES = {"non-contiguous rows", "fortran order", "misaligned", "int8 bytes", "read-only", "ndarray subclass"}


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("edge", EDGE_INPUTS)
@pytest.mark.parametrize("qtype", [GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_K], ids=lambda t: t.name)
def test_edge_inputs_give_gguf_pys_outcome(qtype, edge, realm_calls):
    data = EDGE_INPUTS[edge](qtype)
    got, expected = patched_and_not(data, GQT(int(qtype)))
    assert_same_outcome(got, expected)
    if qtype != GGMLType.F16:
        assert len(realm_calls) == (edge in ROUTED_EDGES)


@pytest.mark.parametrize("qtype", ["bad", 10**6, None, 2.0, True], ids=repr)
def test_other_qtypes_give_gguf_pys_outcome(qtype, realm_calls):
    got, expected = patched_and_not(random_blocks(GGMLType.Q4_0, (2,)), qtype)
    assert_same_outcome(got, expected)  # gguf-py raises for most, takes 2.0 as Q4_0, True as F16
    assert realm_calls == []


def test_lazy_tensors_go_to_gguf_py(realm_calls):
    from gguf.lazy import LazyNumpyTensor

    data = random_blocks(GGMLType.Q8_0, (2, 2))
    with realm.patch_gguf():
        lazy = gq.dequantize(LazyNumpyTensor.from_eager(data), GQT.Q8_0)
        got = LazyNumpyTensor.to_eager(lazy)
    assert realm_calls == []
    assert_same_outcome(got, ORIGINAL(data, GQT.Q8_0))


def test_undone_on_exit_and_on_exception():
    with realm.patch_gguf() as p:
        assert p.active and gq.dequantize is not ORIGINAL
    assert not p.active
    assert gq.dequantize is ORIGINAL and gguf.dequantize is ORIGINAL

    with pytest.raises(KeyError):
        with realm.patch_gguf():
            assert gguf.dequantize is not ORIGINAL
            raise KeyError("boom")
    assert gq.dequantize is ORIGINAL and gguf.dequantize is ORIGINAL


def test_plain_call_and_undo():
    p = realm.patch_gguf()
    try:
        assert gq.dequantize is not ORIGINAL and gq.dequantize.__wrapped__ is ORIGINAL
        assert gq.dequantize.__name__ == ORIGINAL.__name__
    finally:
        p.undo()
    assert gq.dequantize is ORIGINAL and gguf.dequantize is ORIGINAL
    p.undo()  # a second undo of the same hold does nothing
    assert "undone" in repr(p)


def test_patches_are_counted(realm_calls):
    data = random_blocks(GGMLType.Q8_0, (2,))
    outer = realm.patch_gguf()
    wrapper = gq.dequantize
    with realm.patch_gguf():
        assert gq.dequantize is wrapper  # no wrapper around the wrapper
        inner = realm.patch_gguf()
        inner.undo()
        inner.undo()  # counted once
        assert gq.dequantize is wrapper
    assert gq.dequantize is wrapper  # the outer hold keeps it
    gq.dequantize(data, GQT.Q8_0)
    assert len(realm_calls) == 1
    outer.undo()
    assert gq.dequantize is ORIGINAL and gguf.dequantize is ORIGINAL
    # and again from scratch
    with realm.patch_gguf():
        gq.dequantize(data, GQT.Q8_0)
    assert len(realm_calls) == 2


def test_a_binding_replaced_meanwhile_is_left_alone(realm_calls):
    data = random_blocks(GGMLType.Q8_0, (2,))
    p = realm.patch_gguf()
    ours = gguf.dequantize

    def theirs(d, q):  # another library wrapping what it found
        return ours(d, q)

    gguf.dequantize = theirs
    p.undo()
    assert gq.dequantize is ORIGINAL and gguf.dequantize is theirs
    assert_same_outcome(theirs(data, GQT.Q8_0), ORIGINAL(data, GQT.Q8_0))
    assert realm_calls == []  # realm's wrapper passes straight through once undone
    gguf.dequantize = ORIGINAL


def test_gguf_reader_tensors(tmp_path, realm_calls):
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    tensors = {}
    for i, qtype in enumerate([*realm.SUPPORTED_TYPES, *FALLBACK]):
        if qtype == GGMLType.Q8_K:
            continue  # gguf-py writes no Q8_K (nor does llama.cpp put it in files)
        shape = (2, 3) if i % 2 else (4,)
        if qtype == GGMLType.F32:
            arr = np.random.default_rng(i).standard_normal((2, 64)).astype(np.float32)
            writer.add_tensor(f"t{i}", arr)
        elif qtype == GGMLType.F16:
            arr = np.random.default_rng(i).standard_normal((3, 64)).astype(np.float16)
            writer.add_tensor(f"t{i}", arr)
        else:
            arr = random_blocks(qtype, shape, seed=i)
            writer.add_tensor(f"t{i}", arr, raw_dtype=GQT(int(qtype)))
        tensors[f"t{i}"] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(str(path))
    assert sorted(t.name for t in reader.tensors) == sorted(tensors)
    expected = {t.name: outcome(gq.dequantize, t.data, t.tensor_type) for t in reader.tensors}
    with realm.patch_gguf():
        got = {t.name: outcome(lambda d, q: gq.dequantize(d, q), t.data, t.tensor_type) for t in reader.tensors}
    for name in tensors:
        assert_same_outcome(got[name], expected[name])
    routed = [t for t in tensors.values() if t in realm.SUPPORTED_TYPES and t not in (GGMLType.F32, GGMLType.Q8_K)]
    assert sorted(realm_calls) == sorted(routed)


def test_missing_gguf_is_a_realm_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    monkeypatch.setitem(sys.modules, "gguf.quants", None)
    with pytest.raises(realm.MissingDependencyError, match="pip install gguf") as info:
        realm.patch_gguf()
    assert isinstance(info.value, realm.RealmError) and isinstance(info.value, ImportError)


def test_realm_does_not_import_gguf():
    import subprocess

    code = "import sys, realm; assert 'gguf' not in sys.modules, 'realm imported gguf'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
