/* AVX2 dot-product kernels: one weight row against a group of up to
 * REALM_TOK_GROUP activation rows.
 *
 * Each weight block is decoded once into bytes and multiplied into every
 * row of the token group with _mm256_maddubs_epi16 (unsigned weight byte x
 * signed activation byte; signed weights go through the sign trick) and
 * _mm256_madd_epi16 (or, for the 32-value formats on CPUs with AVX-512 VNNI,
 * one dpbusd: matmul_dot32.h), which leaves 8 exact int32 lane sums (lane k:
 * bytes 4k..4k+3 of each 32-byte group).  The float steps then follow
 * matmul.h (llama.cpp's x86 kernels): per block, lane-wise FMAs into 8 partial
 * sums per token and ggml's hsum_float_8 at the end, or, for the matrices
 * llama.cpp repacks, FMAs of whole-block sums.  The scalar reference in
 * matmul_ref.c performs the same steps, bit for bit. */
#include "matmul.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "kernels.h"
#include "matmul_avx2.h"

#include <stdlib.h>

/* ---- 32-element formats ---- */

/* A block's 32 values as bytes: signed for Q4_0, Q5_0, Q8_0; unsigned
 * (0..15, 0..31) for Q4_1, Q5_1. */
AVX2 INLINE __m256i decode32(const void *w, int64_t b, const int type) {
    switch (type) {
    case REALM_TYPE_Q4_0: return _mm256_sub_epi8(nibbles16(((const block_q4_0 *)w)[b].qs), _mm256_set1_epi8(8));
    case REALM_TYPE_Q4_1: return nibbles16(((const block_q4_1 *)w)[b].qs);
    case REALM_TYPE_Q5_0: { /* nibble - 16 where the high bit is clear: nibble | 0xf0 */
        const block_q5_0 *x = (const block_q5_0 *)w + b;
        return _mm256_or_si256(nibbles16(x->qs), _mm256_andnot_si256(bits32(x->qh), _mm256_set1_epi8((char)0xf0)));
    }
    case REALM_TYPE_Q5_1: {
        const block_q5_1 *x = (const block_q5_1 *)w + b;
        return _mm256_or_si256(nibbles16(x->qs), _mm256_and_si256(bits32(x->qh), _mm256_set1_epi8(0x10)));
    }
    case REALM_TYPE_Q8_0: return load32(((const block_q8_0 *)w)[b].qs);
    }
    abort(); /* not reached: only the kernels of matmul_dot32.h call this, each with its own type */
}

AVX2 INLINE void scales32(const void *w, int64_t b, const int type, float *d, float *m) {
    switch (type) {
    case REALM_TYPE_Q4_0: *d = _cvtsh_ss(((const block_q4_0 *)w)[b].d); break;
    case REALM_TYPE_Q4_1: *d = _cvtsh_ss(((const block_q4_1 *)w)[b].d); *m = _cvtsh_ss(((const block_q4_1 *)w)[b].m); break;
    case REALM_TYPE_Q5_0: *d = _cvtsh_ss(((const block_q5_0 *)w)[b].d); break;
    case REALM_TYPE_Q5_1: *d = _cvtsh_ss(((const block_q5_1 *)w)[b].d); *m = _cvtsh_ss(((const block_q5_1 *)w)[b].m); break;
    case REALM_TYPE_Q8_0: *d = _cvtsh_ss(((const block_q8_0 *)w)[b].d); break;
    default: abort(); /* not reached: only the kernels of matmul_dot32.h call this, each with its own type */
    }
}

/* The 32-value kernels (matmul_dot32.h), once with maddubs + madd and once
 * with AVX-512 VNNI's dpbusd where the CPU has it: the same exact lane sums. */
