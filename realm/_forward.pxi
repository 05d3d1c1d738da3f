# The forward pass (csrc/forward.c) for Python: included by _native.pyx.
#
# ForwardModel holds the C model struct -- a config and a table of
# (type, pointer, dims) per weight tensor -- and references to the arrays the
# pointers point into, so the weights outlive it.  KVCache holds one
# sequence's K/V rows and scratch.  realm/forward.py builds both from a stored
# GGUF model (HostModel); the checks on arrays live here, the C code trusts them.
#
# The *_at methods take raw addresses and lengths that realm/host.py has
# already checked against a guest's linear memory: they are for it alone.

from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from .threads import usable_cores

from .errors import (ArgumentTypeError, BusyError, InvalidArgumentError, OutOfMemoryError, OutOfRangeError,
                     RealmError)

cdef extern from "forward.h":
    int REALM_EKV_FULL, REALM_FWD_CHUNK
    int REALM_OP_COUNT
    ctypedef struct realm_config:
        int n_layer, n_embd, n_ff
        int n_head, n_head_kv, head_dim
        int n_rot
        int n_vocab
        float rms_eps
        float rope_base, rope_base_swa, rope_freq_scale
        int rope_neox
        int sliding_window, swa_pattern
        float attn_scale, embd_scale
        int qk_norm, post_norms, scale_q, gelu, qkv_bias
    ctypedef struct realm_tensor:
        int type
        const void *data
        int64_t rows, cols
    ctypedef struct realm_layer_weights:
        realm_tensor attn_norm, wq, wk, wv, wo
        realm_tensor bq, bk, bv
        realm_tensor attn_q_norm, attn_k_norm, attn_post_norm
        realm_tensor ffn_norm, ffn_gate, ffn_up, ffn_down
        realm_tensor ffn_post_norm
    ctypedef struct realm_model:
        realm_config c
        realm_tensor tok_embd, output_norm, output, rope_freqs
        realm_layer_weights *layers
        int nthreads, isa, profile
    ctypedef struct realm_kv_cache:
        int type
        int n_layer
        int64_t n_ctx, row
        int64_t *n_filled
        void *k
        void *v
    ctypedef struct realm_scratch:
        double prof[10]
    int realm_model_check(const realm_model *m, char *what, int what_len)
    int realm_layer_is_local(const realm_config *c, int il)
    int64_t realm_kv_bytes(const realm_config *c, int64_t n_ctx, int type)
    realm_kv_cache *realm_kv_new(const realm_config *c, int64_t n_ctx, int type)
    void realm_kv_free(realm_kv_cache *kv)
    void realm_kv_truncate(realm_kv_cache *kv, int64_t n) nogil
    int64_t realm_kv_length(const realm_kv_cache *kv) nogil
    void realm_scratch_free(realm_scratch *s)
    ctypedef struct realm_seq:
        const int32_t *tokens
        int64_t n, pos
        realm_kv_cache *kv
        float *logits
    int realm_seq_check(const realm_model *m, int il, const realm_seq *q) nogil
    int realm_forward_batch(const realm_model *m, const realm_seq *seqs, int n_seq, realm_scratch *s) nogil
    int realm_forward_layer_batch(const realm_model *m, int il, const realm_seq *seqs, int n_seq, float *x,
                                  realm_scratch *s) nogil
    int realm_forward_embedding(const realm_model *m, const int32_t *tokens, int64_t n_tok, float *out) nogil
    int realm_forward_layer(const realm_model *m, int il, const float *inp, int64_t n_tok, int64_t pos,
                            realm_kv_cache *kv, realm_scratch *s, float *out) nogil
    int realm_forward_lm_head(const realm_model *m, const float *hidden, int64_t n_rows, float *logits) nogil

cdef class KVCache


