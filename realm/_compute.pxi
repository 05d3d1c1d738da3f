# realm's compute kernels (csrc/matmul*.c, csrc/q8.c, csrc/ops*.c) for Python: included by
# _native.pyx, after _quant.pxi (the table of formats, ISAS).
#
# Arguments are checked here, before any C runs: arrays must already have the
# dtype and C-contiguous layout a kernel reads (nothing is converted or copied
# behind the caller's back), sizes must agree, and a wrong one raises TypeError
# or ValueError naming it.  The kernels then run without the GIL.  `isa` picks
# the path: "auto" (the best this CPU has), "scalar" (the reference) or "avx2".
# `threads`: None or 0 = all cores.

import numpy as np

from libc.stdint cimport int32_t, uint16_t

from .errors import ArgumentTypeError, InternalError, InvalidArgumentError, OutOfMemoryError
from .ggml_types import GGMLType, as_qtype
from .threads import check_threads

cdef extern from "matmul.h":
    int REALM_EINVAL, REALM_ENOMEM
    int REALM_TOK_GROUP
    ctypedef struct realm_act_layout:
        int64_t bsums, s, d, o, tiny, total
    int realm_act_type(int wtype)
    int64_t realm_act_size(int act, int64_t n_tok, int64_t n_in)
    realm_act_layout realm_act_layout_of(int act, int64_t n_tok, int64_t n_in)
    int realm_matmul_vnni(int enable)
    int realm_matmul_avx512(int enable)
    int realm_quantize_act(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf,
                           int nthreads, int isa) nogil
    int realm_matmul_q(int wtype, const void *w, int64_t n_out, int64_t n_in, const void *act_buf,
                       int64_t n_tok, float *y, int nthreads, int isa) nogil
    int realm_matmul(int wtype, const void *w, int64_t n_out, int64_t n_in, const float *x, int64_t n_tok,
                     float *y, int nthreads, int isa) nogil

cdef extern from "ops.h":
    ctypedef struct realm_attn_params:
        int n_head, n_kv_head, head_dim
        int kv_type
        int64_t kv_pos_stride, kv_head_stride
        float scale
        int32_t window
    int REALM_MAX_ROT
    int realm_rmsnorm(const float *x, const float *w, int64_t rows, int64_t n, float eps, float *y) nogil
    int realm_rope_table(const int32_t *pos, int64_t n_tok, int n_rot, float base, float freq_scale,
                         const float *freq_factors, float *cs) nogil
    int realm_rope_apply(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs,
                         int neox, int isa) nogil
    int realm_attention(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos,
                        const void *k, const void *v, int64_t n_kv, float *out, int nthreads, int isa) nogil
    int realm_swiglu(const float *gate, const float *up, float *out, int64_t n, int isa) nogil
    int realm_geglu(const float *gate, const float *up, float *out, int64_t n, int isa) nogil
    int realm_softmax(float *x, int64_t rows, int64_t n, int isa) nogil
    void realm_add(float *y, const float *x, int64_t n) nogil
    int realm_f32_to_f16(const float *x, uint16_t *y, int64_t n, int isa) nogil
    int realm_exp(const float *x, float *y, int64_t n, int isa) nogil

ACT_NAMES = {REALM_ACT_F32: "f32", REALM_ACT_Q8: "q8", REALM_ACT_Q8_K: "q8_k", REALM_ACT_F16: "f16",
             REALM_ACT_BF16: "bf16"}
EUNSUPPORTED = REALM_EUNSUPPORTED
TOKEN_GROUP = REALM_TOK_GROUP

# ---- argument checks (plain Python: they run once per call) ----

def _isa(isa):
    if not isinstance(isa, str) or isa not in ISAS:
        raise InvalidArgumentError(f"unknown isa {isa!r}; expected one of {sorted(ISAS)}")
    return ISAS[isa]


def _threads(threads):
    return 0 if threads is None or threads == 0 else check_threads(threads)  # 0: every core