#define DOT32_ATTR AVX2
#define DOT32_NAME(x) x##_avx2
#define DOT32_LANES(au, sx) _mm256_madd_epi16(_mm256_maddubs_epi16(au, sx), _mm256_set1_epi16(1))
#include "matmul_dot32.h"
#undef DOT32_ATTR
#undef DOT32_NAME
#undef DOT32_LANES

#define DOT32_ATTR __attribute__((target("avx2,fma,f16c,avx512vnni,avx512vl")))
#define DOT32_NAME(x) x##_vnni
#define DOT32_LANES(au, sx) _mm256_dpbusd_epi32(_mm256_setzero_si256(), au, sx)
#include "matmul_dot32.h"
#undef DOT32_ATTR
#undef DOT32_NAME
#undef DOT32_LANES

static int use_vnni = -1; /* -1: not decided yet */

static int cpu_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
}

int realm_matmul_vnni(int enable) {
    if (enable >= 0) __atomic_store_n(&use_vnni, enable && cpu_has_vnni(), __ATOMIC_RELAXED);
    int v = __atomic_load_n(&use_vnni, __ATOMIC_RELAXED);
    if (v < 0) { /* decided once, on first use */
        v = cpu_has_vnni();
        __atomic_store_n(&use_vnni, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* ---- K-quants (blocks of 256; per-16 activation sums in bsums) ---- */

#define BSUMS(a, t, b) _mm256_loadu_si256((const __m256i *)((a)->bsums + (int64_t)(t) * ((a)->n_in / 16) + 16 * (b)))
#define XROW(a, t, b, off) load32(TOKEN_ROW(a, t) + QK_K * (b) + (off))

/* Scales per 16 values, int16 [s0..s7 | s8..s15] split so that lo / hi hold
 * one half in both 128-bit lanes; pair16(g) is [s_2g x8 | s_2g+1 x8], the
 * multiplier of the 32 values of group g after maddubs. */
typedef struct {
    __m256i lo, hi;
} scales16;

AVX2 INLINE scales16 scales16_of(__m256i sc) {
    scales16 r;
    r.lo = _mm256_permute2x128_si256(sc, sc, 0x00);
    r.hi = _mm256_permute2x128_si256(sc, sc, 0x11);
    return r;
}

AVX2 INLINE __m256i pair16(const scales16 *s, int g) {
    const int k = g & 3;
    const __m256i ctrl = _mm256_setr_epi8(4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
                                          4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
                                          4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3,
                                          4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3);
    return _mm256_shuffle_epi8(g < 4 ? s->lo : s->hi, ctrl);
}

/* Word k of both lanes of v, repeated (the scale of a whole 32-value group). */
AVX2 INLINE __m256i word16(__m256i v, int k) {
    const __m256i ctrl = _mm256_set1_epi16((short)((2 * k) | (2 * k + 1) << 8));
    return _mm256_shuffle_epi8(v, ctrl);
}

/* Lanes [sum a, sum b, sum a, sum b]. */
AVX2 INLINE __m128i hsum2(__m256i a, __m256i b) {
    __m256i h = _mm256_hadd_epi32(a, b);
    h = _mm256_hadd_epi32(h, h);
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

AVX2 INLINE void store_hsum8(float *y, int64_t ys, const __m256 *acc, const int T) {
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]);
}

#define LANES_ACC __m256 acc[G]; for (int t = 0; t < G; t++) acc[t] = _mm256_setzero_ps()

/* Q2_K: 16 sub-blocks of 16, 4-bit scale and min each; value in [0, 3].
 * The integer lanes of a block for each token: s (values times scales) and
 * mm (minimums times the 16-value sums). */
AVX2 INLINE void q2_block(const block_q2_K *w, const realm_act_group *a, int64_t b, __m256i *s, __m256i *mm, const int T) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m128i packed = _mm_loadu_si128((const __m128i *)w->scales);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), m4));
    const scales16 sc = scales16_of(_mm256_cvtepu8_epi16(_mm_and_si128(packed, m4)));
    for (int t = 0; t < T; t++) {
        mm[t] = _mm256_madd_epi16(BSUMS(a, t, b), mins);
        s[t] = _mm256_setzero_si256();
    }
    for (int g = 0; g < 8; g++) {
        const __m256i q = load32(w->qs + 32 * (g / 4));
        const __m256i u = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (g % 4)), m3);
        const __m256i scale = pair16(&sc, g);
        for (int t = 0; t < T; t++)
            s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, XROW(a, t, b, 32 * g)), scale));
    }
}