cdef int _forward_tokens(realm_model *m, const int32_t *tokens, int64_t n, int64_t pos, realm_kv_cache *kv,
                         realm_scratch *s, float *hidden, int64_t first, float *logits) noexcept nogil:
    """Embedding and every layer for n tokens at positions pos.. (hidden: their rows), then --
    unless logits is NULL -- the logits of rows first..n-1."""
    cdef int rc = realm_forward_embedding(m, tokens, n, hidden)
    cdef int il = 0
    while rc == 0 and il < m.c.n_layer:
        rc = realm_forward_layer(m, il, hidden, n, pos, kv, s, hidden)
        il += 1
    if rc == 0 and logits != NULL:
        rc = realm_forward_lm_head(m, hidden + first * m.c.n_embd, n - first, logits)
    return rc

#: Names of the per-op timers (KVCache.profile), in the order of enum realm_op.
PROFILE_OPS = ("attn_norm", "qkv", "rope", "attention", "attn_output", "ffn_norm", "ffn_up", "gate", "ffn_down",
               "residual")
assert len(PROFILE_OPS) == REALM_OP_COUNT
KV_DTYPES = {"f16": int(GGMLType.F16), "f32": int(GGMLType.F32)}  # type ids of the cache rows
#: The feature flags of realm_config (forward.h), set from realm/forward.py's architecture table.
FEATURES = ("qk_norm", "post_norms", "scale_q", "gelu", "qkv_bias", "rope_neox")
#: Tokens one parallel region handles (longer runs are cut; results do not change).
FORWARD_CHUNK = REALM_FWD_CHUNK
#: Codes the raw (*_at) entry points return besides 0: a refused argument, a full KV cache.
FORWARD_EINVAL = REALM_EINVAL
FORWARD_EKV_FULL = REALM_EKV_FULL

