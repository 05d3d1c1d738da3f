"""realm._native's matrix products y = x W^T against float64 references and against
llama.cpp's own kernels.

Weights come from llama.cpp's own quantizer (ggml_quantize_chunk; the IQ2 types with
a random importance matrix), from random bytes as blocks (IQ2) and from the real
models' tensors; W~ below is their exact dequantization (realm.dequantize,
itself bit-exact with llama.cpp).  For the quantized formats the kernels first
quantize each activation row to int8 blocks (32 values, or 256 for the
K-quants) as llama.cpp does: q = rne(x * 127 / amax), x^ = d * q with d the
block's stored scale (f16(amax / 127) for blocks of 32, 1 / (127 / amax) for
256); the formats with a block minimum (Q4_1, Q5_1) multiply it by the block
sum s = f16(amax / 127 * sum q) rather than d * sum q, which the model below adds
as corr = sum over blocks of m (s - d sum q).  Three checks follow:

* bit-exact: one token's y equals llama.cpp's ggml_vec_dot_* on the same blocks, or
  for Q4_0, Q4_K, Q2_K, IQ4_NL and MXFP4 matrices of 8k rows (the ones llama.cpp repacks) its
  ggml_gemv_*_8x8 on the repacked blocks, and the activation blocks equal
  quantize_row_q8_0 / _q8_1 / _q8_K's, when the installed llama.cpp is an x86 build
  with AVX2 (its kernels are other ones elsewhere);
* tight:  |y - (W~ x^ + corr)| <= 8 (nb + 4) 2^-24 M, with nb the number of blocks
  in a row and M = sum over 32-value groups g of max_g|W~| * sum_g|x^|.  Every
  block product the kernel sums is exact in integers and then scaled in f32; each
  scaled term is at most 3 max_g|W~| sum_g|x^| (a quantized value times its scale
  is within the block's range, a block minimum within its extremes), and f32
  recursive summation of nb terms errs by at most (nb + 2) u of the sum of the
  terms' magnitudes, plus 2u per term for the scale products;
* against the f32 activations: |y - W~ x| <= sum over activation blocks b of
  (0.50002 d'_b + 127 |d_b - d'_b|) sum_b|W~| + |corr| + the tight bound, where
  d' = amax / 127: |x - q d'| <= d' (1/2 + 127 * 2u) element-wise (round to nearest
  of x * (127 / amax), both steps rounded) and |q| <= 127.

F32/F16/BF16 weights multiply the activations as llama.cpp does: F32 as given, F16 / BF16
rounded to f16 / bf16 (x^ above), in ggml_vec_dot_f32 / _f16 / _bf16's sums (AVX-512 lanes,
vdpbf16ps's steps for BF16: matmul.h); they are checked against x^ within the
recursive-summation bound (n + 8) 2^-24 sum|W~||x^|, and bit for bit against llama.cpp's
exported ggml_vec_dot_f32 / _f16 / _bf16 where the installed llama.cpp is an x86 build with
AVX-512 F and BF16.

The scalar, AVX2 and AVX-512 paths, any thread count and any batch split give the same
bits for every format (matmul.h defines the float steps; the integer parts are exact)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realm import GGMLType, _native, dequantize
from realm.reader import GGUFFile
from conftest import assert_same_bits, ggml, require

T = GGMLType
FLOAT_TYPES = [T.F32, T.F16, T.BF16]
Q32_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.MXFP4]  # against blocks of 32
IQ2_TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S]
K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS, *IQ2_TYPES, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M,
           T.TQ1_0, T.TQ2_0]  # against blocks of 256
ALL_TYPES = FLOAT_TYPES + Q32_TYPES + K_TYPES
ISAS = sorted({"scalar", _native.best_isa()})
U = 2.0**-24


def act_block(qtype: GGMLType) -> int:
    return {"f32": 1, "f16": 1, "bf16": 1, "q8": 32, "q8_k": 256}[_native.act_type(qtype)]


def weight_block(qtype: GGMLType) -> int:
    return 1 if qtype in FLOAT_TYPES else act_block(qtype)


def gaussian(rng, shape, scale=1.0, outliers=True) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
    if outliers and x.size:  # the odd large value real activations and weights have
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, max(1, flat.size // 97))] *= 9
    return x


def quantize(rng, values: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """llama.cpp's quantizer; the types it quantizes only with an importance matrix (IQ2_*,
    IQ1_*) get a positive random one drawn from rng."""
    imatrix = None
    if ggml().requires_imatrix(qtype):
        imatrix = (10.0 ** rng.uniform(-2, 1, values.shape[-1])).astype(np.float32)
    return ggml().quantize(values, qtype, imatrix)


# where the formats with random-block tests keep their f16 block scale (byte offset); IQ1_M
# keeps its in the top nibbles of its 4 u16 scale words (bytes 49, 51, 53, 55)
RAW_SCALE = {T.Q3_K: 108, T.IQ2_XXS: 0, T.IQ2_XS: 0, T.IQ2_S: 0, T.IQ3_XXS: 0, T.IQ3_S: 0, T.IQ1_S: 0,
             T.IQ1_M: None, T.TQ1_0: 52, T.TQ2_0: 64}


def raw_blocks(rng, qtype: GGMLType, n_out: int, n_in: int) -> np.ndarray:
    """Random bytes as n_out rows of qtype blocks (every grid index, sign, scale and packing
    pattern, not only those llama.cpp's quantizer writes), each block scale a finite f16 of
    either sign between 2^-12 and 4 in magnitude."""
    _, bs, size, _ = _native.type_traits(qtype)
    blocks = rng.integers(0, 256, (n_out * n_in // bs, size), dtype=np.uint8)
    d = (rng.choice([-1.0, 1.0], len(blocks)) * 2.0 ** rng.uniform(-12, 2, len(blocks))).astype(np.float16)
    bits = d.view(np.uint16)
    if qtype == T.IQ1_M:
        for j in range(4):
            nib = ((bits >> 4 * j) & 0xF).astype(np.uint8)
            blocks[:, 49 + 2 * j] = (blocks[:, 49 + 2 * j] & 0x0F) | (nib << 4)
    else:
        blocks[:, RAW_SCALE[qtype]:RAW_SCALE[qtype] + 2] = d.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(n_out, -1)


def f16_round(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(np.float32).astype(np.float16).astype(np.float32)


def np_quantize_act(x: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """An independent NumPy model of the activation quantizer (matmul.h): amax = max|x|
    (NaNs skipped), q = rint(x * (127 / amax)) clamped to [-127, 127], NaN -> -127; blocks of
    32: d = f16(amax / 127), s = f16(amax / 127 * sum q); blocks of 256: d = 1 / (127 / amax);
    blocks with amax < 2^-100 all zero.  Returns qs int8 [n_tok, n_in], d (and s) float32
    [n_tok, blocks], o int32 [n_tok, n_in / 4] (-128 times each 4 values' sum), bsums int16
    [n_tok, n_in / 16] (blocks of 256)."""
    n_tok, n_in = x.shape
    xb = x.reshape(n_tok, n_in // k, k).astype(np.float32)
    with np.errstate(all="ignore"):
        a = np.abs(xb)
        amax = np.where(np.isnan(a), np.float32(0), a).max(axis=-1)
        tiny = ~(amax >= np.float32(2.0**-100))
        inv = np.where(tiny, np.float32(0), np.float32(127) / amax).astype(np.float32)
        r = np.rint((xb * inv[..., None]).astype(np.float32))
        bad = np.isnan(r) | (r >= 2.0**31) | (r < -(2.0**31))
        q = np.where(bad, -127, np.clip(np.nan_to_num(r), -127, 127)).astype(np.int8)
        if k == 32:
            d0 = np.where(tiny, np.float32(0), amax / np.float32(127)).astype(np.float32)
            d = f16_round(d0)
            s = f16_round(d0 * q.astype(np.int32).sum(axis=-1).astype(np.float32))
        else:
            d = np.where(tiny, np.float32(0), np.float32(1) / inv).astype(np.float32)
    out = {"qs": q.reshape(n_tok, n_in), "d": d, "o": -128 * q.astype(np.int32).reshape(n_tok, -1, 4).sum(axis=-1)}
    if k == 32:
        out["s"] = s
    else:
        out["bsums"] = q.astype(np.int32).reshape(n_tok, -1, 16).sum(axis=-1).astype(np.int16)
    return out


def x_hat(qtype: GGMLType, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """The activations the kernels multiply (float64) and the buffer's parts."""
    act = _native.act_type(qtype)
    if act == "f32":
        return x.astype(np.float64), {}
    if act in ("f16", "bf16"):
        parts = _native.act_unpack(act, _native.quantize_act(act, x), *x.shape)
        xr = parts["x"] if act == "f16" else (parts["x"].astype(np.uint32) << 16).view(np.float32)
        return xr.astype(np.float64), parts
    k = act_block(qtype)
    parts = _native.act_unpack(act, _native.quantize_act(act, x), *x.shape)
    d = parts["d"].astype(np.float64)
    return parts["qs"].astype(np.float64) * np.repeat(d, k, axis=1), parts


def block_minimums(wq: np.ndarray, qtype: GGMLType, n_out: int) -> np.ndarray:
    """m [n_out, blocks] of Q4_1 / Q5_1 blocks (the f16 after the scale)."""
    size = {T.Q4_1: 20, T.Q5_1: 24}[qtype]
    blocks = np.ascontiguousarray(wq).reshape(n_out, -1, size)
    return blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)


def group_bound(w: np.ndarray, xh: np.ndarray) -> np.ndarray:
    """M[t, i] = sum over 32-value groups g of max_g|W[i]| * sum_g|x^[t]|."""
    g = 32 if w.shape[1] % 32 == 0 else 1
    wmax = np.abs(w).reshape(w.shape[0], -1, g).max(axis=-1)
    xsum = np.abs(xh).reshape(xh.shape[0], -1, g).sum(axis=-1)
    return xsum @ wmax.T


def check_product(qtype: GGMLType, wq: np.ndarray, n_out: int, x: np.ndarray, y: np.ndarray) -> None:
    """y = x W^T within the bounds in the module docstring."""
    n_tok, n_in = x.shape
    w = dequantize(wq, qtype, (n_out, n_in)).astype(np.float64)
    xh, parts = x_hat(qtype, x)
    if qtype in FLOAT_TYPES:
        tol = (n_in + 8) * U * (np.abs(xh) @ np.abs(w).T)
        err = np.abs(y - xh @ w.T)
        assert (err <= tol).all(), f"max excess {(err - tol).max():.3g}"
        return
    k = act_block(qtype)
    corr = np.zeros((n_tok, n_out))
    if qtype in (T.Q4_1, T.Q5_1):  # the block minimum times s, not times d * sum(q)
        sumq = parts["qs"].astype(np.float64).reshape(n_tok, -1, k).sum(axis=-1)
        corr = (parts["s"].astype(np.float64) - parts["d"].astype(np.float64) * sumq) @ block_minimums(wq, qtype, n_out).T
    nb = n_in // k
    tight = 8 * (nb + 4) * U * group_bound(w, xh)
    err = np.abs(y - (xh @ w.T + corr))
    assert (err <= tight).all(), f"tight bound exceeded by {(err - tight).max():.3g} (bound {tight.max():.3g})"
    amax = np.abs(x.astype(np.float64)).reshape(n_tok, -1, k).max(axis=-1)
    d_exact = amax / 127
    e_block = 0.50002 * d_exact + 127 * np.abs(parts["d"].astype(np.float64) - d_exact)
    act_err = e_block @ np.abs(w).reshape(n_out, -1, k).sum(axis=-1).T
    err = np.abs(y - x.astype(np.float64) @ w.T)
    bound = act_err + np.abs(corr) + tight
    assert (err <= bound).all(), f"activation bound exceeded by {(err - bound).max():.3g}"


def shapes(qtype: GGMLType):
    """(n_out, n_in, n_tok): odd row counts, whole blocks (32-value formats also
    with a block count that is not a multiple of 4), batches from 1 to 64."""
    if qtype in FLOAT_TYPES:
        n_in = st.integers(1, 300)
    else:
        bs = weight_block(qtype)
        n_in = st.integers(1, 3 if bs == 256 else 23).map(lambda n: n * bs)
    n_tok = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 13, 31, 64])
    return st.tuples(st.integers(1, 70), n_in, n_tok)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@settings(max_examples=10, deadline=None)