/* Per block the minimums' lanes go in first, then the values'. */
AVX2 INLINE void q2_K_k(int64_t nb, const block_q2_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    LANES_ACC;
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G], mm[G];
        q2_block(&w[b], a, b, s, mm, T);
        const float dw = _cvtsh_ss(w[b].d), dmw = _cvtsh_ss(w[b].dmin);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) acc[t] = fold8(fold8(acc[t], -(dx[t] * dmw), mm[t]), dx[t] * dw, s[t]);
    }
    store_hsum8(y, ys, acc, T);
}

AVX2 INLINE void q2_K_whole_k(int64_t nb, const block_q2_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    WHOLE_ACC;
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G], mm[G];
        q2_block(&w[b], a, b, s, mm, T);
        const float *dx = a->d + realm_act_slot(0, b);
        whole_fold(acc, s, _cvtsh_ss(w[b].d), dx, T);
        whole_fold(accm, mm, _cvtsh_ss(w[b].dmin), dx, T);
    }
    whole_store(y, ys, acc, accm, T);
}

/* The 16 scales of a Q3_K block as int16 (as realm_q3_K_scales): the low 4
 * bits of scale j are nibble j of bytes 0..7 (low nibbles first), the high 2
 * bits are bits 2(j/4)..+1 of byte 8 + j%4; bias 32. */
AVX2 INLINE __m256i q3_scales(const uint8_t *packed) {
    uint32_t u[3];
    memcpy(u, packed, 12);
    const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    const __m128i v = _mm_setr_epi32((int)((u[0] & m4) | (u[2] & m2) << 4), (int)((u[1] & m4) | ((u[2] >> 2) & m2) << 4),
                                     (int)(((u[0] >> 4) & m4) | ((u[2] >> 4) & m2) << 4),
                                     (int)(((u[1] >> 4) & m4) | ((u[2] >> 6) & m2) << 4));
    return _mm256_cvtepi8_epi16(_mm_sub_epi8(v, _mm_set1_epi8(32)));
}

/* Q3_K: 16 signed 6-bit scales; value = low 2 bits + 4 * hmask bit - 4, taken
 * signed (each lane carries its own values' offset, as ggml's). */
AVX2 INLINE void q3_K_k(int64_t nb, const block_q3_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    LANES_ACC;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t b = 0; b < nb; b++) {
        const scales16 sc = scales16_of(q3_scales(w[b].scales));
        const __m256i hm = load32(w[b].hmask);
        const float dw = _cvtsh_ss(w[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        __m256i s[G];
        for (int t = 0; t < T; t++) s[t] = _mm256_setzero_si256();
        for (int g = 0; g < 8; g++) {
            const __m256i q = load32(w[b].qs + 32 * (g / 4));
            const __m256i u = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * (g % 4)), m3), bitplane(hm, g, 2));
            const __m256i v = _mm256_sub_epi8(u, _mm256_set1_epi8(4)), av = _mm256_sign_epi8(v, v);
            const __m256i scale = pair16(&sc, g);
            for (int t = 0; t < T; t++) {
                const __m256i p = _mm256_maddubs_epi16(av, _mm256_sign_epi8(XROW(a, t, b, 32 * g), v));
                s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(p, scale));
            }
        }
        for (int t = 0; t < T; t++) acc[t] = fold8(acc[t], dx[t] * dw, s[t]);
    }
    store_hsum8(y, ys, acc, T);
}