_LAYER_ROLES = ("attn_norm", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "attn_q_norm", "attn_k_norm",
                "attn_post_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "ffn_post_norm")


class ForwardError(RealmError, ValueError):
    """A forward call the C code refused; `code` is its REALM_E* value (forward.h, matmul.h)."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class ContextFullError(ForwardError):
    """The tokens would not fit in the KV cache."""


def _forward_check(int rc, what):
    if rc == 0:
        return
    if rc == REALM_EKV_FULL:
        raise ContextFullError(f"{what}: the tokens do not fit in the KV cache", rc)
    if rc == REALM_ENOMEM:
        raise OutOfMemoryError(f"{what}: out of memory")
    raise ForwardError(f"{what}: invalid arguments (code {rc})", rc)


cdef int _set_tensor(realm_tensor *t, spec, list keep) except -1:
    """spec = (ggml type id, uint8 array of the bytes, rows, cols), or None (absent)."""
    if spec is None:
        memset(t, 0, sizeof(realm_tensor))
        return 0
    qtype, data, rows, cols = spec
    arr = _weights(data, "tensor data")
    need = rows * row_bytes(qtype, cols) if rows > 0 else -1
    if arr.shape[0] != need:
        raise InvalidArgumentError(f"tensor data holds {arr.shape[0]} bytes, not {rows} x {cols} {GGMLType(qtype).name} values")
    cdef const unsigned char[::1] view = arr
    t.type = int(qtype)
    t.data = &view[0]
    t.rows = rows
    t.cols = cols
    keep.append(arr)
    return 0


cdef class ForwardModel:
    """The C forward pass over one model's weights (built by realm.forward.HostModel).

    config: dict of realm_config's fields, the feature flags (FEATURES) as booleans.
    tensors: {"tok_embd", "output_norm", "output", optional "rope_freqs"} -> (type, bytes, rows, cols);
    layers: one dict per layer, realm_layer_weights' roles -> the same tuples (or None).
    """
    cdef realm_model m
    cdef list _keep
    cdef readonly int n_embd, n_vocab, n_layer

    def __cinit__(self):
        memset(&self.m, 0, sizeof(realm_model))

    def __init__(self, dict config, dict tensors, list layers, *, threads=None, profile=False):
        cdef realm_config *c = &self.m.c
        for name in FEATURES:
            if not isinstance(config[name], (bool, np.bool_)):
                raise InvalidArgumentError(f"config {name} must be a bool, not {config[name]!r}")
        c.qk_norm, c.post_norms, c.scale_q = config["qk_norm"], config["post_norms"], config["scale_q"]
        c.gelu, c.qkv_bias = config["gelu"], config["qkv_bias"]
        for name in ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "n_rot", "n_vocab",
                     "sliding_window", "swa_pattern"):
            v = config[name]
            if not isinstance(v, (int, np.integer)) or not 0 <= v < 2**31:
                raise InvalidArgumentError(f"config {name} must be an int in [0, 2^31), not {v!r}")
        c.n_layer, c.n_embd, c.n_ff = config["n_layer"], config["n_embd"], config["n_ff"]
        c.n_head, c.n_head_kv, c.head_dim = config["n_head"], config["n_head_kv"], config["head_dim"]
        c.n_rot, c.n_vocab = config["n_rot"], config["n_vocab"]
        c.sliding_window, c.swa_pattern = config["sliding_window"], config["swa_pattern"]
        c.rms_eps = config["rms_eps"]
        c.rope_base, c.rope_base_swa = config["rope_base"], config["rope_base_swa"]
        c.rope_freq_scale = config["rope_freq_scale"]
        c.rope_neox = config["rope_neox"]
        c.attn_scale, c.embd_scale = config["attn_scale"], config["embd_scale"]
        if len(layers) != c.n_layer:
            raise InvalidArgumentError(f"{len(layers)} layers given for n_layer={c.n_layer}")
        nt = _threads(threads)
        self.m.nthreads = nt if nt > 0 else usable_cores()
        self.m.isa = realm_best_isa()
        self.m.profile = 1 if profile else 0
        self._keep = []
        _set_tensor(&self.m.tok_embd, tensors["tok_embd"], self._keep)
        _set_tensor(&self.m.output_norm, tensors["output_norm"], self._keep)
        _set_tensor(&self.m.output, tensors["output"], self._keep)
        _set_tensor(&self.m.rope_freqs, tensors.get("rope_freqs"), self._keep)
        self.m.layers = <realm_layer_weights *>calloc(c.n_layer, sizeof(realm_layer_weights))
        if self.m.layers == NULL:
            raise OutOfMemoryError("ForwardModel: out of memory")
        cdef realm_layer_weights *L
        for il, spec in enumerate(layers):
            unknown = set(spec) - set(_LAYER_ROLES)
            if unknown:
                raise InvalidArgumentError(f"layer {il}: unknown roles {sorted(unknown)}")
            L = &self.m.layers[il]
            _set_tensor(&L.attn_norm, spec.get("attn_norm"), self._keep)
            _set_tensor(&L.wq, spec.get("wq"), self._keep)
            _set_tensor(&L.wk, spec.get("wk"), self._keep)
            _set_tensor(&L.wv, spec.get("wv"), self._keep)
            _set_tensor(&L.wo, spec.get("wo"), self._keep)
            _set_tensor(&L.bq, spec.get("bq"), self._keep)
            _set_tensor(&L.bk, spec.get("bk"), self._keep)
            _set_tensor(&L.bv, spec.get("bv"), self._keep)
            _set_tensor(&L.attn_q_norm, spec.get("attn_q_norm"), self._keep)
            _set_tensor(&L.attn_k_norm, spec.get("attn_k_norm"), self._keep)
            _set_tensor(&L.attn_post_norm, spec.get("attn_post_norm"), self._keep)
            _set_tensor(&L.ffn_norm, spec.get("ffn_norm"), self._keep)
            _set_tensor(&L.ffn_gate, spec.get("ffn_gate"), self._keep)
            _set_tensor(&L.ffn_up, spec.get("ffn_up"), self._keep)
            _set_tensor(&L.ffn_down, spec.get("ffn_down"), self._keep)
            _set_tensor(&L.ffn_post_norm, spec.get("ffn_post_norm"), self._keep)
        cdef char what[200]
        what[0] = 0
        cdef int rc = realm_model_check(&self.m, what, sizeof(what))
        if rc:
            raise InvalidArgumentError(f"the model cannot run: {what.decode('utf-8', 'replace')}")
        self.n_embd, self.n_vocab, self.n_layer = c.n_embd, c.n_vocab, c.n_layer

    def __dealloc__(self):
        free(self.m.layers)

    @property
    def threads(self) -> int:
        return self.m.nthreads

    def layer_is_local(self, int il) -> bool:
        if not 0 <= il < self.n_layer:
            raise OutOfRangeError(f"layer {il} out of range [0, {self.n_layer})")
        return bool(realm_layer_is_local(&self.m.c, il))

    def kv_bytes(self, int64_t n_ctx, dtype="f16") -> int:
        """Bytes a KV cache of n_ctx positions takes (negative: refused sizes)."""
        if dtype not in KV_DTYPES:
            raise InvalidArgumentError(f"KV cache dtype must be one of {sorted(KV_DTYPES)}, not {dtype!r}")
        return realm_kv_bytes(&self.m.c, n_ctx, KV_DTYPES[dtype])

    # -- checked entry points (numpy arrays) --------------------------------------
    def embed(self, tokens, out=None):
        """out [n, n_embd] = embedding rows of int32 tokens [n]."""
        if not isinstance(tokens, np.ndarray) or tokens.dtype != np.int32 or tokens.ndim != 1 \
                or not tokens.flags.c_contiguous:
            raise ArgumentTypeError("tokens must be a contiguous 1-D int32 array")
        cdef int64_t n = tokens.shape[0]
        if n == 0:
            raise InvalidArgumentError("no tokens")
        out = _out(out, (n, self.n_embd))
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise InvalidArgumentError(f"token ids must be in [0, {self.n_vocab})")
        cdef const int32_t[::1] tv = tokens
        cdef float[:, ::1] ov = out
        cdef int rc
        with nogil:
            rc = realm_forward_embedding(&self.m, &tv[0], n, &ov[0, 0])
        _forward_check(rc, "embedding")
        return out

    def layer(self, int il, hidden, int64_t pos, KVCache kv, out=None):
        """out [n, n_embd] = layer il of hidden [n, n_embd] at positions pos.. (out may be hidden)."""
        self._check_layer_args(il, pos, kv)
        _f32(hidden, "hidden", ndim=(2,))
        if hidden.shape[0] == 0 or hidden.shape[1] != self.n_embd:
            raise InvalidArgumentError(f"hidden must have shape [n_tokens >= 1, {self.n_embd}], not {hidden.shape}")
        out = _out(out, hidden.shape)
        cdef int64_t n = hidden.shape[0]
        if pos + n > kv.n_ctx:
            raise ContextFullError(f"{n} tokens at position {pos} do not fit a KV cache of {kv.n_ctx}",
                                   REALM_EKV_FULL)
        if pos > kv.filled(il):
            raise ForwardError(f"position {pos} leaves a gap: layer {il} of this KV cache holds "
                               f"{kv.filled(il)} positions", REALM_EINVAL)
        cdef const float[:, ::1] hv = hidden
        cdef float[:, ::1] ov = out
        rc = kv._run_layer(self, il, <size_t>&hv[0, 0], n, pos, <size_t>&ov[0, 0])
        _forward_check(rc, f"layer {il}")
        return out

    def lm_head(self, hidden, out=None):
        """out [n, n_vocab] = logits of hidden [n, n_embd]."""
        _f32(hidden, "hidden", ndim=(2,))
        if hidden.shape[0] == 0 or hidden.shape[1] != self.n_embd:
            raise InvalidArgumentError(f"hidden must have shape [n_rows >= 1, {self.n_embd}], not {hidden.shape}")
        out = _out(out, (hidden.shape[0], self.n_vocab))
        cdef const float[:, ::1] hv = hidden
        cdef float[:, ::1] ov = out
        cdef int64_t n = hidden.shape[0]
        cdef int rc
        with nogil:
            rc = realm_forward_lm_head(&self.m, &hv[0, 0], n, &ov[0, 0])
        _forward_check(rc, "lm_head")
        return out

    def forward(self, tokens, KVCache kv, out=None, bint last_only=False):
        """Embedding, every layer and the LM head for int32 tokens [n] appended at position
        kv.length, in one call without the GIL.  out: [1 or n, n_vocab] float32."""
        if not isinstance(tokens, np.ndarray) or tokens.dtype != np.int32 or tokens.ndim != 1 \
                or not tokens.flags.c_contiguous or tokens.shape[0] == 0:
            raise ArgumentTypeError("tokens must be a non-empty contiguous 1-D int32 array")
        cdef int64_t n = tokens.shape[0], pos = kv.length
        self._check_layer_args(0, pos, kv)
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise InvalidArgumentError(f"token ids must be in [0, {self.n_vocab})")
        if pos + n > kv.n_ctx:
            raise ContextFullError(f"{n} tokens at position {pos} do not fit a KV cache of {kv.n_ctx}",
                                   REALM_EKV_FULL)
        out = _out(out, (1 if last_only else n, self.n_vocab))
        hidden = np.empty((n, self.n_embd), dtype=np.float32)
        cdef const int32_t[::1] tv = tokens
        cdef float[:, ::1] hv = hidden
        cdef float[:, ::1] ov = out
        cdef int rc
        cdef int64_t first = n - 1 if last_only else 0
        kv._enter()
        try:
            with nogil:
                rc = _forward_tokens(&self.m, &tv[0], n, pos, kv.kv, &kv.scratch, &hv[0, 0], first, &ov[0, 0])
        finally:
            kv._leave()
        _forward_check(rc, "forward")
        return out

    cdef _check_layer_args(self, int il, int64_t pos, KVCache kv):
        if kv.model is not self:
            raise InvalidArgumentError("this KV cache belongs to another model")
        if not 0 <= il < self.n_layer:
            raise OutOfRangeError(f"layer {il} out of range [0, {self.n_layer})")
        if pos < 0:
            raise InvalidArgumentError(f"position must be >= 0, not {pos}")

    # -- unchecked entry points for realm/host.py (addresses in guest memory) --------
    def _embed_at(self, size_t tokens, int64_t n, size_t out) -> int:
        cdef int rc
        with nogil:
            rc = realm_forward_embedding(&self.m, <const int32_t *>tokens, n, <float *>out)
        return rc

    def _lm_head_at(self, size_t hidden, int64_t n, size_t out) -> int:
        cdef int rc
        with nogil:
            rc = realm_forward_lm_head(&self.m, <const float *>hidden, n, <float *>out)
        return rc


cdef class KVCache:
    """One sequence's K and V rows for every layer of a ForwardModel (f16 or f32), and its
    scratch.  Not for two threads at once (a second one gets RuntimeError)."""
    cdef realm_kv_cache *kv
    cdef realm_scratch scratch
    cdef readonly ForwardModel model
    cdef readonly str dtype
    cdef readonly int64_t n_ctx, nbytes
    cdef bint busy

    def __cinit__(self):
        self.kv = NULL
        memset(&self.scratch, 0, sizeof(realm_scratch))

    def __init__(self, ForwardModel model, int64_t n_ctx, dtype="f16"):
        cdef int64_t size = model.kv_bytes(n_ctx, dtype)
        if size < 0:
            raise InvalidArgumentError(f"n_ctx must be in [1, 2^24], not {n_ctx}")
        self.kv = realm_kv_new(&model.m.c, n_ctx, KV_DTYPES[dtype])
        if self.kv == NULL:
            raise OutOfMemoryError(f"no memory for a KV cache of {size} bytes")
        self.model, self.dtype, self.n_ctx, self.nbytes = model, dtype, n_ctx, size

    def __dealloc__(self):
        realm_scratch_free(&self.scratch)
        realm_kv_free(self.kv)

    @property
    def length(self) -> int:
        """Positions every layer holds (the next token goes here)."""
        return realm_kv_length(self.kv)

    def filled(self, int il) -> int:
        """Positions layer il holds."""
        if not 0 <= il < self.kv.n_layer:
            raise OutOfRangeError(f"layer {il} out of range [0, {self.kv.n_layer})")
        return self.kv.n_filled[il]

    def truncate(self, int64_t n_tokens) -> None:
        """Forget positions >= n_tokens in every layer (they will be recomputed)."""
        if n_tokens < 0:
            raise InvalidArgumentError(f"n_tokens must be >= 0, not {n_tokens}")
        self._enter()
        realm_kv_truncate(self.kv, n_tokens)
        self._leave()

    @property
    def row_bytes(self) -> int:
        """Bytes of K and V for one position over every layer."""
        return 2 * self.kv.n_layer * self.kv.row * (2 if self.dtype == "f16" else 4)

    def read_rows(self, int64_t n):
        """Copies of K and V at positions 0..n-1 of every layer: two arrays [n_layer, n, row]
        (f16 rows as uint16 bits)."""
        if not 0 <= n <= realm_kv_length(self.kv):
            raise OutOfRangeError(f"{n} positions asked of a cache holding {realm_kv_length(self.kv)}")
        dtype = np.uint16 if self.dtype == "f16" else np.float32
        k = np.empty((self.kv.n_layer, n, self.kv.row), dtype=dtype)
        v = np.empty_like(k)
        self._copy_rows(k, v, 0, n, False)
        return k, v

    def write_rows(self, k, v, int64_t start, int64_t stop):
        """Positions start..stop-1 of every layer from arrays as `read_rows` gives (of at least
        stop positions); every layer then holds stop positions.  Needs start <= length."""
        dtype = np.uint16 if self.dtype == "f16" else np.float32
        for a in (k, v):
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 3 or not a.flags.c_contiguous \
                    or a.shape[0] != self.kv.n_layer or a.shape[2] != self.kv.row or a.shape[1] < stop:
                raise InvalidArgumentError("rows must be contiguous arrays as read_rows gives")
        if not 0 <= start <= stop <= self.n_ctx or start > realm_kv_length(self.kv):
            raise OutOfRangeError(f"positions [{start}, {stop}) do not follow the {realm_kv_length(self.kv)} held")
        self._enter()
        try:
            self._copy_rows(k, v, start, stop, True)
            for il in range(self.kv.n_layer):
                self.kv.n_filled[il] = stop
        finally:
            self._leave()

    cdef _copy_rows(self, k, v, int64_t start, int64_t stop, bint into_cache):
        cdef size_t es = 2 if self.dtype == "f16" else 4
        cdef int64_t row = self.kv.row, n_ctx = self.kv.n_ctx, width = k.shape[1], il
        cdef char *kc = <char *>self.kv.k
        cdef char *vc = <char *>self.kv.v
        cdef char *ka = <char *><size_t>k.ctypes.data
        cdef char *va = <char *><size_t>v.ctypes.data
        cdef size_t span = <size_t>((stop - start) * row) * es
        cdef size_t cache_off, arr_off
        with nogil:
            for il in range(self.kv.n_layer):
                cache_off = <size_t>((il * n_ctx + start) * row) * es
                arr_off = <size_t>((il * width + start) * row) * es
                if into_cache:
                    memcpy(kc + cache_off, ka + arr_off, span)
                    memcpy(vc + cache_off, va + arr_off, span)
                else:
                    memcpy(ka + arr_off, kc + cache_off, span)
                    memcpy(va + arr_off, vc + cache_off, span)

    def profile(self) -> dict:
        """Seconds spent per op in this cache's layer calls (the model must profile)."""
        return {name: self.scratch.prof[i] for i, name in enumerate(PROFILE_OPS)}

    def reset_profile(self) -> None:
        for i in range(REALM_OP_COUNT):
            self.scratch.prof[i] = 0.0

    cdef _enter(self):
        if self.busy:
            raise BusyError("this KV cache is in use by another call")
        self.busy = True

    cdef _leave(self):
        self.busy = False

    def _forward_at(self, ForwardModel model, size_t tokens, int64_t n, int64_t pos, size_t logits) -> int:
        """Embedding, every layer and (unless logits is 0) the last token's logits for n tokens
        at positions pos.. -- token ids and logits at addresses checked by the caller, the
        hidden rows in this cache's scratch; returns the C code."""
        if self.model is not model:
            return REALM_EINVAL
        cdef realm_seq q
        q.tokens, q.n, q.pos, q.kv, q.logits = <const int32_t *>tokens, n, pos, self.kv, <float *>logits
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = realm_forward_batch(&model.m, &q, 1, &self.scratch)
        finally:
            self._leave()
        return rc

    def _run_layer(self, ForwardModel model, int il, size_t hidden, int64_t n, int64_t pos, size_t out) -> int:
        """Layer il at guest/host addresses (checked by the caller); returns the C code."""
        if self.model is not model:
            return REALM_EINVAL
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = realm_forward_layer(&model.m, il, <const float *>hidden, n, pos, self.kv, &self.scratch,
                                         <float *>out)
        finally:
            self._leave()
        return rc



cdef class Batch:
    """Passes of a ForwardModel over many sequences at once (csrc/forward.h's realm_seq):
    every weight block is read once for all their tokens.  Keeps its scratch between passes.
    Used by realm.batching, which checks the addresses it passes (guest memory or host
    arrays) and runs one pass at a time."""
    cdef realm_scratch scratch
    cdef realm_seq *seqs
    cdef int cap
    cdef readonly ForwardModel model

    def __cinit__(self):
        memset(&self.scratch, 0, sizeof(realm_scratch))
        self.seqs = NULL
        self.cap = 0

    def __init__(self, ForwardModel model):
        self.model = model

    def __dealloc__(self):
        realm_scratch_free(&self.scratch)
        free(self.seqs)

    def check(self, KVCache kv, size_t tokens, int64_t n, int64_t pos, int il=-1) -> int:
        """The C code's verdict on one sequence (0, or the code a pass with it would fail
        with): il -1 for a whole forward step (token ids at `tokens` included), else layer il."""
        if kv.model is not self.model:
            return REALM_EINVAL
        cdef realm_seq q
        q.tokens, q.n, q.pos, q.kv, q.logits = <const int32_t *>tokens, n, pos, kv.kv, NULL
        return realm_seq_check(&self.model.m, il, &q)

    cdef int _fill(self, list items, bint with_tokens) except -1:
        cdef int n = len(items)
        if n == 0:
            raise InvalidArgumentError("a pass needs a sequence")
        if n > self.cap:
            free(self.seqs)
            self.seqs = <realm_seq *>calloc(n, sizeof(realm_seq))
            self.cap = n if self.seqs != NULL else 0
            if self.seqs == NULL:
                raise OutOfMemoryError("Batch: out of memory")
        cdef KVCache kv
        cdef int i
        for i in range(n):
            item = items[i]
            kv = item[0]
            if kv.model is not self.model:
                raise InvalidArgumentError("a KV cache of another model")
            self.seqs[i].kv = kv.kv
            if with_tokens:
                self.seqs[i].tokens = <const int32_t *><size_t>item[1]
                self.seqs[i].n, self.seqs[i].pos = item[2], item[3]
                self.seqs[i].logits = <float *><size_t>item[4]
            else:
                self.seqs[i].tokens = NULL
                self.seqs[i].n, self.seqs[i].pos = item[1], item[2]
                self.seqs[i].logits = NULL
        return 0

    def forward(self, list items) -> int:
        """One pass of whole forward steps: items are (KVCache, tokens address, n, position,
        logits address or 0); returns the C code."""
        self._fill(items, True)
        return self._run(items, -1, 0)

    def layer(self, int il, list items, size_t hidden) -> int:
        """Layer il for items (KVCache, n, position) whose hidden rows lie back to back at
        `hidden` (updated in place); returns the C code."""
        self._fill(items, False)
        return self._run(items, il, hidden)

    cdef int _run(self, list items, int il, size_t hidden) except? -1:
        cdef int rc = 0, n = len(items)
        if len({id(item[0]) for item in items}) < n:
            return REALM_EINVAL  # one cache twice: the C code's answer too
        entered = []
        try:
            for item in items:
                (<KVCache>item[0])._enter()
                entered.append(item[0])
            with nogil:
                if il < 0:
                    rc = realm_forward_batch(&self.model.m, self.seqs, n, &self.scratch)
                else:
                    rc = realm_forward_layer_batch(&self.model.m, il, self.seqs, n, <float *>hidden, &self.scratch)
        finally:
            for kv in entered:
                (<KVCache>kv)._leave()
        return rc
