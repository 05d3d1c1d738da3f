/* AVX2 dot products of IQ1_S and IQ1_M weights against Q8_K activations: one weight row
 * against a group of up to REALM_TOK_GROUP activation rows.  Each 32-value sub-block is
 * decoded once (4 rows of the iq1s grid: 32 values in -1, 0, 1) and multiplied into every
 * token's activations with maddubs, the sub-block's odd weights folded into its unsigned
 * factor and the 8 sub-blocks summed in int16 lanes, then paired into 8 exact int32 lanes;
 * the deltas' terms are integer sums beside them.  The float steps are matmul_iq1_ref.c's
 * (llama.cpp's AVX2 kernels), bit for bit. */
#include "kernels_iq_mm.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "iq_tables.h"
#include "kernels_iq.h"
#include "matmul_avx2.h"

/* Rows r0..r3 of iq1s_grid: 32 signed values. */
AVX2 INLINE __m256i rows4(int r0, int r1, int r2, int r3) {
    const uint64_t *g = realm_iq1s_grid;
    return _mm256_setr_epi64x((long long)g[r0], (long long)g[r1], (long long)g[r2], (long long)g[r3]);
}

/* |g| * w per byte, for grid values g in -1, 0, 1 and weights w (bytes, at most 15): the
 * maddubs factor that sums a sub-block's weighted products in int16 lanes.  Pairs of them
 * reach 2 * 15 * 127 = 3810 and the 8 sub-blocks' sum 30480: the int16 sums are exact. */
AVX2 INLINE __m256i weighted(__m256i g, __m256i w) {
    return _mm256_abs_epi8(_mm256_sign_epi8(w, g));
}

/* Per block: s[t] lane k = sum over sub-blocks of w * (lane k of grid * q), exact, and
 * e[t] = sum over sub-blocks of +-w * (their two bsums); acc[t] = fma(d, s[t], acc[t]),
 * acc1[t] = fma(d, e[t], acc1[t]); y = hsum8(acc) + 0.125f * acc1. */
AVX2 INLINE void iq1_s_k(int64_t nb, const block_iq1_s *x, const realm_act_group *a, float *y, int64_t ys, const int T) {
    __m256 acc[G];
    float acc1[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps(), acc1[t] = 0.0f;
    const int64_t nbs = a->n_in / 16;
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G];
        for (int t = 0; t < T; t++) s[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const int h = x[b].qh[ib];
            const uint8_t *qs = x[b].qs + 4 * ib;
            const __m256i g = rows4(qs[0] | (h & 7) << 8, qs[1] | ((h >> 3) & 7) << 8, qs[2] | ((h >> 6) & 7) << 8,
                                    qs[3] | ((h >> 9) & 7) << 8);
            const __m256i gw = weighted(g, _mm256_set1_epi8((char)(2 * ((h >> 12) & 7) + 1)));
            for (int t = 0; t < T; t++) {
                const __m256i q = load32(TOKEN_ROW(a, t) + QK_K * b + 32 * ib);
                s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(gw, _mm256_sign_epi8(q, g)));
            }
        }
        for (int t = 0; t < T; t++) s[t] = _mm256_madd_epi16(s[t], _mm256_set1_epi16(1));
        /* the deltas: int16 lane i of wd = +-w of sub-block i / 2, against bsums i */
        const __m128i qh = _mm_loadu_si128((const __m128i *)x[b].qh);
        const __m128i ls = _mm_add_epi16(_mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh, 12), _mm_set1_epi16(7)), 1),
                                         _mm_set1_epi16(1));
        const __m128i neg = _mm_srai_epi16(qh, 15);
        const __m128i wd8 = _mm_sub_epi16(_mm_xor_si128(ls, neg), neg);
        const __m256i wd = _mm256_set_m128i(_mm_unpackhi_epi16(wd8, wd8), _mm_unpacklo_epi16(wd8, wd8));
        const float dw = _cvtsh_ss(x[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bsums + t * nbs + 16 * b));
            const __m256i m = _mm256_madd_epi16(bs, wd);
            const int32_t e = _mm_cvtsi128_si32(hsum4(&m, 1));
            const float d = dw * dx[t];
            acc[t] = fold8(acc[t], d, s[t]);
            acc1[t] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(d), _mm_set_ss((float)e), _mm_set_ss(acc1[t])));
        }
    }
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]) + 0.125f * acc1[t];
}

/* IQ1_M's f16 block scale: the top nibbles of its 4 u16 scale words. */
AVX2 INLINE uint16_t iq1_m_scale(const uint8_t *sc) {
    return (uint16_t)((realm_u16le(sc) >> 12) | ((realm_u16le(sc + 2) >> 8) & 0x00f0) | ((realm_u16le(sc + 4) >> 4) & 0x0f00) |
                      (realm_u16le(sc + 6) & 0xf000));
}