/* The 8 scales and 8 mins (6 bits each) of a Q4_K / Q5_K block, as int16
 * vectors: scales [s0..s7 | s0..s7], mins [m0 m0 m1 m1 .. m7 m7] (one per 16). */
AVX2 INLINE void k4_scales(const uint8_t *packed, __m256i *sc, __m256i *mins) {
    uint32_t u[3];
    memcpy(u, packed, 12);
    const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    const uint32_t s_lo = u[0] & m6, m_lo = u[1] & m6;
    const uint32_t s_hi = (u[2] & m4) | ((u[0] >> 6) & m2) << 4;
    const uint32_t m_hi = ((u[2] >> 4) & m4) | ((u[1] >> 6) & m2) << 4;
    const __m128i v = _mm_setr_epi32((int)s_lo, (int)s_hi, (int)m_lo, (int)m_hi); /* 8 scales, 8 mins */
    *sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(v));
    const __m128i m = _mm_unpackhi_epi64(v, v);
    *mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
}

/* The integer lanes of a Q4_K / Q5_K block for each token: s (values times
 * scales) and mm (minimums times the 16-value sums). */
AVX2 INLINE void q45_block(const uint8_t *qs, const uint8_t *qh5, const uint8_t *packed, const realm_act_group *a,
                           int64_t b, __m256i *s, __m256i *mm, const int T) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i sc, mins;
    k4_scales(packed, &sc, &mins);
    const __m256i qh = qh5 ? load32(qh5) : _mm256_setzero_si256();
    for (int t = 0; t < T; t++) s[t] = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m256i q = load32(qs + 32 * j);
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh5) {
            lo = _mm256_or_si256(lo, bitplane(qh, 2 * j, 4));
            hi = _mm256_or_si256(hi, bitplane(qh, 2 * j + 1, 4));
        }
        const __m256i s0 = word16(sc, 2 * j), s1 = word16(sc, 2 * j + 1);
        for (int t = 0; t < T; t++) {
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, XROW(a, t, b, 64 * j)), s0);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, XROW(a, t, b, 64 * j + 32)), s1);
            s[t] = _mm256_add_epi32(s[t], _mm256_add_epi32(p0, p1));
        }
    }
    for (int t = 0; t < T; t++) mm[t] = _mm256_madd_epi16(BSUMS(a, t, b), mins);
}

/* Q4_K as llama.cpp multiplies a repacked matrix: whole-block sums,
 * acc = fma(isum, dw * dx, acc), accm likewise with the minimums, y = acc -
 * accm.  One token keeps acc in lane 0 and accm in lane 1 of acc[0]. */
AVX2 INLINE void q4_K_whole_k(int64_t nb, const block_q4_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    WHOLE_ACC;
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G], mm[G];
        q45_block(w[b].qs, NULL, w[b].scales, a, b, s, mm, T);
        const float *dx = a->d + realm_act_slot(0, b);
        if (T == 1) {
            const __m128 dw = _mm_cvtph_ps(_mm_set1_epi32((int)((uint32_t)w[b].d | (uint32_t)w[b].dmin << 16)));
            acc[0] = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum2(s[0], mm[0])), _mm_mul_ps(dw, _mm_set1_ps(dx[0])), acc[0]);
            continue;
        }
        whole_fold(acc, s, _cvtsh_ss(w[b].d), dx, T);
        whole_fold(accm, mm, _cvtsh_ss(w[b].dmin), dx, T);
    }
    if (T == 1) {
        y[0] = _mm_cvtss_f32(_mm_sub_ss(acc[0], _mm_movehdup_ps(acc[0])));
        return;
    }
    whole_store(y, ys, acc, accm, T);
}

/* Q4_K as ggml_vec_dot_q4_K_q8_K: value lanes as the other K-quants; the
 * minimums in 4 lanes (lane i: 32-value sub-blocks 2i and 2i + 1) of
 * fma(-(dx * dmin), lane, accm), y = hsum8(acc) + (accm0 + accm2) + (accm1 + accm3). */
