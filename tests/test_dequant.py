"""realm.dequantize against gguf-py and llama.cpp, bit for bit, and its API contract."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import realm
from realm import GGMLType, _native
from conftest import assert_same_bits, ggml, require

gguf = require("gguf")
from gguf import quants as gq  # noqa: E402

# gguf-py's NumPy port of llama.cpp's reference dequantizers covers all but Q8_K.
GGUF_PY_TYPES = [t for t in realm.SUPPORTED_TYPES if t.name in gguf.GGMLQuantizationType.__members__ and t != GGMLType.Q8_K]
QUANTIZED = [t for t in realm.SUPPORTED_TYPES if realm.quant_info(t).block_size > 1]
# The formats of non-linear code books and grids, the ternary ones and MXFP4.
IQ_NAMES = ("IQ4_NL", "IQ4_XS", "MXFP4", "TQ2_0", "TQ1_0", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ3_S", "IQ2_S", "IQ1_S", "IQ1_M")
IQ_TYPES = [GGMLType[n] for n in IQ_NAMES if GGMLType[n] in realm.SUPPORTED_TYPES]


def assert_same_floats(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-for-bit equality with expected as float32, except that any NaN equals any NaN."""
    assert actual.dtype == np.float32
    assert_same_bits(actual, np.asarray(expected, dtype=np.float32))


def gguf_py_dequantize(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    with np.errstate(all="ignore"):  # random scales overflow to inf/NaN, as in llama.cpp
        return gq.dequantize(raw, gguf.GGMLQuantizationType(int(qtype)))


def blocks(qtype: GGMLType, max_blocks: int = 6) -> st.SearchStrategy[np.ndarray]:
    """Arbitrary bytes shaped (rows, whole blocks): every bit pattern is a legal block."""
    info = realm.quant_info(qtype)
    return st.tuples(st.integers(1, 3), st.integers(1, max_blocks)).flatmap(
        lambda rb: st.binary(min_size=rb[0] * rb[1] * info.type_size, max_size=rb[0] * rb[1] * info.type_size).map(
            lambda b: np.frombuffer(b, dtype=np.uint8).reshape(rb[0], rb[1] * info.type_size)
        )
    )


def floats_for(qtype: GGMLType) -> st.SearchStrategy[np.ndarray]:
    """Float rows of whole blocks, with the scales and outliers quantizers meet in models."""
    bs = max(realm.quant_info(qtype).block_size, 32)
    return st.tuples(st.integers(1, 4), st.floats(1e-4, 1e3), st.integers(0, 2**32 - 1)).map(
        lambda args: _gaussian_rows(args[0] * bs, args[1], args[2])
    )


def quantize(x: np.ndarray, qtype: GGMLType, data) -> np.ndarray:
    """llama.cpp's blocks of the rows x; with a drawn importance matrix where its quantizer
    needs one (IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) or may take one (the other IQ types)."""
    imatrix = None
    if ggml().requires_imatrix(qtype) or (qtype.name.startswith("IQ") and data.draw(st.booleans(), label="imatrix")):
        seed = data.draw(st.integers(0, 2**32 - 1), label="imatrix seed")
        imatrix = np.random.default_rng(seed).uniform(0.01, 10.0, x.shape[-1]).astype(np.float32)
    return ggml().quantize(x, qtype, imatrix)


def _gaussian_rows(n: int, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, n)).astype(np.float32) * np.float32(scale)
    x[0, rng.integers(0, n)] *= 8  # an outlier per row, as attention weights have
    return x


