"""realm._native's transformer ops against straightforward NumPy float64 models, and
against llama.cpp's own functions.

Every op performs llama.cpp's float steps (csrc/ops.h) and gives the same bits on
the scalar and AVX2 paths; each is held to a float64 model within the error those
steps allow (f16 roundings included), and, where libggml-cpu exports the function,
to llama.cpp's bits: its GELU table (x86 builds with FMA), and its exp, softmax,
SwiGLU and f16 dot products as an AVX-512 build computes them.  u = 2^-24 below."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_same_bits, require
from realm import _native
from realm.errors import InvalidArgumentError

ISAS = sorted({"scalar", _native.best_isa()})
U = 2.0**-24
H = 2.0**-11  # f16 rounding, relative


def libm(name: str):
    """A float function of the C library (the one llama.cpp's ggml-cpu calls too)."""
    import ctypes
    import ctypes.util

    fn = getattr(ctypes.CDLL(ctypes.util.find_library("m")), name)
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * (2 if name == "powf" else 1)
    return fn


class GGMLCPU:
    """libggml-cpu's exported ops (as llama-cpp-python built it), through ctypes."""

    def __init__(self):
        import ctypes
        import platform

        require("llama_cpp")
        from ggml_ref import load_ggml_cpu

        self.lib = lib = load_ggml_cpu()
        self.x86 = platform.machine() in ("x86_64", "AMD64")
        P = ctypes.c_void_p
        lib.ggml_vec_dot_f16.argtypes = [ctypes.c_int, P, ctypes.c_size_t, P, ctypes.c_size_t, P, ctypes.c_size_t,
                                         ctypes.c_int]
        lib.ggml_vec_soft_max_f32.argtypes = [ctypes.c_int, P, P, ctypes.c_float]
        lib.ggml_vec_soft_max_f32.restype = ctypes.c_double
        lib.ggml_vec_swiglu_f32.argtypes = [ctypes.c_int, P, P, P]
        self.c = ctypes

    def need(self, feature: str) -> None:
        """Skip unless llama.cpp was built with the kernels realm's ops follow."""
        if not (self.x86 and getattr(self.lib, f"ggml_cpu_has_{feature}")()):
            pytest.skip(f"this llama.cpp build has no {feature} kernels, whose bits realm's ops repeat")

    def gelu_table(self) -> np.ndarray:
        return np.ctypeslib.as_array((self.c.c_uint16 * 65536).in_dll(self.lib, "ggml_table_gelu_f16")).copy()

    def dot_f16(self, x: np.ndarray, y: np.ndarray) -> np.float32:
        out = self.c.c_float()
        self.lib.ggml_vec_dot_f16(x.size, self.c.byref(out), 0, x.ctypes.data, 0, y.ctypes.data, 0, 1)
        return np.float32(out.value)


@pytest.fixture(scope="module")
def ggml_cpu():
    return GGMLCPU()


def assert_within(err: np.ndarray, tol) -> None:
    """err < tol element-wise (tol broadcast), reporting the worst excess."""
    tol = np.broadcast_to(tol, err.shape)
    bad = ~(err < tol)
    assert not bad.any(), f"{bad.sum()} values out of tolerance; worst excess {(err - tol)[bad].max():.3g}"


def special_floats() -> np.ndarray:
    return np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 1e-30, 3.4e38, -3.4e38,
                     9.99, 10.0, 10.01, -9.99, -10.0, -10.01, 88.7, 88.73, -87.4, -103.9, -104.1, 1.0, -1.0],
                    dtype=np.float32)


# ---- RMSNorm ----

@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), n=st.integers(1, 700), scale=st.floats(1e-3, 1e3),
       seed=st.integers(0, 2**32 - 1), weighted=st.booleans())
def test_rmsnorm_matches_float64(rows, n, scale, seed, weighted):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * scale).astype(np.float32)
    w = rng.uniform(-3, 3, n).astype(np.float32) if weighted else None
    eps = 1e-6
    y = _native.rmsnorm(x, w, eps)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps) * (1.0 if w is None else w.astype(np.float64))
    assert_within(np.abs(y - ref), 8 * U * np.abs(ref) + 1e-37)