@given(shape=st.data(), seed=st.integers(0, 2**32 - 1), wscale=st.floats(1e-3, 1e2), xscale=st.floats(1e-3, 1e3))
def test_matmul_matches_float64(qtype, shape, seed, wscale, xscale):
    n_out, n_in, n_tok = shape.draw(shapes(qtype))
    rng = np.random.default_rng(seed)
    if qtype in RAW_SCALE and shape.draw(st.booleans(), label="random blocks"):
        wq = raw_blocks(rng, qtype, n_out, n_in)
    else:
        wq = quantize(rng, gaussian(rng, (n_out, n_in), wscale), qtype)
    x = gaussian(rng, (n_tok, n_in), xscale)
    ys = {isa: _native.matmul(wq, qtype, n_out, x, isa=isa, threads=1) for isa in ISAS}
    for y in ys.values():
        assert y.shape == (n_tok, n_out) and y.dtype == np.float32
        check_product(qtype, wq, n_out, x, y)
        assert_same_bits(y, ys["scalar"])


@pytest.mark.parametrize("act,k", [("q8", 32), ("q8_k", 256)])
@pytest.mark.parametrize("isa", ISAS)
def test_quantize_act_matches_numpy_model(act, k, isa):
    rng = np.random.default_rng(7)
    n_tok, n_in = 11, 4 * k
    x = gaussian(rng, (n_tok, n_in), 3.0)
    x[1, :k] = 0.0                                   # an all-zero block
    x[2, :k] *= np.float32(2.0**-110)                # a block below the tiny threshold
    x[3, 5], x[3, k + 7] = np.nan, -np.inf           # NaN and infinity in their blocks
    x[4, 3] = np.float32(3.0e38)
    x[5, :k] = np.float32(0.5) * np.arange(k, dtype=np.float32) - 3  # exact ties at x * (127 / amax)
    x[6, :k] = np.float32(2.0**-99) * rng.standard_normal(k, dtype=np.float32)  # f16-subnormal scales
    x[7, :k] = np.float32(1e-3) * rng.standard_normal(k, dtype=np.float32)
    buf = _native.quantize_act(act, x, isa=isa)
    parts = _native.act_unpack(act, buf, n_tok, n_in)
    want = np_quantize_act(x, k)
    np.testing.assert_array_equal(parts["qs"], want["qs"])
    assert_same_bits(parts["d"], want["d"])
    np.testing.assert_array_equal(parts["o"], want["o"])
    if act == "q8":
        assert_same_bits(parts["s"], want["s"])
    else:
        np.testing.assert_array_equal(parts["bsums"], want["bsums"])