@pytest.mark.parametrize("qtype", GGUF_PY_TYPES, ids=lambda t: t.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_arbitrary_blocks_match_gguf_py(qtype, data):
    raw = data.draw(blocks(qtype))
    assert_same_floats(realm.dequantize(raw, qtype), gguf_py_dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", GGUF_PY_TYPES, ids=lambda t: t.name)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_quantized_floats_match_gguf_py(qtype, data):
    x = data.draw(floats_for(qtype))
    raw = quantize(x, qtype, data).reshape(x.shape[0], -1)
    assert_same_floats(realm.dequantize(raw, qtype), gguf_py_dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", realm.SUPPORTED_TYPES, ids=lambda t: t.name)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_llama_cpp_blocks_match_llama_cpp(qtype, data):
    x = data.draw(floats_for(qtype))
    raw = quantize(x, qtype, data)
    assert_same_floats(realm.dequantize(raw, qtype), ggml().to_float(raw, qtype))


@pytest.mark.parametrize("qtype", realm.SUPPORTED_TYPES, ids=lambda t: t.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_arbitrary_blocks_match_llama_cpp(qtype, data):
    raw = data.draw(blocks(qtype))
    assert_same_floats(realm.dequantize(raw, qtype).reshape(-1), ggml().to_float(raw, qtype))


@pytest.mark.parametrize("qtype", [GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_every_16_bit_pattern(qtype):
    raw = np.arange(1 << 16, dtype=np.uint16).view(np.uint8)
    expected = ggml().to_float(raw, qtype)
    for isa in available_isas():
        out = np.empty(1 << 16, dtype=np.float32)
        _native.dequantize_into(raw, int(qtype), out, 1, isa)
        assert_same_floats(out, expected)


def available_isas() -> list[str]:
    return sorted({"scalar", _native.best_isa()})


@pytest.mark.parametrize("qtype", IQ_TYPES, ids=lambda t: t.name)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_iq_formats_on_every_path_match_llama_cpp(qtype, data):
    """llama.cpp's own blocks of drawn rows, or arbitrary bytes (every bit pattern is a block
    of these formats: the grid indices cover their grids), on the scalar path and the CPU's
    SIMD path, on one thread and on all."""
    if data.draw(st.booleans(), label="arbitrary bytes"):
        raw = data.draw(blocks(qtype)).reshape(-1)
    else:
        raw = quantize(data.draw(floats_for(qtype)), qtype, data)
    expected = ggml().to_float(raw, qtype)
    for isa in available_isas():
        for threads in (1, 0):
            out = np.empty_like(expected)
            _native.dequantize_into(raw, int(qtype), out, threads, isa)
            assert_same_floats(out, expected)


@pytest.mark.parametrize("qtype", IQ_TYPES, ids=lambda t: t.name)
def test_iq_formats_every_block_scale_matches_llama_cpp(qtype):
    """Every block scale a kernel converts: all 65536 f16 patterns (NaN, inf, subnormals)
    of the f16-scaled formats, all 256 E8M0 exponents of MXFP4, over random payloads."""
    info = realm.quant_info(qtype)
    rng = np.random.default_rng(int(qtype))
    if qtype == GGMLType.MXFP4:
        raw = rng.integers(0, 256, (256, info.type_size), dtype=np.uint8)
        raw[:, 0] = np.arange(256)
    else:
        raw = rng.integers(0, 256, (1 << 16, info.type_size), dtype=np.uint8)
        scale = np.arange(1 << 16, dtype=np.uint16)
        if qtype == GGMLType.IQ1_M:  # the f16's nibble k is the high nibble of scale byte 2k+1
            for k in range(4):
                b = info.type_size - 8 + 2 * k + 1
                raw[:, b] = (raw[:, b] & 0x0F) | ((scale >> (4 * k)) & 0x0F).astype(np.uint8) << 4
        else:
            at = info.type_size - 2 if qtype.name.startswith("TQ") else 0  # the TQ formats end with d
            raw[:, at:at + 2] = scale.view(np.uint8).reshape(-1, 2)
    flat = raw.reshape(-1)
    expected = ggml().to_float(flat, qtype)
    for isa in available_isas():
        out = np.empty_like(expected)
        _native.dequantize_into(flat, int(qtype), out, 1, isa)
        assert_same_floats(out, expected)


@pytest.mark.parametrize("qtype", realm.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_simd_path_equals_scalar_path(qtype):
    best = _native.best_isa()
    if best == "scalar":
        pytest.skip("this CPU has no SIMD path")
    info = realm.quant_info(qtype)
    rng = np.random.default_rng(int(qtype))
    # 1001 blocks: odd counts exercise the tails of the 16-element F16/BF16 loops
    raw = rng.integers(0, 256, 1001 * info.type_size, dtype=np.uint8)
    outs = {}
    for isa in ("scalar", best):
        outs[isa] = np.empty(1001 * info.block_size, dtype=np.float32)
        _native.dequantize_into(raw, int(qtype), outs[isa], 1, isa)
    assert_same_floats(outs[best], outs["scalar"])


@pytest.mark.parametrize("qtype", realm.SUPPORTED_TYPES, ids=lambda t: t.name)
def test_thread_count_does_not_change_results(qtype):
    info = realm.quant_info(qtype)
    n_blocks = (1 << 19) // info.block_size + 3  # above the parallel threshold, uneven split
    raw = np.random.default_rng(7).integers(0, 256, n_blocks * info.type_size, dtype=np.uint8)
    one = realm.dequantize(raw, qtype, threads=1)
    for threads in (2, 7):
        assert_same_floats(realm.dequantize(raw, qtype, threads=threads), one)
    assert_same_floats(realm.dequantize(raw, qtype), one)


def _float_reference(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """The bits NumPy gives: F32 as stored, F16 widened (exact; NaNs made quiet, as x86's
    conversion and so ggml's make them, where NumPy keeps them signalling), BF16 the 16 bits
    shifted up."""
    if qtype == GGMLType.F32:
        return raw.view(np.uint32)
    if qtype == GGMLType.F16:
        bits = raw.view(np.float16).astype(np.float32).view(np.uint32)
        nan = ((bits & 0x7F800000) == 0x7F800000) & ((bits & 0x7FFFFF) != 0)
        return np.where(nan, bits | 0x400000, bits)
    return raw.view(np.uint16).astype(np.uint32) << 16


@pytest.mark.parametrize("qtype", [GGMLType.F32, GGMLType.F16, GGMLType.BF16])
def test_large_float_outputs_streamed_are_exact(qtype):
    """Outputs of 32 MiB or more of the float formats are written with streaming stores
    (csrc/dequant_avx2.c, traits' to_float_stream): every bit pattern (NaN payloads included)
    arrives, with heads and tails that are not 32-byte aligned, on one thread and on several."""
    size = realm.quant_info(qtype).type_size
    n = (32 << 20) // 4 + 13
    raw = np.random.default_rng(5).integers(0, 256, size * n, dtype=np.uint8)
    expected = _float_reference(raw, qtype)
    for threads in (1, 2, 3):
        assert np.array_equal(realm.dequantize(raw, qtype, threads=threads).view(np.uint32), expected)
    backing = np.empty(n + 3, dtype=np.float32)
    out = backing[3:]  # 12 bytes in: never 32-byte aligned (NumPy aligns to 16)
    realm.dequantize(raw, qtype, out=out, threads=2)
    assert np.array_equal(out.view(np.uint32), expected)


def test_unsupported_formats_are_named():
    with pytest.raises(ValueError, match="Q8_1 is not supported"):
        realm.dequantize(b"\0" * 40, GGMLType.Q8_1)
    with pytest.raises(ValueError, match="unknown GGML type id 99"):
        realm.dequantize(b"\0" * 18, 99)
    with pytest.raises(ValueError, match="unknown GGML type name"):
        realm.dequantize(b"\0" * 18, "q4_9")


def test_qtype_spellings():
    raw = ggml().quantize(np.linspace(-1, 1, 64, dtype=np.float32), GGMLType.Q4_0)
    expected = realm.dequantize(raw, GGMLType.Q4_0)
    for spelling in (2, np.int32(2), "q4_0", "Q4_0", gguf.GGMLQuantizationType.Q4_0):
        assert_same_floats(realm.dequantize(raw, spelling), expected)
    with pytest.raises(TypeError):
        realm.dequantize(raw, 2.0)
    with pytest.raises(TypeError):
        realm.dequantize(raw, True)


def test_quant_info_and_supported_types():
    info = realm.quant_info("q4_k")
    assert (info.qtype, info.name, info.block_size, info.type_size, info.align) == (GGMLType.Q4_K, "Q4_K", 256, 144, 2)
    for t in realm.SUPPORTED_TYPES:
        tr = ggml().traits(t)
        assert (realm.quant_info(t).block_size, realm.quant_info(t).type_size) == (tr.blck_size, tr.type_size)
    assert {t.name for t in realm.SUPPORTED_TYPES} == {
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", *(t.name for t in IQ_TYPES),
    }
    assert [t.name for t in IQ_TYPES] == list(IQ_NAMES)


def test_every_input_kind_is_accepted_without_copy():
    x = np.linspace(-3, 3, 4 * 64, dtype=np.float32).reshape(4, 64)
    raw = ggml().quantize(x, GGMLType.Q8_0).reshape(4, -1)
    expected = gguf_py_dequantize(raw, GGMLType.Q8_0)
    for data in (raw, raw.tobytes(), bytearray(raw.tobytes()), memoryview(raw), memoryview(raw.tobytes())):
        got = realm.dequantize(data, GGMLType.Q8_0)
        assert_same_floats(got.reshape(expected.shape) if got.ndim == 1 else got, expected)
    assert realm.dequantize(raw, GGMLType.Q8_0).shape == (4, 64)  # leading axes kept
    assert realm.dequantize(raw.tobytes(), GGMLType.Q8_0).shape == (256,)
    readonly = raw.copy()
    readonly.flags.writeable = False
    assert_same_floats(realm.dequantize(readonly, GGMLType.Q8_0), expected)


def test_shape_argument():
    x = np.arange(3 * 64, dtype=np.float32).reshape(3, 64)
    raw = ggml().quantize(x, GGMLType.Q4_1)  # flat, as tensor data sits in a GGUF file
    got = realm.dequantize(raw, "Q4_1", shape=(3, 64))
    assert got.shape == (3, 64)
    assert_same_floats(got, gguf_py_dequantize(raw.reshape(3, -1), GGMLType.Q4_1))
    with pytest.raises(ValueError, match="does not hold"):
        realm.dequantize(raw, "Q4_1", shape=(4, 64))
    with pytest.raises(ValueError, match="whole number of 32-element blocks"):
        realm.dequantize(raw, "Q4_1", shape=(6, 32, 1))
    with pytest.raises(ValueError, match="negative"):
        realm.dequantize(raw, "Q4_1", shape=(-3, -64))


def test_out_argument():
    raw = ggml().quantize(np.ones((2, 256), np.float32), GGMLType.Q6_K).reshape(2, -1)
    out = np.full((2, 256), np.nan, dtype=np.float32)
    assert realm.dequantize(raw, "Q6_K", out=out) is out
    assert_same_floats(out, gguf_py_dequantize(raw, GGMLType.Q6_K))
    flat = np.empty(512, dtype=np.float32)
    assert realm.dequantize(raw, "Q6_K", out=flat) is flat  # any shape with the right size
    for bad, exc, msg in [
        (np.empty(511, np.float32), ValueError, "holds 511 elements, 512 needed"),
        (np.empty(512, np.float64), TypeError, "float32"),
        (np.empty((512, 2), np.float32)[:, 0], ValueError, "C-contiguous"),
        ([0.0] * 512, TypeError, "numpy array"),
    ]:
        with pytest.raises(exc, match=msg):
            realm.dequantize(raw, "Q6_K", out=bad)
    ro = np.empty(512, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        realm.dequantize(raw, "Q6_K", out=ro)
    shared = np.zeros(4096, dtype=np.uint8)
    with pytest.raises(ValueError, match="overlaps"):
        realm.dequantize(shared[:210], "Q6_K", out=shared[64:1088].view(np.float32))


def test_bad_inputs():
    with pytest.raises(ValueError, match="not a whole number of Q4_0 blocks of 18 bytes"):
        realm.dequantize(b"\0" * 19, "Q4_0")
    with pytest.raises(ValueError, match="not a whole number"):
        realm.dequantize(np.zeros((2, 17), np.uint8), "Q4_0")
    with pytest.raises(TypeError, match="uint8"):
        realm.dequantize(np.zeros(36, np.int8), "Q4_0")
    with pytest.raises(TypeError, match="bytes, bytearray, memoryview"):
        realm.dequantize("abc", "Q4_0")
    with pytest.raises(ValueError, match="C-contiguous"):
        realm.dequantize(np.zeros((4, 36), np.uint8)[:, ::2], "Q4_0")
    with pytest.raises(ValueError, match="C-contiguous"):
        realm.dequantize(memoryview(np.zeros((4, 72), np.uint8)[:, ::2]), "Q4_0")
    for threads in (0, -1, realm.threads.max_threads() + 1, 1000, 10**9):  # OpenMP would make them, or exit
        with pytest.raises(realm.InvalidArgumentError, match=r"threads must be in \[1, "):
            realm.dequantize(b"\0" * 18 * 4096, "Q4_0", threads=threads)
    with pytest.raises(TypeError, match="threads"):
        realm.dequantize(b"\0" * 18, "Q4_0", threads=1.5)
    with pytest.raises(ValueError, match="at least one axis"):
        realm.dequantize(np.array(3, dtype=np.uint8), "Q4_0")
    assert realm.dequantize(b"", "Q4_0").shape == (0,)
    misaligned = np.zeros(300, np.uint8)[1:293]
    with pytest.raises(ValueError, match="multiple of 4 bytes"):
        realm.dequantize(misaligned, "Q8_K")


def test_low_level_wrapper_checks_sizes():
    with pytest.raises(ValueError, match="1 floats, 32 needed"):
        _native.dequantize_into(np.zeros(18, np.uint8), 2, np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="unknown isa"):
        _native.dequantize_into(np.zeros(18, np.uint8), 2, np.zeros(32, np.float32), 1, "sse9")
    other = "neon" if _native.best_isa() != "neon" else "avx2"
    with pytest.raises(ValueError, match="cannot run"):
        _native.dequantize_into(np.zeros(18, np.uint8), 2, np.zeros(32, np.float32), 1, other)
    with pytest.raises(ValueError, match="multiple of 2 bytes"):
        _native.dequantize_into(np.zeros(19, np.uint8)[1:], 2, np.zeros(32, np.float32))


def test_kernel_releases_the_gil():
    """With a huge switch interval a thread keeps the GIL until it blocks or releases it,
    so the main thread runs while the worker is still calling the kernel only if the
    kernel lets go.  The worker makes up to 200 calls (about 0.2 s) and stops once the
    main thread has run: a loaded machine may take a while to schedule the main thread,
    and a kernel holding the GIL lets it run only after the last call."""
    raw = np.random.default_rng(1).integers(0, 256, (1 << 22) // 32 * 34, dtype=np.uint8)
    calls = 200
    state = {"main_ran": False, "calls": 0}

    def work():
        while state["calls"] < calls and not state["main_ran"]:
            state["result"] = realm.dequantize(raw, "Q8_0", threads=1)
            state["calls"] += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        t = threading.Thread(target=work)
        t.start()
        state["main_ran"] = True
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert state["calls"] < calls, "the main thread never ran during the worker's kernel calls"
    assert_same_floats(state["result"], realm.dequantize(raw, "Q8_0", threads=1))


def test_concurrent_calls_from_python_threads():
    rng = np.random.default_rng(3)
    jobs = [(t, rng.integers(0, 256, 2000 * realm.quant_info(t).type_size, dtype=np.uint8)) for t in QUANTIZED]
    expected = [realm.dequantize(raw, t, threads=1) for t, raw in jobs]
    results: list = [None] * len(jobs)

    def run(i):
        t, raw = jobs[i]
        results[i] = realm.dequantize(raw, t, threads=2)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, exp in zip(results, expected):
        assert_same_floats(got, exp)


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_real_model_tensors_match_llama_cpp(model, request):
    """Every tensor type of both PyPI models; at most 1M elements of each tensor, so
    the 262,144-row Gemma 3 embedding costs no more than the others."""
    gguf_file = realm.open_gguf(request.getfixturevalue(model))
    seen: dict[GGMLType, int] = {}
    for name, info in gguf_file.tensors.items():
        tensor = realm.QuantizedTensor.from_file(gguf_file, info)
        if seen.get(tensor.dtype, 0) >= 3:
            continue
        seen[tensor.dtype] = seen.get(tensor.dtype, 0) + 1
        rows = tensor.data.reshape(-1, tensor.data.shape[-1])
        rows = rows[: max(1, (1 << 20) // tensor.shape[-1])]
        assert_same_floats(realm.dequantize(rows, tensor.dtype).reshape(-1), ggml().to_float(rows, tensor.dtype))
    expected = {"smollm2_path": {"F32", "Q4_1", "Q8_0"}, "gemma3_path": {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}}
    assert {t.name for t in seen} >= expected[model]
