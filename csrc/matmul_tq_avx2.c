/* AVX2 dot products of TQ1_0 and TQ2_0 weights against Q8_K activations: one weight row
 * against a group of up to REALM_TOK_GROUP activation rows.  A block is decoded once into
 * 8 runs of 32 unsigned values u (0, 1, 2; TQ2_0's may be 3) and multiplied into every
 * token's activations with maddubs, summed in int16 lanes (at most 8 * 2 * 3 * 127 = 6096,
 * less the bsums' 2032: exact), then the bsums subtracted and the lane pairs added in int32.
 * The float steps are matmul_tq_ref.c's (llama.cpp's AVX2 kernels), bit for bit. */
#include "kernels_iq_mm.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "matmul_avx2.h"

/* Bytes times 3 and times 9, modulo 256. */
AVX2 INLINE __m256i mul3(__m256i a) { return _mm256_add_epi8(a, _mm256_add_epi8(a, a)); }
AVX2 INLINE __m256i mul9(__m256i a) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(a, 3), _mm256_set1_epi8(-8)), a);
}

/* (a * 3) >> 8 per byte: the ternary digit + 1 whose place a's multiplier moved to the top
 * (matmul_tq_ref.c's tq1_u), as llama.cpp computes it: a - 1 (saturated), averaged with its
 * own half (both rounding up), then the top 2 bits; equal for all 256 bytes. */
AVX2 INLINE __m256i tern(__m256i a) {
    a = _mm256_subs_epu8(a, _mm256_set1_epi8(1));
    a = _mm256_avg_epu8(a, _mm256_avg_epu8(a, _mm256_setzero_si256()));
    return _mm256_and_si256(_mm256_srli_epi16(a, 6), _mm256_set1_epi8(3));
}

/* The 8 runs of 32 values u of a TQ1_0 block (dequant_iq_ref.c's element order). */
AVX2 INLINE void tq1_runs(const block_tq1_0 *x, __m256i *u) {
    const __m256i a = load32(x->qs);
    const __m256i a3 = mul3(a), a9 = mul9(a);
    u[0] = tern(a), u[1] = tern(a3), u[2] = tern(a9), u[3] = tern(mul9(a3)), u[4] = tern(mul9(a9));
    /* qs[32..47] at the places 1, 3 | 9, 27 | 81, then qh's 4 bytes at 1, 3, 9, 27 */
    const __m256i c = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(x->qs + 32)));
    const __m256i c3 = mul3(c), c9 = mul9(c);
    uint32_t qh;
    memcpy(&qh, x->qh, 4);
    __m256i h = _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm_set1_epi32((int)qh)),
                                   _mm256_setr_epi16(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27));
    h = _mm256_and_si256(h, _mm256_set1_epi16(0xff));
    const __m128i h8 = _mm_packus_epi16(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    u[5] = tern(_mm256_permute2x128_si256(c, c3, 0x30));
    u[6] = tern(_mm256_permute2x128_si256(c9, mul9(c3), 0x30));
    u[7] = tern(_mm256_inserti128_si256(mul9(c9), h8, 1));
}

AVX2 INLINE void tq2_runs(const block_tq2_0 *x, __m256i *u) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int j = 0; j < 2; j++) {
        const __m256i a = load32(x->qs + 32 * j);
        for (int l = 0; l < 4; l++) u[4 * j + l] = _mm256_and_si256(_mm256_srli_epi16(a, 2 * l), m3);
    }
}

AVX2 INLINE void tq_k(const int tq1, int64_t nb, const void *w, const realm_act_group *a, float *y, int64_t ys,
                      const int T) {
    __m256 acc[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    const int64_t nbs = a->n_in / 16;
    for (int64_t b = 0; b < nb; b++) {
        __m256i u[8];
        if (tq1)
            tq1_runs((const block_tq1_0 *)w + b, u);
        else
            tq2_runs((const block_tq2_0 *)w + b, u);
        const float dw = _cvtsh_ss(tq1 ? ((const block_tq1_0 *)w)[b].d : ((const block_tq2_0 *)w)[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            const int8_t *q = TOKEN_ROW(a, t) + QK_K * b;
            __m256i s = _mm256_maddubs_epi16(u[0], load32(q));
            for (int c = 1; c < 8; c++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u[c], load32(q + 32 * c)));
            s = _mm256_sub_epi16(s, _mm256_loadu_si256((const __m256i *)(a->bsums + t * nbs + 16 * b)));
            acc[t] = fold8(acc[t], dw * dx[t], _mm256_madd_epi16(s, _mm256_set1_epi16(1)));
        }
    }
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]);
}

AVX2 void realm_tq1_0_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, tq_k(1, nb, w, a, y, ys, T_));
}

AVX2 void realm_tq2_0_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, tq_k(0, nb, w, a, y, ys, T_));
}

#endif