AVX2 INLINE void q4_K_k(int64_t nb, const block_q4_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    LANES_ACC;
    __m128 accm[G];
    for (int t = 0; t < T; t++) accm[t] = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G], mm[G];
        q45_block(w[b].qs, NULL, w[b].scales, a, b, s, mm, T);
        const float dw = _cvtsh_ss(w[b].d), dmw = _cvtsh_ss(w[b].dmin);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            acc[t] = fold8(acc[t], dx[t] * dw, s[t]);
            const __m256i h = _mm256_hadd_epi32(mm[t], mm[t]); /* pairs of 32-value lanes */
            const __m128i m4 = _mm_unpacklo_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            accm[t] = _mm_fmadd_ps(_mm_set1_ps(-(dx[t] * dmw)), _mm_cvtepi32_ps(m4), accm[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        const __m128 r = _mm_add_ps(accm[t], _mm_movehl_ps(accm[t], accm[t]));
        y[t * ys] = hsum8(acc[t]) + _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
    }
}

/* Q5_K: lanes as the other K-quants; the minimums' whole-block sum goes to
 * summs = fma(-(dx * dmin), imin, summs), y = hsum8(acc) + summs. */
AVX2 INLINE void q5_K_k(int64_t nb, const block_q5_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    LANES_ACC;
    __m128 summs[G];
    for (int t = 0; t < T; t++) summs[t] = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G], mm[G];
        q45_block(w[b].qs, w[b].qh, w[b].scales, a, b, s, mm, T);
        const float dw = _cvtsh_ss(w[b].d), dmw = _cvtsh_ss(w[b].dmin);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            acc[t] = fold8(acc[t], dx[t] * dw, s[t]);
            summs[t] = _mm_fmadd_ss(_mm_set_ss(-(dx[t] * dmw)), _mm_cvtepi32_ps(hsum4(&mm[t], 1)), summs[t]);
        }
    }
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]) + _mm_cvtss_f32(summs[t]);
}

/* Q6_K: 16 int8 scales per 16 values; value = 6-bit u - 32, the offset per
 * lane from the 16-value sums (-32 (sc_2k bsum_2k + sc_2k+1 bsum_2k+1)). */
AVX2 INLINE void q6_K_k(int64_t nb, const block_q6_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    LANES_ACC;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
    for (int64_t b = 0; b < nb; b++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[b].scales));
        const scales16 sc = scales16_of(sc16);
        const float dw = _cvtsh_ss(w[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        __m256i s[G];
        for (int t = 0; t < T; t++)
            s[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(BSUMS(a, t, b), sc16), 5));
        for (int n = 0; n < 2; n++) {
            const __m256i ql0 = load32(w[b].ql + 64 * n), ql1 = load32(w[b].ql + 64 * n + 32);
            const __m256i qh = load32(w[b].qh + 32 * n);
            for (int k = 0; k < 4; k++) {
                const __m256i ql = (k & 1) ? ql1 : ql0;
                const __m256i lo = _mm256_and_si256(k >= 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
                const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m3), 4);
                const __m256i u = _mm256_or_si256(lo, hi);
                const int g = 4 * n + k;
                const __m256i scale = pair16(&sc, g);
                for (int t = 0; t < T; t++)
                    s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, XROW(a, t, b, 32 * g)), scale));
            }
        }
        for (int t = 0; t < T; t++) acc[t] = fold8(acc[t], dx[t] * dw, s[t]);
    }
    store_hsum8(y, ys, acc, T);
}

/* ---- float weights: 8-lane FMA partial sums per token ---- */