def test_rmsnorm_in_place_and_by_head():
    """Q/K norms of gemma3 run per head: rows of head_dim, in place."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 4, 256)).astype(np.float32)
    w = rng.standard_normal(256).astype(np.float32)
    expected = _native.rmsnorm(q.copy(), w, 1e-6)
    out = _native.rmsnorm(q, w, 1e-6, out=q)
    assert out is q
    assert_same_bits(q, expected)


# ---- RoPE ----

def rope_angles(pos: np.ndarray, n_rot: int, base: float, freq_scale: float,
                factors: np.ndarray | None = None) -> np.ndarray:
    """ggml's rope-cache angles [n_tok, n_rot/2], in float32 as it makes them: theta starts at
    the position and is multiplied by powf(base, -2/n_rot) after each pair; the angle is
    freq_scale * theta, or freq_scale * (theta / factor) with llama3's frequency factors."""
    step = np.float32(libm("powf")(np.float32(base), np.float32(-2.0) / np.float32(n_rot)))
    theta, out = pos.astype(np.float32), []
    for i in range(n_rot // 2):
        out.append(np.float32(freq_scale) * (theta if factors is None else theta / factors[i]))
        theta = theta * step
    return np.stack(out, axis=-1)


def rope_model(x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, neox: bool, freq_scale: float) -> np.ndarray:
    """RoPE in float64 at ggml's angles: pairs (2i, 2i+1), or (i, i + n_rot/2) for neox."""
    y = x.astype(np.float64)
    half = n_rot // 2
    i = np.arange(half)
    theta = rope_angles(pos, n_rot, base, freq_scale).astype(np.float64)
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    ia, ib = (i, i + half) if neox else (2 * i, 2 * i + 1)
    a, b = y[..., ia].copy(), y[..., ib].copy()
    y[..., ia] = a * c - b * s
    y[..., ib] = a * s + b * c
    return y


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("head_dim,n_rot", [(64, 64), (256, 256), (80, 32), (6, 2)])
def test_rope_matches_float64_model(neox, head_dim, n_rot):
    rng = np.random.default_rng(head_dim + neox)
    n_tok, n_head = 7, 3
    x = rng.standard_normal((n_tok, n_head, head_dim)).astype(np.float32)
    pos = np.array([0, 1, 2, 17, 511, 8191, 32767], dtype=np.int32)
    for base, fs in ((10000.0, 1.0), (1e6, 0.125)):
        ref = rope_model(x, pos, n_rot, base, neox, fs)
        ys = [_native.rope(x.copy(), pos, n_rot, base, neox=neox, freq_scale=fs, isa=isa) for isa in ISAS]
        tol = 6 * U * (np.abs(x) + np.abs(x)[..., ::-1]).max(axis=-1, keepdims=True) + 1e-30
        for y in ys:
            assert_within(np.abs(y - ref), tol)
            assert_same_bits(y, ys[0])
            np.testing.assert_array_equal(y[..., n_rot:], x[..., n_rot:])  # the rest is untouched


def test_rope_table_is_cosf_sinf_of_ggml_angles():
    pos = np.array([0, 5, 1000, 100000], dtype=np.int32)
    for base, fs in ((10000.0, 1.0), (1e6, 0.25)):
        cs = _native.rope_table(pos, 64, base, fs)
        theta = rope_angles(pos, 64, base, fs)
        cosf, sinf = np.vectorize(libm("cosf"), otypes=[np.float32]), np.vectorize(libm("sinf"), otypes=[np.float32])
        np.testing.assert_array_equal(cs[:, 0::2], cosf(theta))
        np.testing.assert_array_equal(cs[:, 1::2], sinf(theta))
    factors = np.random.default_rng(1).uniform(1.0, 8.0, 32).astype(np.float32)  # llama3's rope_freqs
    cs = _native.rope_table(pos, 64, 5e5, 1.0, factors)
    theta = rope_angles(pos, 64, 5e5, 1.0, factors)
    np.testing.assert_array_equal(cs[:, 0::2], cosf(theta))
    np.testing.assert_array_equal(cs[:, 1::2], sinf(theta))
    assert not np.array_equal(cs, _native.rope_table(pos, 64, 5e5, 1.0))
    with pytest.raises(InvalidArgumentError):
        _native.rope_table(pos, 64, 5e5, 1.0, factors[:31])
    x = np.random.default_rng(0).standard_normal((4, 2, 64)).astype(np.float32)
    cs = _native.rope_table(pos, 64, 10000.0)
    assert_same_bits(_native.rope(x.copy(), pos, 64, 10000.0, neox=False, table=cs),
                     _native.rope(x.copy(), pos, 64, 10000.0, neox=False))


# ---- attention ----

def attention_model(q, k, v, pos, n_kv_head, scale, window):
    """softmax(scale q k^T + causal/sliding-window mask) v in float64, grouped-query heads.
    With an f16 cache the kernels round q and the weights p to f16 (as llama.cpp): the
    tolerance adds 2^-11 relative on each (2^-25 absolute for subnormal weights)."""
    n_tok, n_head, d = q.shape
    group = n_head // n_kv_head
    k64 = np.repeat(k.astype(np.float64), group, axis=1)  # [n_ctx, n_head, d]
    v64 = np.repeat(v.astype(np.float64), group, axis=1)
    s = np.einsum("thd,jhd->thj", q.astype(np.float64), k64) * scale
    j = np.arange(k.shape[0])[None, None, :]
    p = pos[:, None, None]
    visible = (j <= p) & ((j > p - window) if window > 0 else True)
    s = np.where(visible, s, -np.inf)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    out = np.einsum("thj,jhd->thd", w, v64)
    # tolerance: an error e in the scores moves the weights by about 2e (relative),
    # the f32 sums add a few u per term
    f16 = k.dtype == np.float16
    e = ((d + 2) * U + f16 * H) * scale * np.einsum("thd,jhd->thj", np.abs(q.astype(np.float64)), np.abs(k64)).max(axis=-1)
    n = visible.sum(axis=-1)
    tol = np.abs(v64).max(axis=(0, 2))[None, :] * (3 * e + 8 * (n + d) * U + f16 * (H + n * 2.0**-25))
    return out, tol[..., None]


CASES = [  # n_head, n_kv_head, head_dim
    (9, 3, 64),     # SmolLM2
    (4, 1, 256),    # Gemma3-270M
    (8, 8, 32),     # no grouping, a head shorter than the 64 lanes (summed one by one)
    (4, 2, 80),     # 64 lanes and a tail
    (12, 1, 16),    # more heads per kv head than one item takes
    (6, 2, 12),     # head_dim not a multiple of 8
]


@pytest.mark.parametrize("n_head,n_kv_head,head_dim", CASES)
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("window", [0, 5, 100])
def test_attention_matches_float64_model(n_head, n_kv_head, head_dim, kv_dtype, window):
    rng = np.random.default_rng(n_head * 7 + head_dim + window)
    n_ctx = 150  # more than two blocks of 64 keys
    k = (rng.standard_normal((n_ctx, n_kv_head, head_dim)) * 2).astype(kv_dtype)
    v = rng.standard_normal((n_ctx, n_kv_head, head_dim)).astype(kv_dtype)
    for pos in (np.array([n_ctx - 1]), np.arange(n_ctx - 20, n_ctx), np.array([0, 3, 64, 65, 149, 100])):
        pos = pos.astype(np.int32)
        q = (rng.standard_normal((pos.size, n_head, head_dim)) * 2).astype(np.float32)
        scale = 1 / np.sqrt(head_dim)
        ref, tol = attention_model(q, k, v, pos, n_kv_head, scale, window)
        outs = [_native.attention(q, k, v, pos, n_kv_head=n_kv_head, window=window, isa=isa, threads=threads)
                for isa in ISAS for threads in (1, 2, 3)]
        for out in outs:
            assert out.shape == q.shape
            assert_within(np.abs(out - ref), tol)
            assert_same_bits(out, outs[0])  # neither the path nor the thread count changes the bits


def test_attention_given_scale_and_batch_invariance():
    rng = np.random.default_rng(4)
    k = rng.standard_normal((40, 2, 32)).astype(np.float16)
    v = rng.standard_normal((40, 2, 32)).astype(np.float16)
    q = rng.standard_normal((10, 4, 32)).astype(np.float32)
    pos = np.arange(30, 40, dtype=np.int32)
    ref, tol = attention_model(q, k, v, pos, 2, 0.0625, 0)
    out = _native.attention(q, k, v, pos, n_kv_head=2, scale=0.0625)
    assert_within(np.abs(out - ref), tol)
    for t in range(10):  # a query alone = the same query in the batch
        alone = _native.attention(q[t:t + 1].copy(), k, v, pos[t:t + 1].copy(), n_kv_head=2, scale=0.0625)
        assert_same_bits(alone[0], out[t])


def llama_cpp_attention(ggml_cpu, q, k, v, pos, n_kv_head, scale, window, n_cells=256):
    """llama.cpp's attention for one decoded token without flash attention, from its own
    functions: q to f16, kq = ggml_vec_dot_f16 against each of n_cells cached keys, scaled and
    masked (-inf), ggml_vec_soft_max_f32 then * (float)(1 / sum), to f16, and
    ggml_vec_dot_f16 of each V column with it (ggml_compute_forward_soft_max_f32, mul_mat)."""
    n_tok, n_head, d = q.shape
    group = n_head // n_kv_head
    kc = np.zeros((n_cells, n_kv_head, d), np.float16)
    kc[:k.shape[0]] = k
    vt = np.zeros((n_kv_head, d, n_cells), np.float16)
    vt[:, :, :v.shape[0]] = v.transpose(1, 2, 0)
    out = np.zeros(q.shape, np.float32)
    for t in range(n_tok):
        j = np.arange(n_cells)
        visible = (j <= pos[t]) & ((j > pos[t] - window) if window > 0 else True)
        for h in range(n_head):
            g = h // group
            q16 = q[t, h].astype(np.float16)
            kq = np.array([ggml_cpu.dot_f16(np.ascontiguousarray(kc[c, g]), q16) for c in range(n_cells)], np.float32)
            w = np.where(visible, kq * np.float32(scale), np.float32(-np.inf)).astype(np.float32)
            e = np.zeros(n_cells, np.float32)
            total = ggml_cpu.lib.ggml_vec_soft_max_f32(n_cells, e.ctypes.data, w.ctypes.data, np.float32(w.max()))
            p16 = (e * np.float32(1.0 / total)).astype(np.float16)
            out[t, h] = [ggml_cpu.dot_f16(np.ascontiguousarray(vt[g, i]), p16) for i in range(d)]
    return out


@pytest.mark.parametrize("n_head,n_kv_head,head_dim", [(9, 3, 64), (4, 1, 256), (4, 2, 80), (2, 2, 32)])
@pytest.mark.parametrize("window", [0, 20])
def test_attention_equals_llama_cpp(ggml_cpu, n_head, n_kv_head, head_dim, window):
    ggml_cpu.need("avx512")
    rng = np.random.default_rng(head_dim + window)
    n_ctx = 90
    k = (rng.standard_normal((n_ctx, n_kv_head, head_dim)) * 2).astype(np.float16)
    v = rng.standard_normal((n_ctx, n_kv_head, head_dim)).astype(np.float16)
    pos = np.array([0, 17, 63, 64, 89], dtype=np.int32)
    q = (rng.standard_normal((pos.size, n_head, head_dim)) * 2).astype(np.float32)
    want = llama_cpp_attention(ggml_cpu, q, k, v, pos, n_kv_head, 1 / np.sqrt(head_dim), window)
    for isa in ISAS:
        out = _native.attention(q, k, v, pos, n_kv_head=n_kv_head, window=window, isa=isa)
        assert_same_bits(out, want)


# ---- element-wise ----

def gelu_model(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3), with ggml's cut-offs at +-10.
    Evaluated as x / (1 + exp(-2u)) (the same function: (1 + tanh u) / 2 = 1 / (1 + e^-2u)),
    since 1 + tanh u cancels catastrophically in float64 for negative x."""
    x = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
    with np.errstate(all="ignore"):
        y = x / (1 + np.exp(-2 * u))
    return np.where(x >= 10, x, np.where(x <= -10, 0.0, y))


def test_gelu_model_is_the_tanh_form():
    x = np.linspace(-4, 4, 1001)
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(gelu_model(x), tanh_form, rtol=1e-12, atol=1e-15)


def geglu_table_model(gate: np.ndarray) -> np.ndarray:
    """ggml's GGML_GELU_FP16 GELU in float64: the f16 rounding of gelu at gate rounded to f16
    (gate itself past +-10), as float64."""
    with np.errstate(over="ignore"):
        g16 = gate.astype(np.float16).astype(np.float64)
        table = gelu_model(g16).astype(np.float16).astype(np.float64)
    return np.where(gate >= 10, gate.astype(np.float64), np.where(gate <= -10, 0.0, table))


def test_geglu_matches_f16_table_model():
    """Within one f16 ulp of the float64 model at the f16 input, plus |x| 2^-23: ggml evaluates
    the tanh form in f32 before rounding to f16, and for negative x its 1 + tanh(u) cancels
    (an absolute error of a few 2^-24 there)."""
    rng = np.random.default_rng(2)
    gate = np.concatenate([rng.standard_normal(5000) * 4, np.linspace(-12, 12, 4801)]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    model = geglu_table_model(gate)
    ulp16 = np.maximum(np.abs(model) * 2.0**-10, 2.0**-24)
    tol = np.where(np.abs(gate) >= 10, 0, ulp16 + np.abs(gate) * 2.0**-23) * np.abs(up) + U * np.abs(model * up) + 1e-35
    outs = [_native.geglu(gate, up, isa=isa) for isa in ISAS]
    for out in outs:
        assert_within(np.abs(out - model * up), tol)
        assert_same_bits(out, outs[0])


def test_geglu_equals_llama_cpp_table(ggml_cpu):
    """Bit for bit ggml_vec_geglu_f32 over every f16 input: its table times up."""
    ggml_cpu.need("fma")  # the table's 1 + 0.044715 x^2 is a fused multiply-add in such builds
    table = ggml_cpu.gelu_table().view(np.float16).astype(np.float32)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    gate = halves[np.isfinite(halves)].astype(np.float32)
    gate = np.concatenate([gate, gate + np.float32(1e-4)])
    up = np.random.default_rng(5).standard_normal(gate.size).astype(np.float32)
    idx = gate.astype(np.float16).view(np.uint16)
    want = np.where(gate <= -10, np.float32(0), np.where(gate >= 10, gate * up, table[idx] * up)).astype(np.float32)
    for isa in ISAS:
        assert_same_bits(_native.geglu(gate, up, isa=isa), want)


def silu_model(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        return x / (1 + np.exp(-x))


def test_swiglu_matches_float64():
    """exp errs by up to 4u (ggml's polynomial), the division and products add 3u."""
    rng = np.random.default_rng(2)
    gate = np.concatenate([rng.standard_normal(5000) * 4, np.linspace(-12, 12, 4801)]).astype(np.float32)
    up = rng.standard_normal(gate.size).astype(np.float32)
    ref = silu_model(gate) * up.astype(np.float64)
    outs = [_native.swiglu(gate, up, isa=isa) for isa in ISAS]
    for out in outs:
        assert_within(np.abs(out - ref), 8 * U * np.abs(ref) + 1e-35)
        assert_same_bits(out, outs[0])


def test_swiglu_and_softmax_equal_llama_cpp(ggml_cpu):
    """Bit for bit ggml_vec_swiglu_f32 and ggml_vec_soft_max_f32 (then * (float)(1 / sum), as
    ggml's soft_max op) of an AVX-512 build, whose exp realm's repeats."""
    ggml_cpu.need("avx512")
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.standard_normal(4096) * 6, np.linspace(-120, 100, 4096)]).astype(np.float32)
    g = rng.standard_normal(x.size).astype(np.float32)
    want = np.zeros_like(x)
    ggml_cpu.lib.ggml_vec_swiglu_f32(x.size, want.ctypes.data, x.ctypes.data, g.ctypes.data)
    for isa in ISAS:
        assert_same_bits(_native.swiglu(x, g, isa=isa), want)
    for n in (256, 301, 16, 7):  # whole 16-blocks and a tail (exp of the C library there, as ggml)
        row = (rng.standard_normal(n) * 8).astype(np.float32)
        row[rng.integers(0, n, n // 5)] = -np.inf
        e = np.zeros(n, np.float32)
        total = ggml_cpu.lib.ggml_vec_soft_max_f32(n, e.ctypes.data, row.ctypes.data, np.float32(row.max()))
        want = e * np.float32(1.0 / total)
        for isa in ISAS:
            assert_same_bits(_native.softmax(row[None].copy(), isa=isa)[0], want)


@pytest.mark.parametrize("op", ["swiglu", "geglu"])
def test_gated_activations_special_values_and_aliasing(op):
    gate = np.tile(special_floats(), 3)[:67]  # odd length: a vector tail
    up = np.linspace(-2, 2, gate.size).astype(np.float32)
    outs = [getattr(_native, op)(gate, up, isa=isa) for isa in ISAS]
    for out in outs:
        assert_same_bits(out, outs[0])
    g = gate.copy()
    assert getattr(_native, op)(g, up, out=g) is g  # out may alias an input
    assert_same_bits(g, outs[0])


def test_exp_accuracy_and_edges():
    x = np.concatenate([np.linspace(-110, 95, 200_001), special_floats()]).astype(np.float32)
    outs = [_native.exp(x, isa=isa) for isa in ISAS]
    for y in outs:
        assert_same_bits(y, outs[0])
    y = outs[0]
    with np.errstate(all="ignore"):
        ref = np.exp(x.astype(np.float64))
    finite = np.isfinite(x)
    normal = finite & (x > -87.3) & (x < 88.72)
    assert_within(np.abs(y[normal] - ref[normal]), 4 * U * ref[normal])  # < 2 ulp, ggml's polynomial
    sub = finite & (x >= -103.97) & (x <= -87.3)  # results below FLT_MIN keep absolute accuracy
    assert_within(np.abs(y[sub] - ref[sub]), 2.0**-149 + 2 * U * ref[sub])
    assert (y[x < -103.98] == 0).all() and (y[x > 88.73] == np.inf).all()
    assert np.isnan(y[np.isnan(x)]).all()


def test_softmax_matches_float64():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((5, 301)) * 20).astype(np.float32)
    x[2, 7] = -np.inf
    ref = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    ref /= ref.sum(axis=-1, keepdims=True)
    outs = [_native.softmax(x.copy(), isa=isa) for isa in ISAS]
    # exp(x - max) takes the rounding of x - max, relative u |x - max|, on top of its own
    arg = np.abs(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    for y in outs:
        assert_within(np.abs(y - ref), (6 + np.nan_to_num(arg, posinf=0)) * U * ref + 1e-44)
        assert_same_bits(y, outs[0])
    assert outs[0][2, 7] == 0


def test_add():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((3, 77)).astype(np.float32)
    x = rng.standard_normal((3, 77)).astype(np.float32)
    expected = y + x
    assert _native.add(y, x) is y
    assert_same_bits(y, expected)


# ---- f32 -> f16 ----

def f16_cases() -> np.ndarray:
    """Every half value, the midpoints between neighbours (ties) and one f32 ulp either
    side, the overflow and underflow edges, f32 subnormals, and random bit patterns."""
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = np.sort(halves[np.isfinite(halves)].astype(np.float64))
    mids = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)  # exact in f32
    up, down = np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))
    edges = np.array([65504, 65519.996, 65520, 65536, 1e10, 3.4e38, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001,
                      1.5 * 2.0**-24, 2.0**-14, 2.0**-14 * (1 - 2.0**-11), 1e-40, 1e-45, 0.0, -0.0, np.inf, -np.inf],
                     dtype=np.float32)
    rand = np.random.default_rng(0).integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([halves.astype(np.float32), mids, up, down, edges, -edges, rand])
    return x[~np.isnan(x)]


