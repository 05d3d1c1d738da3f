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
 * matmul_ref.c performs the same steps, bit for bit.  The float weights
 * (F32, F16, BF16) keep ggml_vec_dot_f32 / _f16 / _bf16's 16-lane sums as pairs
 * of 8-lane registers, and emulate vdpbf16ps for BF16 (matmul_float.h; the
 * AVX-512 kernels are in matmul_avx512.c). */
#include "matmul.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "iq_tables.h"
#include "kernels.h"
#include "matmul_avx2.h"
#include "matmul_float.h"

#include <stdlib.h>
#include <string.h>

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
#include "matmul_dot32_rows.h" /* several rows per call: VNNI only */
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

/* [s_2g x8 | s_2g+1 x8]: the multiplier of the 32 values of group g after maddubs. */
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

#define LANES_ACC __m256 acc[G]; for (int t = 0; t < G; t++) acc[t] = _mm256_setzero_ps()

/* Q2_K: 16 sub-blocks of 16, 4-bit scale and min each; value in [0, 3].
 * The integer lanes of a block for each token: s (values times scales) and
 * mm (minimums times the 16-value sums). */
AVX2 INLINE void q2_block(const block_q2_K *w, const realm_act_group *a, int64_t b, __m256i *s, __m256i *mm, const int T) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m128i packed = _mm_loadu_si128((const __m128i *)w->scales);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), m4));
    const scales16 sc = split16(_mm256_cvtepu8_epi16(_mm_and_si128(packed, m4)));
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

/* Q3_K: 16 signed 6-bit scales; value = low 2 bits + 4 * hmask bit - 4, taken
 * signed (each lane carries its own values' offset, as ggml's). */
AVX2 INLINE void q3_K_k(int64_t nb, const block_q3_K *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    LANES_ACC;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t b = 0; b < nb; b++) {
        const scales16 sc = split16(q3_scales(w[b].scales));
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
        const scales16 sc = split16(sc16);
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

/* ---- float weights: llama.cpp's 16-lane sums (matmul_float.h), as two halves ---- */

AVX2 INLINE __m256 load_w8(const void *w, int64_t i, int wtype) {
    if (wtype == REALM_TYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const void *)((const char *)w + 2 * i)));
    return _mm256_loadu_ps((const float *)(const void *)((const char *)w + 4 * i));
}

/* hsum16 of the lanes lo (0..7) and hi (8..15): h = hi + lo, then hsum8's steps. */
AVX2 INLINE float hsum16(__m256 lo, __m256 hi) { return hsum8(_mm256_add_ps(hi, lo)); }

/* F32 / F16, tokens [t0, t0 + TT) (TT <= 2): the 16 lanes of the four sums as
 * halves, lanes 0..7 (h = 0) and 8..15.  One token keeps both halves (8 sums) in
 * registers in one pass over the row; two tokens take a pass per half, 4 sums a
 * token, the weights loaded once for both. */
AVX2 INLINE void float_tokens(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, int t0,
                              const int TT, const int wtype) {
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    const int HP = TT == 1 ? 2 : 1; /* halves per pass */
    __m256 v[2][2];                 /* [token][half]: (s0 + s2) + (s1 + s3) */
    for (int h0 = 0; h0 < 2; h0 += HP) {
        __m256 acc[2][2][4]; /* [token][half in the pass][sum] */
        for (int t = 0; t < TT; t++)
            for (int hh = 0; hh < HP; hh++)
                for (int j = 0; j < 4; j++) acc[t][hh][j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP) {
            for (int j = 0; j < 4; j++) {
                for (int hh = 0; hh < HP; hh++) {
                    const int64_t k = i + 16 * j + 8 * (h0 + hh);
                    const __m256 wv = load_w8(w, k, wtype);
                    for (int t = 0; t < TT; t++)
                        acc[t][hh][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(a->xf + (t0 + t) * a->n_in + k), acc[t][hh][j]);
                }
            }
        }
        for (int t = 0; t < TT; t++)
            for (int hh = 0; hh < HP; hh++)
                v[t][h0 + hh] = _mm256_add_ps(_mm256_add_ps(acc[t][hh][0], acc[t][hh][2]),
                                              _mm256_add_ps(acc[t][hh][1], acc[t][hh][3]));
    }
    for (int t = 0; t < TT; t++) {
        const float *x = a->xf + (t0 + t) * a->n_in;
        const float s = hsum16(v[t][0], v[t][1]);
        y[(t0 + t) * ys] = wtype == REALM_TYPE_F16 ? realm_f16_tail(s, w, x, np, n) : realm_f32_tail(s, w, x, np, n);
    }
}

AVX2 INLINE void float_k(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, const int T, const int wtype) {
    for (int t = 0; t + 1 < T; t += 2) float_tokens(n, w, a, y, ys, t, 2, wtype);
    if (T & 1) float_tokens(n, w, a, y, ys, T - 1, 1, wtype);
}

/* BF16: vdpbf16ps emulated on 8 lanes.  32 bits of a bf16 row hold the pair
 * (even value low, odd value high); the odd one is the high half as it stands. */
AVX2 INLINE __m256 bf16_odd(__m256i v) { return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u))); }
AVX2 INLINE __m256 bf16_even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }

/* Subnormal inputs read as zeros of their sign. */
AVX2 INLINE __m256 daz8(__m256 v) {
    const __m256i e = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7f800000));
    return _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(e, _mm256_setzero_si256())), v);
}

