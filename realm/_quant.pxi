# The dequantizers and the table of formats (csrc/dequant*.c, csrc/traits.c) for Python, and the
# GGUF reader's walk over strings: included by _native.pyx.  A thin wrapper: the caller
# (realm.quants) validates, this checks the buffer sizes once more and runs the kernel without the GIL.

from libc.stdint cimport int64_t, uint64_t

import numpy as np

from .errors import InternalError, InvalidArgumentError

cdef extern from "dequant.h":
    ctypedef struct realm_act_group:
        pass
    ctypedef void (*realm_to_float_fn)(const void *src, float *dst, int64_t nblocks) noexcept nogil
    ctypedef void (*realm_dot_fn)(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y,
                                  int64_t ys) noexcept nogil
    ctypedef struct realm_type_traits:
        const char *name
        int block_size
        int type_size
        int align
        int act
        int repacked
        realm_to_float_fn to_float_ref, to_float_avx2, to_float_neon
        realm_dot_fn dot_ref[2]
        realm_dot_fn dot_avx2[2]
        realm_dot_fn dot_neon[2]
        realm_dot_fn dot_vnni[2]
        realm_dot_fn dot_avx512[2]
    const realm_type_traits *realm_get_traits(int type)
    int REALM_TYPE_COUNT
    int REALM_ACT_NONE, REALM_ACT_F32, REALM_ACT_Q8, REALM_ACT_Q8_K, REALM_ACT_F16, REALM_ACT_BF16
    int realm_dequantize(int type, const void *src, int64_t nblocks, float *dst,
                         int nthreads, int isa) nogil
    int realm_best_isa()
    const char *realm_isa_name(int isa)
    int REALM_ISA_AUTO, REALM_ISA_SCALAR, REALM_ISA_AVX2, REALM_ISA_NEON
    int REALM_EUNSUPPORTED, REALM_ENOISA

ISAS = {"auto": REALM_ISA_AUTO, "scalar": REALM_ISA_SCALAR,
        "avx2": REALM_ISA_AVX2, "neon": REALM_ISA_NEON}


def type_traits(int qtype):
    """(name, block_size, type_size, align) of a type realm has kernels for, else None."""
    cdef const realm_type_traits *tt = realm_get_traits(qtype)
    if tt == NULL:
        return None
    return tt.name.decode(), tt.block_size, tt.type_size, tt.align


def formats():
    """The table of formats (csrc/traits.c), for tests: a dict per row, by type id, of its
    geometry, `act` ("f32", "q8", "q8_k", "f16", "bf16", or None without a dot kernel), `repacked`,
    and which kernels the row names: `to_float` {path: bool} and `dot` {path: (vec_dot, whole)}."""
    acts = {REALM_ACT_NONE: None, REALM_ACT_F32: "f32", REALM_ACT_Q8: "q8", REALM_ACT_Q8_K: "q8_k",
            REALM_ACT_F16: "f16", REALM_ACT_BF16: "bf16"}
    cdef const realm_type_traits *tt
    rows = {}
    for t in range(REALM_TYPE_COUNT):
        tt = realm_get_traits(t)
        if tt == NULL:
            continue
        rows[t] = {
            "name": tt.name.decode(), "block_size": tt.block_size, "type_size": tt.type_size, "align": tt.align,
            "act": acts.get(tt.act, tt.act), "repacked": bool(tt.repacked),
            "to_float": {"ref": tt.to_float_ref != NULL, "avx2": tt.to_float_avx2 != NULL,
                         "neon": tt.to_float_neon != NULL},
            "dot": {"ref": (tt.dot_ref[0] != NULL, tt.dot_ref[1] != NULL),
                    "avx2": (tt.dot_avx2[0] != NULL, tt.dot_avx2[1] != NULL),
                    "neon": (tt.dot_neon[0] != NULL, tt.dot_neon[1] != NULL),
                    "vnni": (tt.dot_vnni[0] != NULL, tt.dot_vnni[1] != NULL),
                    "avx512": (tt.dot_avx512[0] != NULL, tt.dot_avx512[1] != NULL)},
        }
    return rows


def best_isa():
    """The SIMD path the running CPU gets ("avx2", "neon" or "scalar")."""
    return realm_isa_name(realm_best_isa()).decode()


def dequantize_into(const unsigned char[::1] src, int qtype, float[::1] dst,
                    int threads=0, str isa="auto"):
    """Dequantize all of `src` (whole blocks of `qtype`) into `dst`."""
    cdef const realm_type_traits *tt = realm_get_traits(qtype)
    if tt == NULL:
        raise InvalidArgumentError(f"no kernel for GGML type {qtype}")
    if isa not in ISAS:
        raise InvalidArgumentError(f"unknown isa {isa!r}; expected one of {sorted(ISAS)}")
    cdef int isa_id = ISAS[isa]
    cdef Py_ssize_t nbytes = src.shape[0]
    if nbytes % tt.type_size:
        raise InvalidArgumentError(f"{nbytes} bytes is not a whole number of {tt.name.decode()} blocks")
    cdef int64_t nblocks = nbytes // tt.type_size
    if dst.shape[0] != nblocks * tt.block_size:
        raise InvalidArgumentError(f"output holds {dst.shape[0]} floats, {nblocks * tt.block_size} needed")
    if nblocks == 0:
        return
    if <size_t>&src[0] % tt.align:
        raise InvalidArgumentError(f"{tt.name.decode()} data must start at a multiple of {tt.align} bytes")
    cdef int rc
    with nogil:
        rc = realm_dequantize(qtype, &src[0], nblocks, &dst[0], threads, isa_id)
    if rc == REALM_ENOISA:
        raise InvalidArgumentError(f"this CPU cannot run the {isa} path")
    if rc != 0:
        raise InternalError(f"realm_dequantize failed with code {rc}")


# -- the GGUF reader's walk over an array of strings (realm/reader.py) ------------------------

def string_ends(const unsigned char[::1] buf, Py_ssize_t pos, Py_ssize_t count, Py_ssize_t size):
    """Walk `count` GGUF strings (a u64 little-endian length, then that many bytes) from byte
    `pos` of buf[:size]: the end of each as an int64 array, or None when one runs past `size`.
    One pass in C with the GIL released and one int64 per string, so a hostile count costs
    neither Python objects nor time proportional to anything but the bytes it spans."""
    if size > buf.shape[0] or not 0 <= pos <= size or count < 0:
        raise InvalidArgumentError("string_ends: a range outside the buffer")
    ends = np.empty(count, dtype=np.int64)
    cdef int64_t[::1] out = ends
    cdef Py_ssize_t i
    cdef uint64_t n, at = pos, end = size
    cdef bint ok = True
    with nogil:
        for i in range(count):
            if end - at < 8:
                ok = False
                break
            n = (<uint64_t>buf[at] | <uint64_t>buf[at + 1] << 8 | <uint64_t>buf[at + 2] << 16
                 | <uint64_t>buf[at + 3] << 24 | <uint64_t>buf[at + 4] << 32 | <uint64_t>buf[at + 5] << 40
                 | <uint64_t>buf[at + 6] << 48 | <uint64_t>buf[at + 7] << 56)
            at += 8
            if n > end - at:  # compared before adding: a huge length cannot wrap
                ok = False
                break
            at += n
            out[i] = <int64_t>at
    return ends if ok else None