@pytest.mark.parametrize("qtype", Q32_TYPES + K_TYPES, ids=lambda t: t.name)
def test_special_activations_give_the_same_bits_on_every_path(qtype):
    """Inf, NaN and huge activations give garbage, but the same garbage everywhere."""
    rng = np.random.default_rng(3)
    n_in = 3 * weight_block(qtype)
    wq = quantize(rng, gaussian(rng, (9, n_in)), qtype)
    x = gaussian(rng, (5, n_in))
    x[0, 1], x[1, 40], x[2, -1], x[3, 0] = np.inf, np.nan, -np.inf, np.float32(3.4e38)
    ys = [_native.matmul(wq, qtype, 9, x, isa=isa) for isa in ISAS]
    for y in ys:
        assert_same_bits(y, ys[0])
    np.testing.assert_array_equal(np.isfinite(ys[0][4]), True)


@pytest.mark.parametrize("qtype", Q32_TYPES, ids=lambda t: t.name)
def test_vnni_kernels_give_the_same_bits(qtype):
    """Where the CPU has AVX-512 VNNI the 32-value formats use it; without, the same bits."""
    rng = np.random.default_rng(int(qtype) + 7)
    for n_out in (16, 13):  # Q4_0: the repacked kernel and the other one
        wq = ggml().quantize(gaussian(rng, (n_out, 9 * 32)), qtype)
        x = gaussian(rng, (11, 9 * 32))
        had = _native.vnni()
        try:
            _native.vnni(False)
            assert not _native.vnni()
            plain = _native.matmul(wq, qtype, n_out, x, isa="auto")
        finally:
            _native.vnni(had)
        assert _native.vnni() == had
        assert_same_bits(_native.matmul(wq, qtype, n_out, x, isa="auto"), plain)
        assert_same_bits(_native.matmul(wq, qtype, n_out, x, isa="scalar"), plain)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: nearest even on the bits, NaN made quiet (| 64)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, ((u >> 16) | 64).astype(np.uint16), r)


def special_rows(rng, n_tok, n_in):
    """Activations with f16 / bf16 subnormals, values that overflow f16, ties, NaN, infinities."""
    x = gaussian(rng, (n_tok, n_in), 3.0)
    x[0, ::3] = np.float32(2.0**-20) * rng.standard_normal(x[0, ::3].size).astype(np.float32)  # f16 subnormal
    x[1, ::5] = np.float32(2.0**-130)                                         # f32 and bf16 subnormal
    x[2, 1], x[2, 2], x[2, 3] = np.float32(65519.0), np.float32(65520.0), np.float32(3.4e38)  # f16: max, inf
    x[3, 0], x[3, 1], x[3, 2] = np.nan, np.inf, -np.inf
    x[4, :8] = np.float32(1) + np.float32(2.0**-11) * np.arange(8, dtype=np.float32)  # f16 ties
    x[5, :8] = (np.uint32(0x3F808000) + np.arange(8, dtype=np.uint32) * 0x10000).view(np.float32)  # bf16 ties
    return x


@pytest.mark.parametrize("isa", ISAS)
def test_round_act_matches_numpy_model(isa):
    """F16 / BF16 activations: each value rounded once, as llama.cpp's from_float does."""
    rng = np.random.default_rng(8)
    x = special_rows(rng, 7, 67)
    parts = _native.act_unpack("f16", _native.quantize_act("f16", x, isa=isa), *x.shape)
    assert_same_bits(parts["x"], f16_round(x))
    parts = _native.act_unpack("bf16", _native.quantize_act("bf16", x, isa=isa), *x.shape)
    np.testing.assert_array_equal(parts["x"], bf16_bits(x))
    np.testing.assert_array_equal(parts["tiny"], [0, 1, 0, 0, 0, 0, 0])  # row 1: bf16 subnormals