def _check(rc, what):
    if rc >= 0:
        return rc
    if rc == REALM_ENOISA:
        raise InvalidArgumentError(f"{what}: this CPU cannot run the requested isa")
    if rc == REALM_EUNSUPPORTED:
        raise InvalidArgumentError(f"{what}: unsupported type")
    if rc == REALM_ENOMEM:
        raise OutOfMemoryError(f"{what}: out of memory")
    raise InvalidArgumentError(f"{what}: invalid arguments (code {rc})")


def _f32(a, name, ndim=None, writable=False):
    """The array itself when it is float32, C-contiguous (and writable); else an error."""
    if not isinstance(a, np.ndarray):
        raise ArgumentTypeError(f"{name} must be a numpy.ndarray of float32, not {type(a).__name__}")
    if a.dtype != np.float32:
        raise ArgumentTypeError(f"{name} must have dtype float32, not {a.dtype}")
    if ndim is not None and a.ndim not in ndim:
        raise InvalidArgumentError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, not {a.ndim}")
    if not a.flags.c_contiguous:
        raise InvalidArgumentError(f"{name} must be C-contiguous")
    if writable and not a.flags.writeable:
        raise InvalidArgumentError(f"{name} must be writable")
    return a


def _out(out, shape, name="out"):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    _f32(out, name, writable=True)
    if out.shape != tuple(shape):
        raise InvalidArgumentError(f"{name} has shape {out.shape}, expected {tuple(shape)}")
    return out


def _weights(w, name="w"):
    """Weight bytes as a flat uint8 view (bytes, bytearray, memoryview or uint8 array), never copied."""
    if isinstance(w, np.ndarray):
        if w.dtype != np.uint8:
            raise ArgumentTypeError(f"{name} must be uint8 bytes, not an array of {w.dtype}")
        if not w.flags.c_contiguous:
            raise InvalidArgumentError(f"{name} must be C-contiguous")
        return w.reshape(-1)
    if isinstance(w, (bytes, bytearray, memoryview)):
        m = memoryview(w)
        if not m.c_contiguous:
            raise InvalidArgumentError(f"{name} must be contiguous")
        return np.frombuffer(m.cast("B") if m.format != "B" or m.ndim != 1 else m, dtype=np.uint8)
    raise ArgumentTypeError(f"{name} must be bytes, bytearray, memoryview or a uint8 numpy array, not {type(w).__name__}")


def weight_type(qtype) -> GGMLType:
    """The GGMLType of `qtype` (type, int or name) if realm has a matmul kernel for it."""
    t = as_qtype(qtype)
    if realm_act_type(int(t)) < 0:
        raise InvalidArgumentError(f"no matmul kernel for {t.name}")
    return t


def row_bytes(qtype, n_in: int) -> int:
    """Bytes of one weight row of n_in values of `qtype`."""
    cdef const realm_type_traits *tt = realm_get_traits(int(weight_type(qtype)))
    if n_in <= 0 or n_in % tt.block_size:
        raise InvalidArgumentError(f"n_in={n_in} is not a positive multiple of the {tt.name.decode()} block size {tt.block_size}")
    return n_in // tt.block_size * tt.type_size


def act_type(qtype) -> str:
    """What a weight type multiplies against: "f32", "q8" (blocks of 32), "q8_k" (blocks of 256),
    "f16" or "bf16" (the values rounded to f16 / bf16, as llama.cpp does for F16 / BF16 weights)."""
    return ACT_NAMES[realm_act_type(int(weight_type(qtype)))]


_ACTS = {v: k for k, v in ACT_NAMES.items()}


def _act(act):
    if act not in _ACTS:
        raise InvalidArgumentError(f"unknown activation type {act!r}; expected one of {sorted(_ACTS)}")
    return _ACTS[act]


def _rows(x, name="x"):
    """x as [n_tok, n] (a 1-D x is one token)."""
    _f32(x, name, ndim=(1, 2))
    return x.reshape(1, -1) if x.ndim == 1 else x

# ---- matrix products ----