/* The 32 grid rows of an IQ1_M block: row r is qs[r] | the low 3 bits of nibble r of qh << 8. */
AVX2 INLINE void iq1_m_rows(const block_iq1_m *x, uint16_t *idx) {
    const __m128i qh = _mm_loadu_si128((const __m128i *)x->qh), m = _mm_set1_epi16(0x700);
    for (int h = 0; h < 2; h++) { /* qh[8h .. 8h + 7]: rows 16h .. 16h + 15 */
        const __m128i v = _mm_cvtepu8_epi16(h ? _mm_unpackhi_epi64(qh, qh) : qh);
        const __m128i even = _mm_and_si128(_mm_slli_epi16(v, 8), m), odd = _mm_and_si128(_mm_slli_epi16(v, 4), m);
        const __m128i q0 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(x->qs + 16 * h)));
        const __m128i q1 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(x->qs + 16 * h + 8)));
        _mm_storeu_si128((__m128i *)(idx + 16 * h), _mm_or_si128(q0, _mm_unpacklo_epi16(even, odd)));
        _mm_storeu_si128((__m128i *)(idx + 16 * h + 8), _mm_or_si128(q1, _mm_unpackhi_epi16(even, odd)));
    }
}

/* Per block: s[t] lane k = sum over sub-blocks of w_k * (lane k of grid * q) with w_k the
 * weight of the 16 values lane k is in; sd[t] the same of the deltas' +-q.  The deltas'
 * lane k is +-w_k * (the sum of q over its 4 values), the sign that of its 8-value row:
 * madd of the pair sums maddubs(1, q) with a factor +-w per int16 lane.
 * acc = fma(d, s, acc), accd = fma(d, sd, accd); y = fma(0.125f, hsum8(accd), hsum8(acc)). */
AVX2 INLINE void iq1_m_k(int64_t nb, const block_iq1_m *x, const realm_act_group *a, float *y, int64_t ys, const int T) {
    __m256 acc[G], accd[G];
    for (int t = 0; t < T; t++) acc[t] = accd[t] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi8(1);
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G], sd[G];
        for (int t = 0; t < T; t++) s[t] = sd[t] = _mm256_setzero_si256();
        uint16_t idx[32];
        iq1_m_rows(x + b, idx);
        /* the 16 weights 2 s + 1 as int16, in the words of four 64-bit lanes: sub-blocks 0, 2, 4, 6 (lane 0:
         * their values 0..15, scale bits 0..2 of scale word ib / 2; lane 2: values 16..31, bits 3..5), and
         * 1, 3, 5, 7 (lanes 1 and 3: bits 6..8 and 9..11) */
        uint64_t sc8;
        memcpy(&sc8, x[b].scales, 8);
        __m256i wsc = _mm256_srlv_epi64(_mm256_set1_epi64x((long long)sc8), _mm256_setr_epi64x(0, 6, 3, 9));
        wsc = _mm256_add_epi16(_mm256_slli_epi16(_mm256_and_si256(wsc, _mm256_set1_epi16(7)), 1), _mm256_set1_epi16(1));
#pragma GCC unroll 8
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const char k = (char)(2 * (ib / 2) + 8 * (ib % 2)); /* the byte of sub-block ib's weight in each half */
            const __m256i wv = _mm256_shuffle_epi8(wsc, _mm256_set1_epi16((short)(k | (k + 1) << 8)));
            const int h = realm_u16le(x[b].qh + 2 * ib); /* 4 nibbles: 3 index bits and the delta's sign each */
            const __m256i g = rows4(idx[4 * ib], idx[4 * ib + 1], idx[4 * ib + 2], idx[4 * ib + 3]);
            const __m256i gw = weighted(g, _mm256_shuffle_epi8(wsc, _mm256_set1_epi8(k)));
            /* int16 lane i (values 2i, 2i+1) takes the sign of row i / 4: bit 4 (i / 4) + 3 of h */
            const __m256i rowbit = _mm256_setr_epi16(8, 8, 8, 8, 0x80, 0x80, 0x80, 0x80, 0x800, 0x800, 0x800, 0x800,
                                                     -0x8000, -0x8000, -0x8000, -0x8000);
            const __m256i neg = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16((short)h), rowbit), rowbit);
            const __m256i wdv = _mm256_sub_epi16(_mm256_xor_si256(wv, neg), neg);
            for (int t = 0; t < T; t++) {
                const __m256i q = load32(TOKEN_ROW(a, t) + QK_K * b + 32 * ib);
                s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(gw, _mm256_sign_epi8(q, g)));
                sd[t] = _mm256_add_epi32(sd[t], _mm256_madd_epi16(_mm256_maddubs_epi16(ones, q), wdv));
            }
        }
        for (int t = 0; t < T; t++) s[t] = _mm256_madd_epi16(s[t], _mm256_set1_epi16(1));
        const float dw = _cvtsh_ss(iq1_m_scale(x[b].scales));
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            acc[t] = fold8(acc[t], dw * dx[t], s[t]);
            accd[t] = fold8(accd[t], dw * dx[t], sd[t]);
        }
    }
    for (int t = 0; t < T; t++)
        y[t * ys] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(0.125f), _mm_set_ss(hsum8(accd[t])), _mm_set_ss(hsum8(acc[t]))));
}

AVX2 void realm_iq1_s_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq1_s_k(nb, w, a, y, ys, T_));
}

AVX2 void realm_iq1_m_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq1_m_k(nb, w, a, y, ys, T_));
}

#endif
