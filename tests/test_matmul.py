"""realm._compute's matrix products y = x W^T against float64 references.

Weights come from llama.cpp's own quantizer (ggml_quantize_chunk) and from the
real models' tensors; W~ below is their exact dequantization (realm.dequantize,
itself bit-exact with llama.cpp).  For the quantized formats the kernels first
quantize each activation row to int8 blocks (32 values, or 256 for the
K-quants): x^ = d * q with d = max|x| / 127 per block.  Two checks follow:

* tight:  |y - W~ x^| <= 8 (nb + 4) 2^-24 M, with nb the number of blocks in a
  row and M = sum over 32-value groups g of max_g|W~| * sum_g|x^|.  Every block
  product the kernel sums is exact in integers and then scaled in f32; each
  scaled term is at most 3 max_g|W~| sum_g|x^| (a quantized value times its scale
  is within the block's range, a block minimum within its extremes), and f32
  recursive summation of nb terms errs by at most (nb + 2) u of the sum of the
  terms' magnitudes, plus 2u per term for the scale products.
* against the f32 activations: |y - W~ x| <= sum over activation blocks b of
  0.50002 d_b sum_b|W~| + the tight bound, since |x - x^| <= d (1/2 + 127 * 2u)
  element-wise (round to nearest of x * (1/d), both products rounded).

The scalar and AVX2 paths, any thread count and any batch split give the same
bits for the quantized formats (matmul.h defines the float steps; the integer
parts are exact).  F32/F16/BF16 multiply the f32 activations directly: the
AVX2 path sums in other partial sums than the scalar one, so they agree within
the recursive-summation bound (n + 8) 2^-24 sum|W~||x| instead."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realm import GGMLType, _compute, _quant, dequantize
from realm.reader import GGUFFile
from conftest import ggml

T = GGMLType
FLOAT_TYPES = [T.F32, T.F16, T.BF16]
Q32_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
ALL_TYPES = FLOAT_TYPES + Q32_TYPES + K_TYPES
ISAS = sorted({"scalar", _quant.best_isa()})
U = 2.0**-24


def act_block(qtype: GGMLType) -> int:
    return {"f32": 1, "q8": 32, "q8_k": 256}[_compute.act_type(qtype)]


def weight_block(qtype: GGMLType) -> int:
    return 1 if qtype in FLOAT_TYPES else act_block(qtype)


def gaussian(rng, shape, scale=1.0, outliers=True) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
    if outliers and x.size:  # the odd large value real activations and weights have
        flat = x.reshape(-1)
        flat[rng.integers(0, flat.size, max(1, flat.size // 97))] *= 9
    return x


def np_quantize_act(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An independent NumPy model of the activation quantizer (matmul.h):
    d = max|x| / 127 (NaNs skipped), q = rint(x * (1/d)) clamped to [-127, 127], NaN -> -127,
    blocks with max|x| < 2^-100 all zero.  Returns (q int8 [n_tok, n_in], d float32 [n_tok, blocks])."""
    n_tok, n_in = x.shape
    xb = x.reshape(n_tok, n_in // k, k).astype(np.float32)
    with np.errstate(all="ignore"):
        a = np.abs(xb)
        amax = np.where(np.isnan(a), np.float32(0), a).max(axis=-1)
        tiny = ~(amax >= np.float32(2.0**-100))
        d = np.where(tiny, np.float32(0), amax / np.float32(127)).astype(np.float32)
        inv = np.where(tiny, np.float32(0), np.float32(1) / d).astype(np.float32)
        r = np.rint((xb * inv[..., None]).astype(np.float32))
        bad = np.isnan(r) | (r >= 2.0**31) | (r < -(2.0**31))
        q = np.where(bad, -127, np.clip(np.nan_to_num(r), -127, 127)).astype(np.int8)
    return q.reshape(n_tok, n_in), d


def x_hat(qtype: GGMLType, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The activations the kernels multiply (float64) and their block scales."""
    act = _compute.act_type(qtype)
    if act == "f32":
        return x.astype(np.float64), np.zeros((x.shape[0], 0))
    k = act_block(qtype)
    parts = _compute.act_unpack(act, _compute.quantize_act(act, x), *x.shape)
    d = parts["d"].astype(np.float64)
    return parts["qs"].astype(np.float64) * np.repeat(d, k, axis=1), d


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
    xh, d = x_hat(qtype, x)
    if qtype in FLOAT_TYPES:
        tol = (n_in + 8) * U * (np.abs(xh) @ np.abs(w).T)
        err = np.abs(y - xh @ w.T)
        assert (err <= tol).all(), f"max excess {(err - tol).max():.3g}"
        return
    nb = n_in // act_block(qtype)
    tight = 8 * (nb + 4) * U * group_bound(w, xh)
    err = np.abs(y - xh @ w.T)
    assert (err <= tight).all(), f"tight bound exceeded by {(err - tight).max():.3g} (bound {tight.max():.3g})"
    k = act_block(qtype)
    act_err = (0.50002 * d) @ np.abs(w).reshape(n_out, -1, k).sum(axis=-1).T
    err = np.abs(y - x.astype(np.float64) @ w.T)
    assert (err <= act_err + tight).all(), f"activation bound exceeded by {(err - act_err - tight).max():.3g}"


def assert_same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(nan_a, nan_b)
    np.testing.assert_array_equal(a[~nan_a].view(np.uint32), b[~nan_b].view(np.uint32))


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
    wq = ggml().quantize(gaussian(rng, (n_out, n_in), wscale), qtype)
    x = gaussian(rng, (n_tok, n_in), xscale)
    ys = {isa: _compute.matmul(wq, qtype, n_out, x, isa=isa, threads=1) for isa in ISAS}
    for y in ys.values():
        assert y.shape == (n_tok, n_out) and y.dtype == np.float32
        check_product(qtype, wq, n_out, x, y)
    if qtype not in FLOAT_TYPES:
        for y in ys.values():
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
    x[5, :k] = np.float32(0.5) * np.arange(k, dtype=np.float32) - 3  # exact ties at x * (1/d)
    x[6, :k] = np.float32(2.0**-99) * rng.standard_normal(k, dtype=np.float32)
    buf = _compute.quantize_act(act, x, isa=isa)
    parts = _compute.act_unpack(act, buf, n_tok, n_in)
    q, d = np_quantize_act(x, k)
    np.testing.assert_array_equal(parts["qs"], q)
    assert_same_bits(parts["d"], d)
    sums = q.astype(np.int32).reshape(n_tok, -1, 32 if act == "q8" else 16).sum(axis=-1)
    np.testing.assert_array_equal(parts["sums" if act == "q8" else "bsums"], sums)


@pytest.mark.parametrize("qtype", Q32_TYPES + K_TYPES, ids=lambda t: t.name)
def test_special_activations_give_the_same_bits_on_every_path(qtype):
    """Inf, NaN and huge activations give garbage, but the same garbage everywhere."""
    rng = np.random.default_rng(3)
    n_in = 3 * weight_block(qtype)
    wq = ggml().quantize(gaussian(rng, (9, n_in)), qtype)
    x = gaussian(rng, (5, n_in))
    x[0, 1], x[1, 40], x[2, -1], x[3, 0] = np.inf, np.nan, -np.inf, np.float32(3.4e38)
    ys = [_compute.matmul(wq, qtype, 9, x, isa=isa) for isa in ISAS]
    for y in ys:
        assert_same_bits(y, ys[0])
    np.testing.assert_array_equal(np.isfinite(ys[0][4]), True)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_thread_count_and_batch_split_do_not_change_bits(qtype):
    rng = np.random.default_rng(int(qtype))
    n_out, n_tok = 203, 9
    n_in = 4 * 256 if qtype in K_TYPES else 17 * 32 if qtype in Q32_TYPES else 517
    wq = ggml().quantize(gaussian(rng, (n_out, n_in)), qtype)
    x = gaussian(rng, (n_tok, n_in))
    for isa in ISAS:
        ref = _compute.matmul(wq, qtype, n_out, x, isa=isa, threads=1)
        for threads in (2, 3):
            assert_same_bits(_compute.matmul(wq, qtype, n_out, x, isa=isa, threads=threads), ref)
        for t in range(n_tok):  # one token alone = the same token inside the batch
            assert_same_bits(_compute.matmul(wq, qtype, n_out, x[t], isa=isa), ref[t])


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q5_0, T.Q4_K, T.Q6_K, T.F16], ids=lambda t: t.name)
def test_shared_activations(qtype):
    """Q/K/V-style reuse: one quantize_act buffer serves several weight matrices."""
    rng = np.random.default_rng(11)
    n_in, n_tok = 512, 6
    x = gaussian(rng, (n_tok, n_in))
    act = _compute.act_type(qtype)
    buf = x if act == "f32" else _compute.quantize_act(act, x)
    for n_out in (64, 17):
        wq = ggml().quantize(gaussian(rng, (n_out, n_in)), qtype)
        out = np.full((n_tok, n_out), np.nan, dtype=np.float32)
        y = _compute.matmul_q(wq, qtype, n_out, buf, n_tok, n_in, out=out)
        assert y is out
        assert_same_bits(y, _compute.matmul(wq, qtype, n_out, x))


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
            ys = [_compute.matmul(raw, info.dtype, n_out, x, isa=isa) for isa in ISAS]
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
    for bad in (T.Q8_K, T.IQ2_XXS, "nonsense", 99):
        with pytest.raises(ValueError):
            _compute.matmul(w, bad, 1, x)
    with pytest.raises(ValueError, match="Q8_K"):
        _compute.act_type(T.Q8_K)


def test_bad_shapes_and_buffers_are_refused():
    rng = np.random.default_rng(0)
    wq = ggml().quantize(gaussian(rng, (4, 64)), T.Q4_0)
    x = gaussian(rng, (2, 64))
    with pytest.raises(ValueError, match="bytes"):
        _compute.matmul(wq[:-1], T.Q4_0, 4, x)              # truncated weights
    with pytest.raises(ValueError, match="bytes"):
        _compute.matmul(wq, T.Q4_0, 5, x)                   # wrong row count
    with pytest.raises(ValueError, match="multiple"):
        _compute.matmul(wq, T.Q4_0, 4, x[:, :48].copy())    # n_in not whole blocks
    with pytest.raises(TypeError, match="float32"):
        _compute.matmul(wq, T.Q4_0, 4, x.astype(np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        _compute.matmul(wq, T.Q4_0, 4, np.asfortranarray(np.repeat(x, 2, axis=0)))
    with pytest.raises(ValueError, match="dimensions"):
        _compute.matmul(wq, T.Q4_0, 4, x.reshape(2, 1, 64))
    with pytest.raises(TypeError):
        _compute.matmul(wq.view(np.int8), T.Q4_0, 4, x)
    with pytest.raises(TypeError):
        _compute.matmul([1, 2, 3], T.Q4_0, 4, x)
    with pytest.raises(ValueError, match="shape"):
        _compute.matmul(wq, T.Q4_0, 4, x, out=np.empty((4, 2), dtype=np.float32))
    with pytest.raises(TypeError):
        _compute.matmul(wq, T.Q4_0, 4, x, out=np.empty((2, 4), dtype=np.float64))
    with pytest.raises(ValueError, match="isa"):
        _compute.matmul(wq, T.Q4_0, 4, x, isa="sse9")
    with pytest.raises(ValueError, match="threads"):
        _compute.matmul(wq, T.Q4_0, 4, x, threads=-1)
    buf = _compute.quantize_act("q8", x)
    with pytest.raises(ValueError, match="act_buf"):
        _compute.matmul_q(wq, T.Q4_0, 4, buf[:-64], 2, 64)
    with pytest.raises(ValueError, match="act_buf"):
        _compute.matmul_q(wq, T.Q4_0, 4, buf, 3, 64)
    with pytest.raises(ValueError, match="activation type"):
        _compute.quantize_act("q4", x)
    with pytest.raises(ValueError):
        _compute.quantize_act("q8_k", x)                   # 64 is not whole 256-blocks


def test_empty_batches():
    wq = ggml().quantize(np.ones((3, 32), dtype=np.float32), T.Q8_0)
    assert _compute.matmul(wq, T.Q8_0, 3, np.zeros((0, 32), dtype=np.float32)).shape == (0, 3)
    assert _compute.matmul(wq[:0], T.Q8_0, 0, np.ones((2, 32), dtype=np.float32)).shape == (2, 0)