@pytest.mark.parametrize("isa", ISAS)
def test_f32_to_f16_matches_numpy(isa):
    x = f16_cases()
    out = _native.f32_to_f16(x, isa=isa)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))


def test_f32_to_f16_nans_are_quieted_like_f16c():
    """NumPy keeps a signalling NaN's payload as is (0x7c01 for 0x7f800001); F16C sets the
    quiet bit.  Both paths follow F16C: sign | 0x7e00 | top 10 payload bits."""
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7F802000, 0x7FFFE000],
                    dtype=np.uint32)
    outs = [_native.f32_to_f16(bits.view(np.float32), isa=isa).view(np.uint16) for isa in ISAS]
    expected = ((bits >> 16) & 0x8000) | 0x7E00 | ((bits >> 13) & 0x3FF)
    for out in outs:
        np.testing.assert_array_equal(out, expected.astype(np.uint16))
    quiet = bits[(bits & 0x400000) != 0].view(np.float32)  # where NumPy agrees
    np.testing.assert_array_equal(_native.f32_to_f16(quiet).view(np.uint16), quiet.astype(np.float16).view(np.uint16))


# ---- bad input ----

def test_bad_arguments_are_refused():
    x = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(TypeError):
        _native.rmsnorm(x.astype(np.float64))
    with pytest.raises(ValueError, match="weight"):
        _native.rmsnorm(x, np.ones(7, dtype=np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        _native.rmsnorm(np.ones((8, 2), dtype=np.float32).T)
    with pytest.raises(ValueError, match="shape"):
        _native.rmsnorm(x, out=np.empty((8, 2), dtype=np.float32))
    q = np.ones((2, 4, 8), dtype=np.float32)
    pos = np.array([0, 1], dtype=np.int32)
    with pytest.raises(ValueError, match="n_rot"):
        _native.rope(q, pos, 9, 10000.0, neox=False)
    with pytest.raises(ValueError, match="n_rot"):
        _native.rope(q, pos, 10, 10000.0, neox=False)
    with pytest.raises(TypeError, match="int32"):
        _native.rope(q, pos.astype(np.int64), 8, 10000.0, neox=True)
    with pytest.raises(ValueError, match="positions"):
        _native.rope(q, pos[:1].copy(), 8, 10000.0, neox=True)
    with pytest.raises(ValueError, match="base"):
        _native.rope_table(pos, 8, 0.0)
    with pytest.raises(ValueError, match="writable"):
        ro = q.copy()
        ro.flags.writeable = False
        _native.rope(ro, pos, 8, 10000.0, neox=True)
    k = np.ones((4, 2, 8), dtype=np.float16)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 4\)"):
        _native.attention(q, k, k, np.array([0, 4], dtype=np.int32), n_kv_head=2)
    with pytest.raises(ValueError, match="multiple"):
        _native.attention(q, np.ones((4, 3, 8), np.float16), np.ones((4, 3, 8), np.float16), pos, n_kv_head=3)
    with pytest.raises(ValueError, match="k_cache"):
        _native.attention(q, k[:, :1].copy(), k, pos, n_kv_head=2)
    with pytest.raises(ValueError, match="same dtype"):
        _native.attention(q, k, k.astype(np.float32), pos, n_kv_head=2)
    with pytest.raises(TypeError):
        _native.attention(q, k.astype(np.float64), k.astype(np.float64), pos, n_kv_head=2)
    with pytest.raises(ValueError, match="window"):
        _native.attention(q, k, k, pos, n_kv_head=2, window=-1)
    with pytest.raises(ValueError, match="differ"):
        _native.swiglu(x, x[:1].copy())
    with pytest.raises(ValueError, match="isa"):
        _native.geglu(x, x, isa="neon9")
    with pytest.raises(TypeError, match="float16"):
        _native.f32_to_f16(x, out=np.empty((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="differ"):
        _native.add(x, x[:, :4].copy())