def test_avx512_kernels_give_the_same_bits():
    """Where the CPU has AVX-512 F, BW, VL and BF16 the F16 / BF16 weights use it; without, the same bits."""
    rng = np.random.default_rng(17)
    for qtype in FLOAT_TYPES:
        for n_in in (517, 64 * 5, 40):
            wq = ggml().quantize(gaussian(rng, (13, n_in)), qtype)
            x = gaussian(rng, (11, n_in))
            had = _native.avx512()
            try:
                _native.avx512(False)
                assert not _native.avx512()
                plain = _native.matmul(wq, qtype, 13, x, isa="auto")
            finally:
                _native.avx512(had)
            assert _native.avx512() == had
            assert_same_bits(_native.matmul(wq, qtype, 13, x, isa="auto"), plain)
            assert_same_bits(_native.matmul(wq, qtype, 13, x, isa="scalar"), plain)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_thread_count_and_batch_split_do_not_change_bits(qtype):
    rng = np.random.default_rng(int(qtype))
    n_out, n_tok = 203, 9
    n_in = 4 * 256 if qtype in K_TYPES else 17 * 32 if qtype in Q32_TYPES else 517
    wq = quantize(rng, gaussian(rng, (n_out, n_in)), qtype)
    x = gaussian(rng, (n_tok, n_in))
    for isa in ISAS:
        ref = _native.matmul(wq, qtype, n_out, x, isa=isa, threads=1)
        for threads in (2, 3):
            assert_same_bits(_native.matmul(wq, qtype, n_out, x, isa=isa, threads=threads), ref)
        for t in range(n_tok):  # one token alone = the same token inside the batch
            assert_same_bits(_native.matmul(wq, qtype, n_out, x[t], isa=isa), ref[t])


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q5_0, T.Q4_K, T.Q6_K, T.IQ3_S, T.F16, T.BF16], ids=lambda t: t.name)
def test_shared_activations(qtype):
    """Q/K/V-style reuse: one quantize_act buffer serves several weight matrices."""
    rng = np.random.default_rng(11)
    n_in, n_tok = 512, 6
    x = gaussian(rng, (n_tok, n_in))
    act = _native.act_type(qtype)
    buf = x if act == "f32" else _native.quantize_act(act, x)
    for n_out in (64, 17):
        wq = quantize(rng, gaussian(rng, (n_out, n_in)), qtype)
        out = np.full((n_tok, n_out), np.nan, dtype=np.float32)
        y = _native.matmul_q(wq, qtype, n_out, buf, n_tok, n_in, out=out)
        assert y is out
        assert_same_bits(y, _native.matmul(wq, qtype, n_out, x))


# ---- bit for bit with llama.cpp's kernels ----