/* The lanes whose fma gave exactly +-2^-126: realm_dpbf16_ftz decides them. */
AVX2 __attribute__((noinline, cold)) static __m256 dp_edge(__m256 r, __m256 a, __m256 b, __m256 t) {
    float rv[8], av[8], bv[8], tv[8];
    memcpy(rv, &r, sizeof rv);
    memcpy(av, &a, sizeof av);
    memcpy(bv, &b, sizeof bv);
    memcpy(tv, &t, sizeof tv);
    for (int l = 0; l < 8; l++) rv[l] = realm_dpbf16_ftz(rv[l], av[l], bv[l], tv[l]);
    memcpy(&r, rv, sizeof rv);
    return r;
}

/* t = fma(a, b, t), results tiny after rounding flushed to zero of their sign
 * (a, b already DAZ). */
AVX2 INLINE __m256 dp_step8(__m256 t, __m256 a, __m256 b) {
    const __m256 r = _mm256_fmadd_ps(a, b, t);
    const __m256i abs = _mm256_and_si256(_mm256_castps_si256(r), _mm256_set1_epi32(0x7fffffff));
    const __m256i tiny = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x00800000), abs); /* subnormal or zero */
    const __m256i edge = _mm256_cmpeq_epi32(abs, _mm256_set1_epi32(0x00800000));
    if (__builtin_expect(!_mm256_testz_si256(edge, edge), 0)) return dp_edge(r, a, b, t);
    return _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_and_si256(tiny, _mm256_set1_epi32(0x7fffffff))), r);
}

/* Piece p of a 64-value step (values 16p .. 16p + 15) is lanes 8 (p % 2) .. + 7 of
 * accumulator c1 (p < 2) or c2 (acc[p] below).
 *
 * The exact emulation of one token: DAZ inputs, each fma flushed. */
AVX2 INLINE void bf16_exact(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, int t) {
    const char *wb = w; /* 2 bytes a value */
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    const uint16_t *xh = a->xh + t * a->n_in;
    __m256 acc[4];
    for (int p = 0; p < 4; p++) acc[p] = _mm256_setzero_ps();
    for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP) {
        for (int p = 0; p < 4; p++) {
            const __m256i wv = _mm256_loadu_si256((const void *)(wb + 2 * (i + 16 * p)));
            const __m256i xv = _mm256_loadu_si256((const void *)(xh + i + 16 * p));
            acc[p] = dp_step8(acc[p], daz8(bf16_odd(wv)), daz8(bf16_odd(xv)));
            acc[p] = dp_step8(acc[p], daz8(bf16_even(wv)), daz8(bf16_even(xv)));
        }
    }
    y[t * ys] = realm_bf16_tail(hsum16(acc[0], acc[1]), hsum16(acc[2], acc[3]), w, xh, np, n);
}

/* The shortcut, tokens [t0, t0 + TT) (TT <= 2): plain fmas.  Where every input is
 * zero or at least 2^-50 in magnitude, they are the exact steps: no input is
 * subnormal, and no result is tiny -- t + ab with |ab| >= 2^-100 and t zero or
 * normal is 0 or a multiple of 2^-124 (the last bits of t, |t| >= 2^-101 where it
 * cancels ab, and of ab's 16-bit significand).  Returns whether the weights hold
 * a tiny value (the activations' rows say so in a->xtiny). */
AVX2 INLINE int bf16_fast(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, int t0,
                          const int TT) {
    const char *wb = w; /* 2 bytes a value */
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    __m256 acc[2][4];
    for (int t = 0; t < TT; t++)
        for (int p = 0; p < 4; p++) acc[t][p] = _mm256_setzero_ps();
    __m256i low = _mm256_set1_epi16(-1); /* min of |w| - 1 (16 bits, unsigned): 0 -> 0xffff */
    for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP) {
        for (int p = 0; p < 4; p++) {
            const __m256i wv = _mm256_loadu_si256((const void *)(wb + 2 * (i + 16 * p)));
            low = _mm256_min_epu16(low, _mm256_sub_epi16(_mm256_and_si256(wv, _mm256_set1_epi16(0x7fff)), _mm256_set1_epi16(1)));
            const __m256 wo = bf16_odd(wv), we = bf16_even(wv);
            for (int t = 0; t < TT; t++) {
                const __m256i xv = _mm256_loadu_si256((const void *)(a->xh + (t0 + t) * a->n_in + i + 16 * p));
                acc[t][p] = _mm256_fmadd_ps(we, bf16_even(xv), _mm256_fmadd_ps(wo, bf16_odd(xv), acc[t][p]));
            }
        }
    }
    for (int t = 0; t < TT; t++)
        y[(t0 + t) * ys] = realm_bf16_tail(hsum16(acc[t][0], acc[t][1]), hsum16(acc[t][2], acc[t][3]), w,
                                           a->xh + (t0 + t) * a->n_in, np, n);
    /* some |w| - 1 <= 0x267e, i.e. 0 < |w| < 2^-50 */
    const __m256i lim = _mm256_set1_epi16(0x267e);
    return !_mm256_testz_si256(_mm256_cmpeq_epi16(_mm256_min_epu16(low, lim), low), _mm256_set1_epi16(-1));
}

/* The shortcut for the group, then the exact emulation for the tokens it does
 * not hold for. */
AVX2 INLINE void bf16_k(int64_t n, const void *w, const realm_act_group *a, float *y, int64_t ys, const int T) {
    int tiny_w = 0;
    for (int t = 0; t + 1 < T; t += 2) tiny_w |= bf16_fast(n, w, a, y, ys, t, 2);
    if (T & 1) tiny_w |= bf16_fast(n, w, a, y, ys, T - 1, 1);
    for (int t = 0; t < T; t++)
        if (tiny_w || a->xtiny[t]) bf16_exact(n, w, a, y, ys, t);
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

AVX2 void realm_bf16_dot_avx2(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, bf16_k(n, w, a, y, ys, T_));
}

#else

int realm_matmul_vnni(int enable) {
    (void)enable;
    return 0;
}

#endif