def quantize_act(act: str, x, *, threads=None, isa: str = "auto"):
    """Quantize activation rows x [n_tok, n_in] for weights whose act_type is `act`.

    Returns the buffer (uint8, 64-byte aligned) that matmul_q takes."""
    cdef int a = _act(act), isa_id = _isa(isa), nt = _threads(threads)
    x2 = _rows(x)
    cdef int64_t n_tok = x2.shape[0], n_in = x2.shape[1]
    cdef int64_t size = _check(realm_act_size(a, n_tok, n_in), f"activations of {n_in} values")
    buf = _aligned(size)
    cdef const float[:, ::1] xv = x2
    cdef unsigned char[::1] bv = buf
    cdef int rc
    if n_tok:
        with nogil:
            rc = realm_quantize_act(a, &xv[0, 0], n_tok, n_in, &bv[0], nt, isa_id)
        _check(rc, "quantize_act")
    return buf


def _aligned(int64_t size):
    raw = np.zeros(size + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + size]


def act_unpack(act: str, buf, n_tok: int, n_in: int):
    """The parts of a quantize_act buffer as arrays (for tests):
    {"qs": int8 [n_tok, n_in], "d": float32 [n_tok, n_blocks],
     "o": int32 [n_tok, n_in // 4], and "s": float32 [n_tok, n_blocks] (q8) or "bsums": int16
     [n_tok, n_in // 16] (q8_k)};
    for f16 {"x": the rounded rows, float32 [n_tok, n_in]}; for bf16 {"x": their bits, uint16
    [n_tok, n_in], "tiny": uint8 [n_tok]}."""
    cdef int a = _act(act)
    if a == REALM_ACT_F32:
        raise InvalidArgumentError("f32 activations are the rows themselves")
    cdef int64_t size = _check(realm_act_size(a, n_tok, n_in), "act_unpack")
    b = _weights(buf, "buf")
    if b.shape[0] != size:
        raise InvalidArgumentError(f"buf has {b.shape[0]} bytes, expected {size}")
    cdef realm_act_layout lay = realm_act_layout_of(a, n_tok, n_in)
    if a == REALM_ACT_F16:
        return {"x": b.view(np.float32).reshape(n_tok, n_in)}
    if a == REALM_ACT_BF16:
        return {"x": b[:n_tok * n_in * 2].view(np.uint16).reshape(n_tok, n_in), "tiny": b[lay.tiny:lay.tiny + n_tok]}
    nb = n_in // (32 if a == REALM_ACT_Q8 else 256)
    groups = -(-n_tok // REALM_TOK_GROUP)
    G = REALM_TOK_GROUP

    def table(off):  # [group][block][token]
        t = b[off:off + groups * nb * G * 4].view(np.float32).reshape(groups, nb, G).transpose(0, 2, 1)
        return t.reshape(groups * G, nb)[:n_tok]
    res = {"qs": b[:n_tok * n_in].view(np.int8).reshape(n_tok, n_in), "d": table(lay.d),
           "o": b[lay.o:lay.o + n_tok * n_in].view(np.int32).reshape(n_tok, n_in // 4)}
    if a == REALM_ACT_Q8:
        res["s"] = table(lay.s)
    else:
        res["bsums"] = b[lay.bsums:lay.bsums + n_tok * (n_in // 16) * 2].view(np.int16).reshape(n_tok, n_in // 16)
    return res


def _check_w(wb, t, n_out, n_in):
    need = n_out * row_bytes(t, n_in)
    if n_out < 0:
        raise InvalidArgumentError(f"n_out must be >= 0, not {n_out}")
    if wb.shape[0] != need:
        raise InvalidArgumentError(f"w holds {wb.shape[0]} bytes; {n_out} rows of {n_in} {t.name} values are {need}")


def matmul(w, qtype, n_out: int, x, *, out=None, threads=None, isa: str = "auto"):
    """y = x W^T for W [n_out, n_in] stored as `qtype` blocks (row-major bytes)
    and x [n_tok, n_in] (or [n_in]) float32.  Returns y [n_tok, n_out] (or [n_out])."""
    t = weight_type(qtype)
    cdef int isa_id = _isa(isa), nt = _threads(threads)
    x2 = _rows(x)
    cdef int64_t n_tok = x2.shape[0], n_in = x2.shape[1], no = n_out
    wb = _weights(w)
    _check_w(wb, t, n_out, n_in)
    y = _out(out, (n_tok, n_out) if x.ndim == 2 else (n_out,))
    if n_tok == 0 or n_out == 0:
        return y
    cdef const unsigned char[::1] wv = wb
    cdef const float[:, ::1] xv = x2
    cdef float[::1] yv = y.reshape(-1)
    cdef int rc, wt = int(t)
    with nogil:
        rc = realm_matmul(wt, &wv[0], no, n_in, &xv[0, 0], n_tok, &yv[0], nt, isa_id)
    _check(rc, "matmul")
    return y


def matmul_q(w, qtype, n_out: int, act_buf, n_tok: int, n_in: int, *, out=None, threads=None, isa: str = "auto"):
    """y = x W^T from activations already quantized by quantize_act(act_type(qtype), x).
    For f32 activations act_buf is x itself (float32 [n_tok, n_in])."""
    t = weight_type(qtype)
    cdef int isa_id = _isa(isa), nt = _threads(threads), a = realm_act_type(int(t))
    wb = _weights(w)
    _check_w(wb, t, n_out, n_in)
    cdef int64_t size = _check(realm_act_size(a, n_tok, n_in), "matmul_q")
    if a == REALM_ACT_F32:
        ab = _f32(act_buf, "act_buf").reshape(-1).view(np.uint8)
    else:
        ab = _weights(act_buf, "act_buf")
        if ab.ctypes.data % 4:
            raise InvalidArgumentError("act_buf must be 4-byte aligned (use quantize_act's buffer)")
    if ab.shape[0] != size:
        raise InvalidArgumentError(f"act_buf has {ab.shape[0]} bytes, {size} expected for {n_tok} x {n_in}")
    y = _out(out, (n_tok, n_out))
    if n_tok == 0 or n_out == 0:
        return y
    cdef const unsigned char[::1] wv = wb
    cdef const unsigned char[::1] av = ab
    cdef float[::1] yv = y.reshape(-1)
    cdef int rc, wt = int(t)
    cdef int64_t no = n_out, nk = n_tok, ni = n_in
    with nogil:
        rc = realm_matmul_q(wt, &wv[0], no, ni, &av[0], nk, &yv[0], nt, isa_id)
    _check(rc, "matmul_q")
    return y


def matmul_rc(int qtype, int64_t n_out, int64_t n_in, int64_t n_tok=1, str isa="auto") -> int:
    """realm_matmul's return code for zero weights and activations of these sizes, with none of
    matmul's checks of the type in Python (for tests: the C side must refuse a type without a
    dot kernel with EUNSUPPORTED, whatever its row holds)."""
    cdef const realm_type_traits *tt = realm_get_traits(qtype)
    if n_out < 1 or n_in < 1 or n_tok < 1:
        raise InvalidArgumentError("matmul_rc: sizes must be positive")
    # room for the weights as any type could read them: whole blocks of the row, or 4 bytes a value
    cdef int64_t nbytes = n_out * max(4 * n_in, 0 if tt == NULL else -(-n_in // tt.block_size) * tt.type_size)
    w = _aligned(nbytes)
    x = np.zeros((n_tok, n_in), dtype=np.float32)
    y = np.zeros((n_tok, n_out), dtype=np.float32)
    cdef const unsigned char[::1] wv = w
    cdef const float[:, ::1] xv = x
    cdef float[:, ::1] yv = y
    cdef int isa_id = _isa(isa), rc
    with nogil:
        rc = realm_matmul(qtype, &wv[0], n_out, n_in, &xv[0, 0], n_tok, &yv[0, 0], 1, isa_id)
    return rc


def avx512(enable=None) -> bool:
    """Whether the F16 and BF16 weights use the AVX-512 kernels (the same bits,
    faster, where the CPU has AVX-512 F, BW, VL and BF16).  enable=False turns them off (to
    test the AVX2 kernels), True back on where available; None only asks."""
    return bool(realm_matmul_avx512(-1 if enable is None else (1 if enable else 0)))


def vnni(enable=None) -> bool:
    """Whether the AVX2 kernels of the 32-value formats use AVX-512 VNNI (the same bits,
    faster, where the CPU has it).  enable=False turns it off (to test the plain AVX2
    kernels), True back on where available; None only asks."""
    return bool(realm_matmul_vnni(-1 if enable is None else (1 if enable else 0)))

# ---- ops ----

def rmsnorm(x, weight=None, eps: float = 1e-6, *, out=None):
    """x / sqrt(mean(x^2, last axis) + eps) * weight."""
    _f32(x, "x")
    if x.ndim == 0 or x.shape[x.ndim - 1] == 0:
        raise InvalidArgumentError("x must have a non-empty last axis")
    cdef int64_t n = x.shape[x.ndim - 1], rows = x.size // n
    if weight is not None:
        _f32(weight, "weight", ndim=(1,))
        if weight.shape[0] != n:
            raise InvalidArgumentError(f"weight has {weight.shape[0]} values, x rows have {n}")
    y = _out(out, x.shape)
    if rows == 0:
        return y
    cdef const float[::1] xv = x.reshape(-1)
    cdef float[::1] yv = y.reshape(-1)
    cdef const float[::1] wv
    cdef const float *wp = NULL
    if weight is not None:
        wv = weight
        wp = &wv[0]
    cdef float e = eps
    cdef int rc
    with nogil:
        rc = realm_rmsnorm(&xv[0], wp, rows, n, e, &yv[0])
    _check(rc, "rmsnorm")
    return y


def _positions(pos, n_tok=None):
    if not isinstance(pos, np.ndarray) or pos.dtype != np.int32:
        raise ArgumentTypeError("pos must be a numpy int32 array")
    if pos.ndim != 1 or not pos.flags.c_contiguous or (n_tok is not None and pos.shape[0] != n_tok):
        want = "" if n_tok is None else f" of {n_tok} positions"
        raise InvalidArgumentError(f"pos must be a contiguous 1-D array{want}, not shape {pos.shape}")
    return pos


def rope_table(pos, n_rot: int, base: float, freq_scale: float = 1.0, freq_factors=None):
    """cos/sin table [n_tok, n_rot]: (cos, sin) of freq_scale * theta_i per pair i, where, as in
    ggml's rope cache, theta_0 = pos and theta_i+1 = theta_i * powf(base, -2/n_rot) in float32;
    freq_factors (float32 [n_rot / 2], llama3's rope_freqs): freq_scale * (theta_i / factor_i)."""
    _positions(pos)
    cdef const float[::1] fv = None
    if freq_factors is not None:
        if not isinstance(freq_factors, np.ndarray) or freq_factors.dtype != np.float32 \
                or freq_factors.shape != (n_rot // 2,) or not freq_factors.flags.c_contiguous:
            raise InvalidArgumentError(f"freq_factors must be a contiguous float32 array of {n_rot // 2} values")
        fv = freq_factors
    if not 0 < n_rot <= REALM_MAX_ROT or n_rot % 2:
        raise InvalidArgumentError(f"n_rot must be even and in 2..{REALM_MAX_ROT}, not {n_rot}")
    if not base > 0:
        raise InvalidArgumentError(f"base must be > 0, not {base}")
    cdef int64_t n_tok = pos.shape[0]
    cs = np.empty((n_tok, n_rot), dtype=np.float32)
    if n_tok == 0:
        return cs
    cdef const int32_t[::1] pv = pos
    cdef float[:, ::1] cv = cs
    cdef int nr = n_rot, rc
    cdef float b = base, fs = freq_scale
    cdef const float *ff = &fv[0] if fv is not None else NULL
    with nogil:
        rc = realm_rope_table(&pv[0], n_tok, nr, b, fs, ff, &cv[0, 0])
    _check(rc, "rope_table")
    return cs


def rope(x, pos, n_rot: int, base: float, *, neox: bool, freq_scale: float = 1.0, table=None, isa: str = "auto"):
    """Rotate x [n_tok, n_head, head_dim] in place (first n_rot values of each head);
    neox=False pairs (2i, 2i+1) (llama), True pairs (i, i + n_rot/2) (gemma3).
    `table` (from rope_table) skips recomputing cos/sin.  isa: "auto", "scalar" or the SIMD
    path (the same bits).  Returns x."""
    _f32(x, "x", ndim=(3,), writable=True)
    cdef int64_t n_tok = x.shape[0]
    cdef int n_head = x.shape[1], head_dim = x.shape[2], nr = n_rot, rc
    if not 0 < n_rot <= head_dim or n_rot % 2:
        raise InvalidArgumentError(f"n_rot must be even and in 2..head_dim={head_dim}, not {n_rot}")
    if table is None:
        table = rope_table(_positions(pos, n_tok), n_rot, base, freq_scale)
    else:
        _f32(table, "table", ndim=(2,))
        if table.shape != (n_tok, n_rot):
            raise InvalidArgumentError(f"table has shape {table.shape}, expected {(n_tok, n_rot)}")
    if n_tok == 0 or n_head == 0:
        return x
    cdef float[:, :, ::1] xv = x
    cdef const float[:, ::1] tv = table
    cdef int nx = 1 if neox else 0, isa_id = _isa(isa)
    with nogil:
        rc = realm_rope_apply(&xv[0, 0, 0], n_tok, n_head, head_dim, nr, &tv[0, 0], nx, isa_id)
    _check(rc, "rope")
    return x


def attention(q, k_cache, v_cache, pos, *, n_kv_head: int, scale=None, window: int = 0,
              out=None, threads=None, isa: str = "auto"):
    """Causal grouped-query attention over a KV cache.

    q: float32 [n_tok, n_head, head_dim]; k_cache, v_cache: float32 or float16
    [n_ctx, n_kv_head, head_dim] (row j = position j); pos: int32 [n_tok], each < n_ctx.
    Query t attends to positions pos[t] - window < j <= pos[t] (window 0: all j <= pos[t]).
    scale: None = 1/sqrt(head_dim).  Returns out [n_tok, n_head, head_dim]."""
    _f32(q, "q", ndim=(3,))
    cdef int64_t n_tok = q.shape[0]
    cdef int n_head = q.shape[1], head_dim = q.shape[2]
    _positions(pos, n_tok)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(c, np.ndarray) or c.dtype not in (np.float32, np.float16):
            raise ArgumentTypeError(f"{name} must be a float32 or float16 numpy array")
        if c.ndim != 3 or c.shape[1:] != (n_kv_head, head_dim) or not c.flags.c_contiguous:
            raise InvalidArgumentError(f"{name} must be C-contiguous [n_ctx, {n_kv_head}, {head_dim}], not {c.shape}")
    if k_cache.dtype != v_cache.dtype or k_cache.shape != v_cache.shape:
        raise InvalidArgumentError("k_cache and v_cache must have the same dtype and shape")
    if n_kv_head <= 0 or n_head % n_kv_head:
        raise InvalidArgumentError(f"n_head={n_head} is not a multiple of n_kv_head={n_kv_head}")
    cdef int64_t n_ctx = k_cache.shape[0]
    if n_tok and (pos.min() < 0 or pos.max() >= n_ctx):
        raise InvalidArgumentError(f"positions must be in [0, {n_ctx})")
    if window < 0:
        raise InvalidArgumentError(f"window must be >= 0, not {window}")
    y = _out(out, q.shape)
    if n_tok == 0 or n_head == 0:
        return y
    cdef realm_attn_params p
    p.n_head = n_head
    p.n_kv_head = n_kv_head
    p.head_dim = head_dim
    p.kv_type = GGMLType.F16 if k_cache.dtype == np.float16 else GGMLType.F32
    p.kv_pos_stride = n_kv_head * head_dim
    p.kv_head_stride = head_dim
    p.scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    p.window = window
    cdef const float[:, :, ::1] qv = q
    cdef const int32_t[::1] pv = pos
    cdef const unsigned char[::1] kv = k_cache.reshape(-1).view(np.uint8)
    cdef const unsigned char[::1] vv = v_cache.reshape(-1).view(np.uint8)
    cdef float[:, :, ::1] yv = y
    cdef int rc, nt = _threads(threads), isa_id = _isa(isa)
    with nogil:
        rc = realm_attention(&p, &qv[0, 0, 0], n_tok, &pv[0], &kv[0], &vv[0], n_ctx, &yv[0, 0, 0], nt, isa_id)
    _check(rc, "attention")
    return y


def _gated(which, gate, up, out, isa):
    _f32(gate, "gate")
    _f32(up, "up")
    if gate.shape != up.shape:
        raise InvalidArgumentError(f"gate {gate.shape} and up {up.shape} differ in shape")
    y = _out(out, gate.shape)
    cdef int64_t n = gate.size
    if n == 0:
        return y
    cdef const float[::1] gv = gate.reshape(-1)
    cdef const float[::1] uv = up.reshape(-1)
    cdef float[::1] yv = y.reshape(-1)
    cdef int rc, isa_id = _isa(isa), w = which
    with nogil:
        if w == 0:
            rc = realm_swiglu(&gv[0], &uv[0], &yv[0], n, isa_id)
        else:
            rc = realm_geglu(&gv[0], &uv[0], &yv[0], n, isa_id)
    _check(rc, "swiglu" if which == 0 else "geglu")
    return y


def swiglu(gate, up, *, out=None, isa: str = "auto"):
    """silu(gate) * up, element-wise (out may be gate or up)."""
    return _gated(0, gate, up, out, isa)


def geglu(gate, up, *, out=None, isa: str = "auto"):
    """gelu(gate) * up with ggml's tanh-form GELU, element-wise."""
    return _gated(1, gate, up, out, isa)


def softmax(x, *, isa: str = "auto"):
    """Softmax over the last axis, in place.  Returns x."""
    _f32(x, "x", writable=True)
    if x.ndim == 0 or x.shape[x.ndim - 1] == 0:
        raise InvalidArgumentError("x must have a non-empty last axis")
    cdef int64_t n = x.shape[x.ndim - 1], rows = x.size // n
    if rows == 0:
        return x
    cdef float[::1] xv = x.reshape(-1)
    cdef int rc, isa_id = _isa(isa)
    with nogil:
        rc = realm_softmax(&xv[0], rows, n, isa_id)
    _check(rc, "softmax")
    return x


def add(y, x):
    """y += x (same shape), in place.  Returns y."""
    _f32(y, "y", writable=True)
    _f32(x, "x")
    if x.shape != y.shape:
        raise InvalidArgumentError(f"x {x.shape} and y {y.shape} differ in shape")
    cdef int64_t n = y.size
    if n == 0:
        return y
    cdef float[::1] yv = y.reshape(-1)
    cdef const float[::1] xv = x.reshape(-1)
    with nogil:
        realm_add(&yv[0], &xv[0], n)
    return y


def f32_to_f16(x, *, out=None, isa: str = "auto"):
    """float32 -> float16 (round to nearest even, as F16C's vcvtps2ph)."""
    _f32(x, "x")
    if out is None:
        out = np.empty(x.shape, dtype=np.float16)
    elif not isinstance(out, np.ndarray) or out.dtype != np.float16:
        raise ArgumentTypeError("out must be a float16 numpy array")
    elif out.shape != x.shape or not out.flags.c_contiguous or not out.flags.writeable:
        raise InvalidArgumentError(f"out must be a writable C-contiguous float16 array of shape {x.shape}")
    cdef int64_t n = x.size
    if n == 0:
        return out
    cdef const float[::1] xv = x.reshape(-1)
    cdef uint16_t[::1] yv = out.reshape(-1).view(np.uint16)
    cdef int rc, isa_id = _isa(isa)
    with nogil:
        rc = realm_f32_to_f16(&xv[0], &yv[0], n, isa_id)
    _check(rc, "f32_to_f16")
    return out


def exp(x, *, isa: str = "auto"):
    """The kernels' exp approximation, element-wise (for tests)."""
    _f32(x, "x")
    y = np.empty_like(x)
    cdef int64_t n = x.size
    if n == 0:
        return y
    cdef const float[::1] xv = x.reshape(-1)
    cdef float[::1] yv = y.reshape(-1)
    cdef int rc, isa_id = _isa(isa)
    with nogil:
        rc = realm_exp(&xv[0], &yv[0], n, isa_id)
    _check(rc, "exp")
    return y