class GGMLCPU:
    """llama.cpp's CPU kernels (libggml-cpu, as llama-cpp-python built it), through ctypes."""

    VEC_DOT = {T.Q4_0: ("q4_0_q8_0", "q8_0", 34), T.Q4_1: ("q4_1_q8_1", "q8_1", 36), T.Q5_0: ("q5_0_q8_0", "q8_0", 34),
               T.Q5_1: ("q5_1_q8_1", "q8_1", 36), T.Q8_0: ("q8_0_q8_0", "q8_0", 34), T.Q2_K: ("q2_K_q8_K", "q8_K", 292),
               T.Q3_K: ("q3_K_q8_K", "q8_K", 292), T.Q4_K: ("q4_K_q8_K", "q8_K", 292), T.Q5_K: ("q5_K_q8_K", "q8_K", 292),
               T.Q6_K: ("q6_K_q8_K", "q8_K", 292), T.IQ4_NL: ("iq4_nl_q8_0", "q8_0", 34),
               T.MXFP4: ("mxfp4_q8_0", "q8_0", 34), T.IQ4_XS: ("iq4_xs_q8_K", "q8_K", 292),
               T.IQ2_XXS: ("iq2_xxs_q8_K", "q8_K", 292), T.IQ2_XS: ("iq2_xs_q8_K", "q8_K", 292),
               T.IQ2_S: ("iq2_s_q8_K", "q8_K", 292),
               T.IQ3_XXS: ("iq3_xxs_q8_K", "q8_K", 292), T.IQ3_S: ("iq3_s_q8_K", "q8_K", 292),
               T.IQ1_S: ("iq1_s_q8_K", "q8_K", 292), T.IQ1_M: ("iq1_m_q8_K", "q8_K", 292),
               T.TQ1_0: ("tq1_0_q8_K", "q8_K", 292), T.TQ2_0: ("tq2_0_q8_K", "q8_K", 292)}

    def __init__(self):
        import ctypes
        import platform

        require("llama_cpp")
        from ggml_ref import load_ggml_cpu

        self.c = ctypes
        self.lib = lib = load_ggml_cpu()
        if platform.machine() not in ("x86_64", "AMD64") or not lib.ggml_cpu_has_avx2():
            pytest.skip("llama.cpp's x86 AVX2 kernels are the ones realm's quantized products equal")
        P = ctypes.c_void_p
        for name in ("q8_0", "q8_1", "q8_K"):
            getattr(lib, f"quantize_row_{name}").argtypes = [P, P, ctypes.c_int64]
        for name, _, _ in self.VEC_DOT.values():
            getattr(lib, f"ggml_vec_dot_{name}").argtypes = [ctypes.c_int, P, ctypes.c_size_t, P, ctypes.c_size_t, P,
                                                             ctypes.c_size_t, ctypes.c_int]

    def quantize_row(self, name: str, x: np.ndarray, size: int) -> np.ndarray:
        k = 256 if name == "q8_K" else 32
        out = np.zeros(x.size // k * size, dtype=np.uint8)
        getattr(self.lib, f"quantize_row_{name}")(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def vec_dot(self, qtype: GGMLType, wq: np.ndarray, n_out: int, x: np.ndarray) -> np.ndarray:
        """llama.cpp's y = W x for one token: quantize_row_* then ggml_vec_dot_* per row."""
        name, act, size = self.VEC_DOT[qtype]
        xq = self.quantize_row(act, x, size)
        wq = np.ascontiguousarray(wq).reshape(n_out, -1)
        y = np.zeros(n_out, dtype=np.float32)
        fn = getattr(self.lib, f"ggml_vec_dot_{name}")
        for r in range(n_out):
            fn(x.size, y[r:].ctypes.data, 0, wq[r].ctypes.data, 0, xq.ctypes.data, 0, 1)
        return y

    REPACKED = {T.Q4_0: ("block_q4_0", "q4_0_8x8_q8_0", "q8_0", 34), T.Q4_K: ("block_q4_K", "q4_K_8x8_q8_K", "q8_K", 292),
                T.Q2_K: ("block_q2_K", "q2_K_8x8_q8_K", "q8_K", 292),
                T.IQ4_NL: ("block_iq4_nl", "iq4_nl_8x8_q8_0", "q8_0", 34),
                T.MXFP4: ("block_mxfp4", "mxfp4_8x8_q8_0", "q8_0", 34)}

    def gemv(self, qtype: GGMLType, wq: np.ndarray, n_out: int, x: np.ndarray) -> np.ndarray:
        """llama.cpp's product of a repacked matrix (8 rows interleaved, n_out % 8 == 0):
        ggml::cpu::repack::repack<block, 8, 8> then ggml_gemv_*_8x8."""
        ctypes = self.c
        block, kernel, act, size = self.REPACKED[qtype]
        repack = getattr(self.lib, f"_ZN4ggml3cpu6repack6repackI{len(block)}{block}Ll8ELl8EEEiP11ggml_tensorPKvm")
        repack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        gemv = getattr(self.lib, f"ggml_gemv_{kernel}")
        gemv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                         ctypes.c_int]

        class Tensor(ctypes.Structure):  # struct ggml_tensor, up to the fields repack reads
            _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                        ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                        ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                        ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                        ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]
        wq = np.ascontiguousarray(wq)
        packed = np.zeros(wq.size, dtype=np.uint8)
        t = Tensor(type=int(qtype), data=packed.ctypes.data)
        t.ne[:] = [x.size, n_out, 1, 1]
        t.nb[:] = [wq.size // n_out // (x.size // weight_block(qtype)), wq.size // n_out, wq.size, wq.size]
        assert repack(ctypes.byref(t), wq.ctypes.data, wq.size) == 0
        xq = self.quantize_row(act, x, size)
        y = np.zeros(n_out, dtype=np.float32)
        gemv(x.size, y.ctypes.data, n_out, packed.ctypes.data, xq.ctypes.data, 1, n_out)
        return y


@pytest.fixture(scope="module")
def ggml_cpu():
    return GGMLCPU()


@pytest.mark.parametrize("isa", ISAS)
def test_activations_equal_llama_cpp_quantizer(ggml_cpu, isa):
    """The int8 values and scales equal quantize_row_q8_0 / _q8_1 / _q8_K's (Q8_K up to the
    sign ggml gives q and d when the largest value is positive)."""
    rng = np.random.default_rng(12)
    x = gaussian(rng, (1, 8 * 256), 3.0)[0]
    x[:32] *= np.float32(1e-6)  # an f16-subnormal scale
    parts = _native.act_unpack("q8", _native.quantize_act("q8", x, isa=isa), 1, x.size)
    b0 = ggml_cpu.quantize_row("q8_0", x, 34).reshape(-1, 34)
    b1 = ggml_cpu.quantize_row("q8_1", x, 36).reshape(-1, 36)
    np.testing.assert_array_equal(parts["qs"][0], b0[:, 2:].view(np.int8).reshape(-1))
    np.testing.assert_array_equal(parts["qs"][0], b1[:, 4:].view(np.int8).reshape(-1))
    assert_same_bits(parts["d"][0], b0[:, :2].copy().view(np.float16)[:, 0].astype(np.float32))
    assert_same_bits(parts["d"][0], b1[:, :2].copy().view(np.float16)[:, 0].astype(np.float32))
    assert_same_bits(parts["s"][0], b1[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32))
    parts = _native.act_unpack("q8_k", _native.quantize_act("q8_k", x, isa=isa), 1, x.size)
    bk = ggml_cpu.quantize_row("q8_K", x, 292).reshape(-1, 292)
    d = bk[:, :4].copy().view(np.float32)[:, 0]
    sign = np.where(d < 0, -1, 1)
    assert_same_bits(parts["d"][0], np.abs(d))
    np.testing.assert_array_equal(parts["qs"][0].reshape(-1, 256), sign[:, None] * bk[:, 4:260].view(np.int8))
    np.testing.assert_array_equal(parts["bsums"][0].reshape(-1, 16), sign[:, None] * bk[:, 260:].copy().view(np.int16))


@pytest.mark.parametrize("qtype", Q32_TYPES + K_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_out", [24, 13])
def test_products_equal_llama_cpp_kernels(ggml_cpu, qtype, n_out):
    """One token's y = W x, bit for bit llama.cpp's (every path, alone and in a batch):
    repacked kernels for 8k rows of Q4_0, Q4_K, Q2_K, IQ4_NL, MXFP4, vec_dot kernels otherwise."""
    rng = np.random.default_rng(int(qtype) + 100)
    n_in = 7 * weight_block(qtype) if qtype in K_TYPES else 37 * 32
    repacked = qtype in GGMLCPU.REPACKED and n_out % 8 == 0
    for trial in range(3):
        wq = quantize(rng, gaussian(rng, (n_out, n_in), 10.0 ** rng.uniform(-2, 1)), qtype)
        x = gaussian(rng, (5, n_in), 10.0 ** rng.uniform(-2, 2))
        for t in range(x.shape[0]):
            want = ggml_cpu.gemv(qtype, wq, n_out, x[t]) if repacked else ggml_cpu.vec_dot(qtype, wq, n_out, x[t])
            for isa in ISAS:
                assert_same_bits(_native.matmul(wq, qtype, n_out, x[t], isa=isa, threads=1), want)
                assert_same_bits(_native.matmul(wq, qtype, n_out, x, isa=isa, threads=2)[t], want)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_vec_dot_every_token_count_equals_llama_cpp(ggml_cpu, qtype):
    """The 32-value formats in the vec_dot order (with AVX-512 VNNI several rows per call, in
    passes of up to 4 tokens: 8 rows a step at 1 or 2 tokens, 4 beyond, Q8_0's 2 at one) for
    every token count of a group, 21 rows (rows left over after the steps), 1 and 2 threads: llama.cpp's bits, for the quantizer's blocks and for
    random bytes as blocks (Q8_0's -128 included) with finite scales and minimums."""
    rng = np.random.default_rng(int(qtype) + 300)
    n_out, n_in = 21, 37 * 32
    size = _native.type_traits(qtype)[2]
    raw = rng.integers(0, 256, (n_out * n_in // 32, size), dtype=np.uint8)
    n_scales = 2 if qtype in (T.Q4_1, T.Q5_1) else 1  # d, and m after it
    d = rng.choice([-1.0, 1.0], (len(raw), n_scales)) * 2.0 ** rng.uniform(-12, 2, (len(raw), n_scales))
    raw[:, :2 * n_scales] = d.astype(np.float16).view(np.uint8)
    for wq in (quantize(rng, gaussian(rng, (n_out, n_in)), qtype), raw.reshape(n_out, -1)):
        x = gaussian(rng, (8, n_in), 10.0 ** rng.uniform(-2, 2))
        want = np.stack([ggml_cpu.vec_dot(qtype, wq, n_out, x[t]) for t in range(8)])
        for isa in ISAS:
            for n_tok in range(1, 9):
                for threads in (1, 2):
                    assert_same_bits(_native.matmul(wq, qtype, n_out, x[:n_tok], isa=isa, threads=threads), want[:n_tok])


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_many_tokens_equal_llama_cpp(ggml_cpu, qtype):
    """From 8 tokens on (the formats' wide_min), the 32-value formats' wide kernels (AVX-512
    VNNI: 16 rows in a register's lanes, tokens two at a time, the rows left over by the row
    kernels): llama.cpp's vec_dot bits for every token, odd counts and several groups included,
    random bytes as blocks and the quantizer's, 1 and 2 threads."""
    rng = np.random.default_rng(int(qtype) + 400)
    n_out, n_in = 3 * 16 + 5, 9 * 32
    size = _native.type_traits(qtype)[2]
    raw = rng.integers(0, 256, (n_out * n_in // 32, size), dtype=np.uint8)
    n_scales = 2 if qtype in (T.Q4_1, T.Q5_1) else 1
    d = rng.choice([-1.0, 1.0], (len(raw), n_scales)) * 2.0 ** rng.uniform(-12, 2, (len(raw), n_scales))
    raw[:, :2 * n_scales] = d.astype(np.float16).view(np.uint8)
    for wq in (quantize(rng, gaussian(rng, (n_out, n_in)), qtype), raw.reshape(n_out, -1)):
        x = gaussian(rng, (33, n_in), 10.0 ** rng.uniform(-2, 2))
        want = np.stack([ggml_cpu.vec_dot(qtype, wq, n_out, x[t]) for t in range(x.shape[0])])
        for n_tok in (7, 8, 9, 16, 17, 33):
            for threads in (1, 2):
                for isa in ISAS:
                    assert_same_bits(_native.matmul(wq, qtype, n_out, x[:n_tok], isa=isa, threads=threads),
                                     want[:n_tok])


@pytest.mark.parametrize("qtype", sorted(GGMLCPU.REPACKED), ids=lambda t: t.name)
def test_many_tokens_equal_llama_cpp_repacked(ggml_cpu, qtype):
    """The wide kernels in the order of llama.cpp's repacked matrices (8k rows, whole-block
    sums; Q4_0 and IQ4_NL from 8 tokens on, Q4_K from 6, Q2_K from 2, MXFP4 from 16): 16 rows
    a step and the 8 left to the other kernels, every token llama.cpp's gemv bits, random bytes
    as blocks and the quantizer's, 1 and 2 threads."""
    rng = np.random.default_rng(int(qtype) + 500)
    n_out, n_in = 3 * 16 + 8, 3 * weight_block(qtype) * (1 if weight_block(qtype) == 256 else 3)
    size = _native.type_traits(qtype)[2]
    raw = rng.integers(0, 256, (n_out * n_in // weight_block(qtype), size), dtype=np.uint8)
    if qtype == T.MXFP4:  # e8m0 exponents, 2^-12 .. 2^2
        raw[:, 0] = rng.integers(115, 130, len(raw))
    else:  # d (and dmin): finite, of either sign, wide in range
        n_scales = 2 if qtype in (T.Q4_K, T.Q2_K) else 1
        d = rng.choice([-1.0, 1.0], (len(raw), n_scales)) * 2.0 ** rng.uniform(-12, 2, (len(raw), n_scales))
        at = size - 4 if qtype == T.Q2_K else 0  # Q2_K's d and dmin close its block
        raw[:, at:at + 2 * n_scales] = d.astype(np.float16).view(np.uint8)
    for wq in (quantize(rng, gaussian(rng, (n_out, n_in)), qtype), raw.reshape(n_out, -1)):
        x = gaussian(rng, (33, n_in), 10.0 ** rng.uniform(-2, 2))
        want = np.stack([ggml_cpu.gemv(qtype, wq, n_out, x[t]) for t in range(x.shape[0])])
        for n_tok in (2, 3, 7, 8, 9, 16, 17, 33):
            for threads in (1, 2):
                for isa in ISAS:
                    assert_same_bits(_native.matmul(wq, qtype, n_out, x[:n_tok], isa=isa, threads=threads),
                                     want[:n_tok])


@pytest.mark.parametrize("qtype", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K], ids=lambda t: t.name)
def test_k_quants_equal_llama_cpp_at_every_token_count(ggml_cpu, qtype):
    """Every token count of a group (1..8, and 9: a group and one more), 8k rows and others
    (the several-rows kernels take 8 rows a step and leave the rest to the row kernels), at 1
    and 2 threads: llama.cpp's bits."""
    rng = np.random.default_rng(int(qtype) + 300)
    n_in = 3 * 256
    for n_out in (40, 37):
        repacked = qtype in GGMLCPU.REPACKED and n_out % 8 == 0
        wq = quantize(rng, gaussian(rng, (n_out, n_in), 10.0 ** rng.uniform(-2, 1)), qtype)
        x = gaussian(rng, (9, n_in), 10.0 ** rng.uniform(-2, 2))
        dot = ggml_cpu.gemv if repacked else ggml_cpu.vec_dot
        want = np.stack([dot(qtype, wq, n_out, x[t]) for t in range(x.shape[0])])
        for n_tok in range(1, x.shape[0] + 1):
            for threads in (1, 2):
                assert_same_bits(_native.matmul(wq, qtype, n_out, x[:n_tok], threads=threads), want[:n_tok])


@pytest.mark.parametrize("qtype", [*RAW_SCALE], ids=lambda t: t.name)
def test_random_blocks_equal_llama_cpp_kernels(ggml_cpu, qtype):
    """Random bytes as blocks (every grid row, sign pattern and scale): llama.cpp's bits on every
    path, one token alone and inside batches of 3, 8 and 9 tokens, at 1 and 2 threads."""
    rng = np.random.default_rng(int(qtype) + 200)
    n_out, n_in = 11, 5 * 256
    for trial in range(3):
        wq = raw_blocks(rng, qtype, n_out, n_in)
        x = gaussian(rng, (9, n_in), 10.0 ** rng.uniform(-2, 2))
        want = np.stack([ggml_cpu.vec_dot(qtype, wq, n_out, x[t]) for t in range(x.shape[0])])
        for isa in ISAS:
            for t in range(x.shape[0]):
                assert_same_bits(_native.matmul(wq, qtype, n_out, x[t], isa=isa, threads=1), want[t])
            for n_tok, threads in ((9, 2), (8, 1), (3, 2)):
                assert_same_bits(_native.matmul(wq, qtype, n_out, x[:n_tok], isa=isa, threads=threads), want[:n_tok])
        check_product(qtype, wq, n_out, x, want)


class GGMLFloat:
    """llama.cpp's float dot products: ggml_cpu_fp32_to_fp16 / _bf16 for the activations
    (F16 / BF16 weights), then ggml_vec_dot_f32 / _f16 / _bf16 per weight row."""

    def __init__(self, cpu: GGMLCPU):
        ctypes = cpu.c
        self.lib = lib = cpu.lib
        if not (lib.ggml_cpu_has_avx512() and lib.ggml_cpu_has_avx512_bf16()):
            pytest.skip("realm's float products are those of llama.cpp's x86 build with AVX-512 F and BF16")
        P = ctypes.c_void_p
        for name in ("f32", "f16", "bf16"):
            getattr(lib, f"ggml_vec_dot_{name}").argtypes = [ctypes.c_int, P, ctypes.c_size_t, P, ctypes.c_size_t, P,
                                                             ctypes.c_size_t, ctypes.c_int]
        for name in ("fp16", "bf16"):
            getattr(lib, f"ggml_cpu_fp32_to_{name}").argtypes = [P, P, ctypes.c_int64]

    def vec_dot(self, qtype: GGMLType, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        """y = W x for one token, W [n_out, n] as float32 / uint16 (f16 or bf16 bits)."""
        n = x.size
        if qtype == T.F32:
            xc = np.ascontiguousarray(x, dtype=np.float32)
        else:
            xc = np.zeros(n, dtype=np.uint16)
            conv = self.lib.ggml_cpu_fp32_to_fp16 if qtype == T.F16 else self.lib.ggml_cpu_fp32_to_bf16
            conv(np.ascontiguousarray(x).ctypes.data, xc.ctypes.data, n)
        fn = getattr(self.lib, f"ggml_vec_dot_{qtype.name.lower()}")
        w = np.ascontiguousarray(w)
        y = np.zeros(w.shape[0], dtype=np.float32)
        for r in range(w.shape[0]):
            fn(n, y[r:].ctypes.data, 0, w[r].ctypes.data, 0, xc.ctypes.data, 0, 1)
        return y


@pytest.fixture(scope="module")
def ggml_float(ggml_cpu):
    return GGMLFloat(ggml_cpu)


def float_weights(rng, qtype: GGMLType, n_out: int, n_in: int, kind: str) -> np.ndarray:
    """Weights as llama.cpp stores them (float32, or f16 / bf16 bits as uint16).  kind:
    "gauss" (scales 1e-3 .. 1e2), "wide" (magnitudes 2^-60 .. 2^60, zeros, subnormals of the
    type, an infinity), "tiny" (BF16 magnitudes 2^-75 .. 2^-50, where vdpbf16ps flushes its sums)."""
    if kind == "gauss":
        w = gaussian(rng, (n_out, n_in), 10.0 ** rng.uniform(-3, 2))
    else:
        lo, hi = (-60, 60) if kind == "wide" else (-75, -50)
        w = (rng.standard_normal((n_out, n_in)) * 2.0 ** rng.uniform(lo, hi, (n_out, n_in))).astype(np.float32)
        if kind == "wide":
            w[0, ::4] = 0
            w[1, ::3] = {T.F32: 2.0**-140, T.F16: 2.0**-20, T.BF16: 2.0**-128}[qtype]  # subnormals
            w[2, -1] = -np.inf                                                       # an infinite weight
    if qtype == T.F32:
        return w
    if qtype == T.F16:
        with np.errstate(over="ignore"):
            w = np.where(np.isinf(w), w, np.clip(w, -60000, 60000)).astype(np.float16).view(np.uint16)
        return w
    return bf16_bits(w)


def float_acts(rng, qtype: GGMLType, n_tok: int, n_in: int, kind: str) -> np.ndarray:
    """Activations to go with float_weights(kind): gaussian of a random scale, with f16 / bf16
    subnormals and (F16) values that overflow f16 to infinity in some rows."""
    if kind == "tiny":
        return (rng.standard_normal((n_tok, n_in)) * 2.0 ** rng.uniform(-75, -50, (n_tok, n_in))).astype(np.float32)
    x = gaussian(rng, (n_tok, n_in), 10.0 ** rng.uniform(-3, 3))
    x[0, ::3] = np.float32(2.0**-20)                 # f16 subnormal
    x[1, ::5] = np.float32(-(2.0**-130))             # f32 / bf16 subnormal
    if kind == "wide":
        x = x * (2.0 ** rng.uniform(-30, 30, (n_tok, n_in))).astype(np.float32)
    if qtype == T.F16 and n_tok > 2:
        x[2, 0] = np.float32(1e6)                    # rounds to f16 infinity: an infinite product
    return x


@pytest.mark.parametrize("qtype,kind", [(t, k) for t in FLOAT_TYPES for k in ("gauss", "wide")] + [(T.BF16, "tiny")],
                         ids=lambda v: v.name if isinstance(v, GGMLType) else v)
def test_float_products_equal_llama_cpp_kernels(ggml_float, qtype, kind):
    """One token's y = W x for F32 / F16 / BF16 weights, bit for bit llama.cpp's, on every path
    (AVX-512 on and off), alone and in a batch, on 1 and 2 threads: lengths that are and are not
    multiples of 64, 32, 16 and 8 (ggml's leftover loops); "tiny" BF16 values exercise the
    flushes of vdpbf16ps."""
    rng = np.random.default_rng(int(qtype) * 10 + len(kind))
    lengths = [1, 7, 8, 15, 16, 24, 31, 32, 48, 63, 64, 65, 72, 100, 127, 128, 136, 191, 256, 517]
    for n_in in lengths:
        n_out, n_tok = 9, 5
        w = float_weights(rng, qtype, n_out, n_in, kind)
        x = float_acts(rng, qtype, n_tok, n_in, kind)
        want = np.stack([ggml_float.vec_dot(qtype, w, x[t]) for t in range(n_tok)])
        if kind == "gauss":
            assert np.isfinite(want[:2]).all()  # subnormal activations: finite; row 2 of F16: infinite
        wb = w.view(np.uint8)
        had = _native.avx512()
        try:
            for isa in ISAS:
                for wide in ([True, False] if isa != "scalar" and had else [False]):
                    _native.avx512(wide)
                    for threads in (1, 2):
                        assert_same_bits(_native.matmul(wb, qtype, n_out, x, isa=isa, threads=threads), want)
                    for t in range(n_tok):
                        assert_same_bits(_native.matmul(wb, qtype, n_out, x[t], isa=isa, threads=1), want[t])
        finally:
            _native.avx512(had)


def test_bf16_flush_is_decided_after_rounding(ggml_float):
    """vdpbf16ps flushes a sum that is tiny once rounded to 24 bits with unbounded exponent:
    2^-126 - 1.5 * 2^-151 rounds to 2^-126 - 2^-150 there (flushed to 0), though the subnormal
    grid an fma rounds to gives 2^-126; 2^-126 - 2^-152 stays 2^-126."""
    for even, want in ((-1.5 * 2.0**-76, 0.0), (-(2.0**-76), 2.0**-126)):
        x = np.zeros((1, 64), dtype=np.float32)
        w = np.zeros((1, 64), dtype=np.float32)
        x[0, 1], w[0, 1] = 2.0**-63, 2.0**-63        # the odd product first: 2^-126
        x[0, 0], w[0, 0] = 2.0**-75 if even == -1.5 * 2.0**-76 else 2.0**-76, even
        wb = bf16_bits(w)
        ref = ggml_float.vec_dot(T.BF16, wb, x[0])
        assert ref[0] == np.float32(want)
        had = _native.avx512()
        try:
            for isa in ISAS:
                for wide in ([True, False] if isa != "scalar" and had else [False]):
                    _native.avx512(wide)
                    assert_same_bits(_native.matmul(wb.view(np.uint8), T.BF16, 1, x, isa=isa)[0], ref)
        finally:
            _native.avx512(had)


def test_float_products_of_a_large_matrix_equal_llama_cpp(ggml_float):
    """A 2048-column slice of rows long enough to take several tiles and threads."""
    rng = np.random.default_rng(31)
    for qtype in FLOAT_TYPES:
        w = float_weights(rng, qtype, 70, 2048 + 40, "gauss")
        x = gaussian(rng, (9, 2048 + 40), 2.0)
        want = np.stack([ggml_float.vec_dot(qtype, w, x[t]) for t in range(9)])
        for isa in ISAS:
            assert_same_bits(_native.matmul(w.view(np.uint8), qtype, 70, x, isa=isa, threads=2), want)


@pytest.mark.parametrize("isa", ISAS)
def test_round_act_equals_llama_cpp_conversions(ggml_float, isa):
    """REALM_ACT_F16 / _BF16 hold what ggml_cpu_fp32_to_fp16 / _bf16 make of the row."""
    x = special_rows(np.random.default_rng(4), 6, 131)
    for act, name, dtype in (("f16", "fp16", np.float16), ("bf16", "bf16", np.uint16)):
        ref = np.zeros(x.shape, dtype=np.uint16)
        getattr(ggml_float.lib, f"ggml_cpu_fp32_to_{name}")(x.ctypes.data, ref.ctypes.data, x.size)
        got = _native.act_unpack(act, _native.quantize_act(act, x, isa=isa), *x.shape)["x"]
        if act == "f16":
            assert_same_bits(got, ref.view(np.float16).astype(np.float32))
        else:
            np.testing.assert_array_equal(got, ref)


def model_tensors(path, names):
    f = GGUFFile.open(path)
    return f, [f.tensors[n] for n in names]


@pytest.mark.parametrize("model,names", [
    ("smollm2", ["blk.0.attn_q.weight", "blk.3.attn_k.weight", "blk.7.ffn_down.weight", "token_embd.weight"]),
    ("gemma3", ["blk.0.attn_q.weight", "blk.0.attn_output.weight", "blk.1.ffn_down.weight",
                "blk.0.ffn_down.weight", "blk.0.attn_v.weight", "blk.2.attn_v.weight", "token_embd.weight"]),
])
def test_real_model_tensors(model, names, request):
    f, infos = model_tensors(request.getfixturevalue(f"{model}_path"), names)
    rng = np.random.default_rng(5)
    seen = set()
    with f:
        for info in infos:
            raw = f.view(info)
            n_out, n_in = info.shape
            if n_out > 2048:  # the embedding doubles as output matrix: take a slice of rows
                start = int(rng.integers(0, n_out - 2048))
                raw, n_out = raw[start:start + 2048], 2048
            x = gaussian(rng, (3, n_in), 2.0)
            ys = [_native.matmul(raw, info.dtype, n_out, x, isa=isa) for isa in ISAS]
            check_product(info.dtype, np.ascontiguousarray(raw), n_out, x, ys[0])
            for y in ys[1:]:
                assert_same_bits(y, ys[0])
            seen.add(info.dtype)
    expected = {"smollm2": {T.Q4_1, T.Q8_0}, "gemma3": {T.Q5_0, T.Q4_K, T.Q6_K, T.Q8_0}}[model]
    assert seen == expected


# ---- bad input ----

def test_unsupported_types_are_refused():
    w = np.zeros(64, dtype=np.uint8)
    x = np.zeros((1, 256), dtype=np.float32)
    for bad in (T.Q8_K, T.Q8_1, "nonsense", 99):  # Q8_K: a row, no dot kernel; Q8_1: no row
        with pytest.raises(ValueError):
            _native.matmul(w, bad, 1, x)
    with pytest.raises(ValueError, match="Q8_K"):
        _native.act_type(T.Q8_K)


def test_bad_shapes_and_buffers_are_refused():
    rng = np.random.default_rng(0)
    wq = ggml().quantize(gaussian(rng, (4, 64)), T.Q4_0)
    x = gaussian(rng, (2, 64))
    with pytest.raises(ValueError, match="bytes"):
        _native.matmul(wq[:-1], T.Q4_0, 4, x)              # truncated weights
    with pytest.raises(ValueError, match="bytes"):
        _native.matmul(wq, T.Q4_0, 5, x)                   # wrong row count
    with pytest.raises(ValueError, match="multiple"):
        _native.matmul(wq, T.Q4_0, 4, x[:, :48].copy())    # n_in not whole blocks
    with pytest.raises(TypeError, match="float32"):
        _native.matmul(wq, T.Q4_0, 4, x.astype(np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        _native.matmul(wq, T.Q4_0, 4, np.asfortranarray(np.repeat(x, 2, axis=0)))
    with pytest.raises(ValueError, match="dimensions"):
        _native.matmul(wq, T.Q4_0, 4, x.reshape(2, 1, 64))
    with pytest.raises(TypeError):
        _native.matmul(wq.view(np.int8), T.Q4_0, 4, x)
    with pytest.raises(TypeError):
        _native.matmul([1, 2, 3], T.Q4_0, 4, x)
    with pytest.raises(ValueError, match="shape"):
        _native.matmul(wq, T.Q4_0, 4, x, out=np.empty((4, 2), dtype=np.float32))
    with pytest.raises(TypeError):
        _native.matmul(wq, T.Q4_0, 4, x, out=np.empty((2, 4), dtype=np.float64))
    with pytest.raises(ValueError, match="isa"):
        _native.matmul(wq, T.Q4_0, 4, x, isa="sse9")
    with pytest.raises(ValueError, match="threads"):
        _native.matmul(wq, T.Q4_0, 4, x, threads=-1)
    buf = _native.quantize_act("q8", x)
    with pytest.raises(ValueError, match="act_buf"):
        _native.matmul_q(wq, T.Q4_0, 4, buf[:-64], 2, 64)
    with pytest.raises(ValueError, match="act_buf"):
        _native.matmul_q(wq, T.Q4_0, 4, buf, 3, 64)
    with pytest.raises(ValueError, match="activation type"):
        _native.quantize_act("q4", x)
    with pytest.raises(ValueError):
        _native.quantize_act("q8_k", x)                   # 64 is not whole 256-blocks


def test_empty_batches():
    wq = ggml().quantize(np.ones((3, 32), dtype=np.float32), T.Q8_0)
    assert _native.matmul(wq, T.Q8_0, 3, np.zeros((0, 32), dtype=np.float32)).shape == (0, 3)
    assert _native.matmul(wq[:0], T.Q8_0, 0, np.ones((2, 32), dtype=np.float32)).shape == (2, 0)