AVX2 INLINE __m256 load_w8(const void *w, int64_t i, int wtype) {
    switch (wtype) {
    case REALM_TYPE_F32: return _mm256_loadu_ps((const float *)w + i);
    case REALM_TYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    case REALM_TYPE_BF16: {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    }
    abort(); /* not reached: only the float kernels below call this, each with its own type */
}

AVX2 INLINE float load_w1(const void *w, int64_t i, int wtype) {
    switch (wtype) {
    case REALM_TYPE_F32: return ((const float *)w)[i];
    case REALM_TYPE_F16: return realm_half_to_f32(((const uint16_t *)w)[i]);
    case REALM_TYPE_BF16: return realm_bf16_to_f32(((const uint16_t *)w)[i]);
    }
    abort(); /* not reached: only the float kernels below call this, each with its own type */
}

/* Tokens [t0, t0 + TT) (TT <= 2): 8-value chunk k goes to partial sum k % 4
 * (four FMA chains per token), combined as ((a0 + a1) + (a2 + a3)), then the
 * 8 lanes, then the scalar tail; the same for every batch size. */
AVX2 INLINE void float_tokens(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, int t0,
                              const int TT, const int wtype) {
    __m256 acc[2][4];
    for (int t = 0; t < TT; t++)
        for (int c = 0; c < 4; c++) acc[t][c] = _mm256_setzero_ps();
    const float *x[2] = {a->xf + t0 * a->n_in, a->xf + (t0 + TT - 1) * a->n_in};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int c = 0; c < 4; c++) {
            const __m256 wv = load_w8(w, i + 8 * c, wtype);
            for (int t = 0; t < TT; t++) acc[t][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + i + 8 * c), acc[t][c]);
        }
    }
    for (int c = 0; i + 8 <= n; i += 8, c++) {
        const __m256 wv = load_w8(w, i, wtype);
        for (int t = 0; t < TT; t++) acc[t][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + i), acc[t][c]);
    }
    for (int t = 0; t < TT; t++) {
        float s = hsum8(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
        for (int64_t k = i; k < n; k++) s += load_w1(w, k, wtype) * x[t][k];
        y[(t0 + t) * ys] = s;
    }
}

AVX2 INLINE void float_k(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, const int T, const int wtype) {
    for (int t = 0; t + 1 < T; t += 2) float_tokens(n, w, a, y, ys, t, 2, wtype);
    if (T & 1) float_tokens(n, w, a, y, ys, T - 1, 1, wtype);
}

/* ---- entry points: the token count as a compile-time constant ---- */

#define KERNEL(NAME, BODY, BLOCK)                                                                          \
    AVX2 void NAME(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) { \
        const BLOCK *x = w;                                                                                \
        DISPATCH_T(ntok, BODY(nb, x, a, y, ys, T_));                                                       \
    }

KERNEL(realm_q2_K_dot_avx2, q2_K_k, block_q2_K)
KERNEL(realm_q2_K_dot_whole_avx2, q2_K_whole_k, block_q2_K)
KERNEL(realm_q3_K_dot_avx2, q3_K_k, block_q3_K)
KERNEL(realm_q4_K_dot_avx2, q4_K_k, block_q4_K)
KERNEL(realm_q4_K_dot_whole_avx2, q4_K_whole_k, block_q4_K)
KERNEL(realm_q5_K_dot_avx2, q5_K_k, block_q5_K)
KERNEL(realm_q6_K_dot_avx2, q6_K_k, block_q6_K)

#define FLOAT_KERNEL(NAME, WTYPE)                                                                          \
    AVX2 void NAME(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {  \
        DISPATCH_T(ntok, float_k(n, w, a, y, ys, T_, WTYPE));                                              \
    }

FLOAT_KERNEL(realm_f32_dot_avx2, REALM_TYPE_F32)
FLOAT_KERNEL(realm_f16_dot_avx2, REALM_TYPE_F16)
FLOAT_KERNEL(realm_bf16_dot_avx2, REALM_TYPE_BF16)

#else

int realm_matmul_vnni(int enable) {
    (void)enable;
    return 0;
}

#endif
