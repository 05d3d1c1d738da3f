/* The dequantization driver: picks the instruction-set path and splits large
 * tensors across OpenMP threads. */
#include "dequant.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many output elements a second thread costs more than it saves. */
#define REALM_MIN_PARALLEL_ELEMS (1 << 21)

static int cpu_best_isa(void) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return REALM_ISA_AVX2;
#elif defined(__aarch64__)
    return REALM_ISA_NEON;
#endif
    return REALM_ISA_SCALAR;
}

int realm_best_isa(void) {
    static int best; /* 0 (REALM_ISA_AUTO): not asked yet; threads racing here store the same value */
    int isa = __atomic_load_n(&best, __ATOMIC_RELAXED);
    if (isa == REALM_ISA_AUTO) {
        isa = cpu_best_isa();
        __atomic_store_n(&best, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

int realm_resolve_isa(int isa) {
    const int best = realm_best_isa();
    if (isa == REALM_ISA_AUTO) return best;
    if (isa == REALM_ISA_SCALAR || isa == best) return isa;
    return REALM_ENOISA;
}

int realm_max_threads(void) {
#ifdef _OPENMP
    return REALM_THREADS_PER_CORE_MAX * omp_get_num_procs();
#else
    return 1;
#endif
}

int realm_resolve_threads(int nthreads) {
#ifdef _OPENMP
    /* realm/threads.py refuses counts above realm_max_threads(); the clamp keeps any
     * other caller from asking OpenMP for a team it would abort the process over. */
    const int most = realm_max_threads();
    return nthreads > 0 ? (nthreads < most ? nthreads : most) : omp_get_num_procs();
#else
    (void)nthreads;
    return 1;
#endif
}

const char *realm_isa_name(int isa) {
    switch (isa) {
    case REALM_ISA_SCALAR: return "scalar";
    case REALM_ISA_AVX2: return "avx2";
    case REALM_ISA_NEON: return "neon";
    default: return "auto";
    }
}

/* The row dequantizer of the type's traits for the path (its streaming one for an output of
 * REALM_STREAM_MIN_BYTES or more, where it has one), else its scalar reference (formats
 * without a SIMD row: F32, a copy). */
static realm_to_float_fn pick(const realm_type_traits *tt, int isa, int64_t out_bytes) {
    realm_to_float_fn fn = NULL;
    if (isa == REALM_ISA_AVX2)
        fn = out_bytes >= REALM_STREAM_MIN_BYTES && tt->to_float_stream ? tt->to_float_stream : tt->to_float_avx2;
    else if (isa == REALM_ISA_NEON) fn = tt->to_float_neon;
    return fn ? fn : tt->to_float_ref;
}

int realm_dequantize(int type, const void *src, int64_t nblocks, float *dst, int nthreads, int isa) {
    const realm_type_traits *tt = realm_get_traits(type);
    if (!tt) return REALM_EUNSUPPORTED;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    const realm_to_float_fn fn = pick(tt, isa, nblocks * tt->block_size * (int64_t)sizeof(float));
    if (!fn) return REALM_EUNSUPPORTED;
    const int nt = nblocks * tt->block_size >= REALM_MIN_PARALLEL_ELEMS ? realm_resolve_threads(nthreads) : 1;
    if (nt <= 1) {
        fn(src, dst, nblocks);
        return 0;
    }
    /* Contiguous chunks, one per thread, cut on 16-block boundaries. */
    const int64_t per = ((nblocks + nt - 1) / nt + 15) & ~(int64_t)15;
    const char *s = src;
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++) {
        const int64_t first = (int64_t)t * per;
        if (first < nblocks) {
            const int64_t count = nblocks - first < per ? nblocks - first : per;
            fn(s + first * tt->type_size, dst + first * tt->block_size, count);
        }
    }
    return 0;
}
