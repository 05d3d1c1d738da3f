/* AVX-512 kernels of the F16 and BF16 weights: llama.cpp's own loops
 * (matmul_float.h) in 512-bit registers, BF16 with vdpbf16ps itself, so on the
 * CPUs that have AVX-512 F, BW, VL and BF16 (checked at run time:
 * realm_matmul_avx512) they run at llama.cpp's speed with the same bits as the
 * AVX2 and scalar kernels.  (F32 keeps its AVX2 kernel: reading f32 rows 64
 * bytes at a time was slower, on Zen 4, than 32 at a time.) */
#include "matmul.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include "kernels.h"
#include "matmul_float.h"

#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")))
#define INLINE static inline __attribute__((always_inline))

static int use_avx512 = -1; /* -1: not decided yet */

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

int realm_matmul_avx512(int enable) {
    if (enable >= 0) __atomic_store_n(&use_avx512, enable && cpu_has_avx512(), __ATOMIC_RELAXED);
    int v = __atomic_load_n(&use_avx512, __ATOMIC_RELAXED);
    if (v < 0) { /* decided once, on first use */
        v = cpu_has_avx512();
        __atomic_store_n(&use_avx512, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* _mm512_reduce_add_ps's tree (realm_hsum16f), spelled out. */
AVX512 INLINE float hsum16(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)), _mm512_castps512_ps256(v));
    __m128 q = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

AVX512 INLINE __m512 load_w16(const void *w, int64_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const void *)((const char *)w + 2 * i)));
}

/* F16, tokens [t0, t0 + TT) (TT <= 4): four sums of 16 lanes a token. */
AVX512 INLINE void f16_tokens(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, int t0,
                              const int TT) {
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    __m512 acc[4][4];
    for (int t = 0; t < TT; t++)
        for (int j = 0; j < 4; j++) acc[t][j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP) {
        for (int j = 0; j < 4; j++) {
            const __m512 wv = load_w16(w, i + 16 * j);
            for (int t = 0; t < TT; t++)
                acc[t][j] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(a->xf + (t0 + t) * a->n_in + i + 16 * j), acc[t][j]);
        }
    }
    for (int t = 0; t < TT; t++) {
        const float *x = a->xf + (t0 + t) * a->n_in;
        const float s = hsum16(_mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][2]), _mm512_add_ps(acc[t][1], acc[t][3])));
        y[(t0 + t) * ys] = realm_f16_tail(s, w, x, np, n);
    }
}

AVX512 void realm_f16_dot_avx512(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    int t = 0;
    for (; t + 4 <= ntok; t += 4) f16_tokens(n, w, a, y, ys, t, 4);
    switch (ntok - t) {
    case 3: f16_tokens(n, w, a, y, ys, t, 3); break;
    case 2: f16_tokens(n, w, a, y, ys, t, 2); break;
    case 1: f16_tokens(n, w, a, y, ys, t, 1); break;
    }
}

_Static_assert(REALM_TOK_GROUP == 8, "realm_bf16_dot_avx512 takes a group in one pass");

/* BF16, tokens [t0, t0 + TT) (TT <= 8): ggml's two vdpbf16ps accumulators a token. */
AVX512 INLINE void bf16_tokens(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, int t0,
                               const int TT) {
    const char *wb = w; /* 2 bytes a value */
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    __m512 c[8][2];
    for (int t = 0; t < TT; t++) c[t][0] = c[t][1] = _mm512_setzero_ps();
    for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP) {
        const __m512i w1 = _mm512_loadu_si512(wb + 2 * i), w2 = _mm512_loadu_si512(wb + 2 * (i + 32));
        for (int t = 0; t < TT; t++) {
            const uint16_t *x = a->xh + (t0 + t) * a->n_in + i;
            c[t][0] = _mm512_dpbf16_ps(c[t][0], (__m512bh)w1, (__m512bh)_mm512_loadu_si512((const void *)x));
            c[t][1] = _mm512_dpbf16_ps(c[t][1], (__m512bh)w2, (__m512bh)_mm512_loadu_si512((const void *)(x + 32)));
        }
    }
    for (int t = 0; t < TT; t++)
        y[(t0 + t) * ys] = realm_bf16_tail(hsum16(c[t][0]), hsum16(c[t][1]), w, a->xh + (t0 + t) * a->n_in, np, n);
}

AVX512 void realm_bf16_dot_avx512(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    switch (ntok) {
    case 1: bf16_tokens(n, w, a, y, ys, 0, 1); break;
    case 2: bf16_tokens(n, w, a, y, ys, 0, 2); break;
    case 3: bf16_tokens(n, w, a, y, ys, 0, 3); break;
    case 4: bf16_tokens(n, w, a, y, ys, 0, 4); break;
    case 5: bf16_tokens(n, w, a, y, ys, 0, 5); break;
    case 6: bf16_tokens(n, w, a, y, ys, 0, 6); break;
    case 7: bf16_tokens(n, w, a, y, ys, 0, 7); break;
    default: bf16_tokens(n, w, a, y, ys, 0, 8); break;
    }
}

#else

int realm_matmul_avx512(int enable) {
    (void)enable;
    return 0;
}

#endif
