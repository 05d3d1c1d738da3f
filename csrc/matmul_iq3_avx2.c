/* AVX2 dot products of IQ3_XXS and IQ3_S weights against Q8_K activations: one weight
 * row against a group of up to REALM_TOK_GROUP activation rows.  Each 32-value sub-block
 * is decoded once (8 grid rows of 4 unsigned bytes, the signs as +-1 bytes) and multiplied
 * into every token's activations: sign_epi8 moves the weight's sign onto the activation,
 * maddubs + madd with the sub-block's weight 2 ls + 1 give 8 exact int32 lanes (lane k:
 * values 4k..4k+3).  The float steps are matmul_iq3_ref.c's (llama.cpp's AVX2 kernels),
 * bit for bit. */
#include "kernels_iq_mm.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "iq_tables.h"
#include "kernels_iq.h"
#include "matmul_avx2.h"

/* 32 bytes: -1 where bit j of `bits` is set, else +1. */
AVX2 INLINE __m256i sign_bytes(uint32_t bits) {
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(1));
}

/* Sub-block ib of IQ3_XXS block x: the 32 unsigned grid bytes, their signs (+-1), and 2 ls + 1. */
AVX2 INLINE int iq3_xxs_sub(const block_iq3_xxs *x, int ib, __m256i *u, __m256i *sg) {
    const uint8_t *qs = x->qs + 8 * ib;
    const uint32_t sc = realm_u32le(x->qs + QK_K / 4 + 4 * ib);
    const uint32_t *g = realm_iq3xxs_grid;
    *u = _mm256_setr_epi32((int)g[qs[0]], (int)g[qs[1]], (int)g[qs[2]], (int)g[qs[3]], (int)g[qs[4]], (int)g[qs[5]],
                           (int)g[qs[6]], (int)g[qs[7]]); /* faster here than a gather */
    const uint8_t *ks = realm_ksigns_iq2xs;
    *sg = sign_bytes((uint32_t)ks[sc & 127] | (uint32_t)ks[(sc >> 7) & 127] << 8 | (uint32_t)ks[(sc >> 14) & 127] << 16 |
                     (uint32_t)ks[(sc >> 21) & 127] << 24);
    return 2 * (int)(sc >> 28) + 1;
}

/* Sub-block ib of IQ3_S block x, as iq3_xxs_sub. */
AVX2 INLINE int iq3_s_sub(const block_iq3_s *x, int ib, __m256i *u, __m256i *sg) {
    const uint8_t *qs = x->qs + 8 * ib;
    const int qh = x->qh[ib];
    const uint32_t *g = realm_iq3s_grid;
    /* the 8 grid rows: qs[j] | bit j of qh << 8 (realm_iq3_s_index), gathered */
    const __m256i hi = _mm256_and_si256(_mm256_sllv_epi32(_mm256_set1_epi32(qh), _mm256_setr_epi32(8, 7, 6, 5, 4, 3, 2, 1)),
                                        _mm256_set1_epi32(256));
    const __m256i idx = _mm256_or_si256(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs)), hi);
    *u = _mm256_i32gather_epi32((const int *)g, idx, 4);
    *sg = sign_bytes(realm_u32le(x->signs + 4 * ib));
    return 2 * ((x->scales[ib / 2] >> 4 * (ib % 2)) & 15) + 1;
}

/* Per block: s[t] lane k = sum over sub-blocks of (2 ls + 1) * lane k, exact; then
 * acc[t] = fma(dw * dx, s[t], acc[t]); y = hsum8(acc) (IQ3_XXS: times 0.25f). */
AVX2 INLINE void iq3_k(const int xxs, int64_t nb, const void *w, const realm_act_group *a, float *y, int64_t ys,
                       const int T) {
    __m256 acc[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G];
        for (int t = 0; t < T; t++) s[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int ib = 0; ib < QK_K / 32; ib++) {
            __m256i u, sg;
            const int ls = xxs ? iq3_xxs_sub((const block_iq3_xxs *)w + b, ib, &u, &sg)
                               : iq3_s_sub((const block_iq3_s *)w + b, ib, &u, &sg);
            const __m256i lsv = _mm256_set1_epi16((short)ls);
            for (int t = 0; t < T; t++) {
                const __m256i q = load32(TOKEN_ROW(a, t) + QK_K * b + 32 * ib);
                const __m256i p = _mm256_maddubs_epi16(u, _mm256_sign_epi8(q, sg));
                s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(p, lsv));
            }
        }
        const float dw = _cvtsh_ss(xxs ? ((const block_iq3_xxs *)w)[b].d : ((const block_iq3_s *)w)[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) acc[t] = fold8(acc[t], dw * dx[t], s[t]);
    }
    for (int t = 0; t < T; t++) {
        const float v = hsum8(acc[t]);
        y[t * ys] = xxs ? 0.25f * v : v;
    }
}

AVX2 void realm_iq3_xxs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq3_k(1, nb, w, a, y, ys, T_));
}

AVX2 void realm_iq3_s_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq3_k(0, nb, w, a, y, ys, T_));
}

#endif
