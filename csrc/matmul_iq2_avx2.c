/* AVX2 dot products of IQ2_XXS, IQ2_XS and IQ2_S weights against Q8_K activations: one
 * weight row against a group of up to REALM_TOK_GROUP activation rows.  Each 32-value
 * sub-block is decoded once per group: its four 8-byte grid rows (unsigned bytes), its
 * signs as bytes of +-1 and its weights 2 ls + 1 per 16 values (int16); each token then
 * takes maddubs(grid, sign(x)) and a madd with the weights, 8 exact int32 lanes (lane k:
 * values 4k..4k+3 of the sub-block), summed over the block.  The float steps are
 * llama.cpp's (acc = fma(dw * dx, lanes, acc) per block, y = 0.125f * hsum8(acc)), which
 * matmul_iq2_ref.c performs in scalar code, bit for bit. */
#include "kernels_iq_mm.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "iq_tables.h"
#include "kernels_iq.h"
#include "matmul_avx2.h"

/* ksigns_iq2xs as 8 bytes each: the 7-bit sign index v, its parity as the 8th sign, and
 * byte j = -1 where sign j is set, else +1 (the second operand of sign_epi8). */
#define SGN1(b, j) ((((b) >> (j)) & 1) ? 0xffULL : 0x01ULL) << (8 * (j))
#define SGN8(b) (SGN1(b, 0) | SGN1(b, 1) | SGN1(b, 2) | SGN1(b, 3) | SGN1(b, 4) | SGN1(b, 5) | SGN1(b, 6) | SGN1(b, 7))
#define PARITY7(v) (((v) ^ ((v) >> 1) ^ ((v) >> 2) ^ ((v) >> 3) ^ ((v) >> 4) ^ ((v) >> 5) ^ ((v) >> 6)) & 1)
#define KS(v) SGN8((v) | PARITY7(v) << 7)
#define KS4(v) KS(v), KS((v) + 1), KS((v) + 2), KS((v) + 3)
#define KS16(v) KS4(v), KS4((v) + 4), KS4((v) + 8), KS4((v) + 12)
#define KS64(v) KS16(v), KS16((v) + 16), KS16((v) + 32), KS16((v) + 48)
static const uint64_t ksigns64[128] = {KS64(0u), KS64(64u)};

/* A sub-block's 32 weight bytes: grid rows r0..r3 in order. */
AVX2 INLINE __m256i rows4(const uint64_t *grid, unsigned r0, unsigned r1, unsigned r2, unsigned r3) {
    return _mm256_set_epi64x((long long)grid[r3], (long long)grid[r2], (long long)grid[r1], (long long)grid[r0]);
}

/* The +-1 sign bytes of a sub-block from its 4 sign bytes (bit j of byte l: value 8l + j). */
AVX2 INLINE __m256i signs4(const uint8_t *s) {
    return _mm256_or_si256(bits32(s), _mm256_set1_epi8(1)); /* 0xff | 1 = -1 where the bit is set */
}

enum { IQ2_XXS, IQ2_XS, IQ2_S };

/* What an IQ2_XS / IQ2_S block decodes to before its sub-blocks: IQ2_XS's sign bytes
 * (bit j of byte g: the sign of value 8g + j, as IQ2_S keeps them in its block) and the
 * weights 2 ls + 1 as int16 (scales16: the 8 low nibbles' in the low 128 bits, the high
 * ones' in the high 128, so that an in-lane shuffle picks sub-block ib's pair). */
typedef struct {
    uint8_t signs[QK_K / 8];
    __m256i scales16;
} iq2_pre;

AVX2 INLINE __m256i scales16_of(const uint8_t *scales) {
    uint64_t s;
    memcpy(&s, scales, 8);
    const __m128i m4 = _mm_set1_epi8(15);
    const __m128i v = _mm_and_si128(_mm_set_epi64x((long long)(s >> 4), (long long)s), m4);
    return _mm256_cvtepu8_epi16(_mm_add_epi8(_mm_add_epi8(v, v), _mm_set1_epi8(1)));
}

AVX2 INLINE void predecode(const int fmt, const void *x, iq2_pre *p) {
    if (fmt == IQ2_XS) {
        /* the 7 sign bits (q >> 9) and their parity as bit 7: the parity of the low nibble
         * of s ^ (s >> 4), looked up */
        const block_iq2_xs *b = x;
        const __m256i q0 = load32(b->qs), q1 = load32(b->qs + 16);
        const __m256i odd = _mm256_setr_epi8(0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0,
                                             0, -128, -128, 0, -128, 0, 0, -128, -128, 0, 0, -128, 0, -128, -128, 0);
        const __m256i s0 = _mm256_srli_epi16(q0, 9), s1 = _mm256_srli_epi16(q1, 9);
        const __m256i f0 = _mm256_or_si256(s0, _mm256_shuffle_epi8(odd, _mm256_xor_si256(s0, _mm256_srli_epi16(q0, 13))));
        const __m256i f1 = _mm256_or_si256(s1, _mm256_shuffle_epi8(odd, _mm256_xor_si256(s1, _mm256_srli_epi16(q1, 13))));
        _mm256_storeu_si256((__m256i *)p->signs, _mm256_permute4x64_epi64(_mm256_packus_epi16(f0, f1), 0xd8));
        p->scales16 = scales16_of(b->scales);
    } else {
        p->scales16 = scales16_of(((const block_iq2_s *)x)->scales);
    }
}

/* Sub-block ib of block x: grid bytes, signs and weights. */
AVX2 INLINE void decode_sub(const int fmt, const void *x, const iq2_pre *p, int ib, __m256i *u, __m256i *sg, __m256i *sc) {
    if (fmt == IQ2_XXS) {
        const uint8_t *q = (const uint8_t *)((const block_iq2_xxs *)x)->qs + 8 * ib;
        const uint32_t aux = realm_u32le(q + 4);
        *u = rows4(realm_iq2xxs_grid, q[0], q[1], q[2], q[3]);
        *sg = _mm256_set_epi64x((long long)ksigns64[(aux >> 21) & 127], (long long)ksigns64[(aux >> 14) & 127],
                                (long long)ksigns64[(aux >> 7) & 127], (long long)ksigns64[aux & 127]);
        *sc = _mm256_set1_epi16((short)(2 * (aux >> 28) + 1));
        return;
    }
    if (fmt == IQ2_XS) {
        const uint16_t *q = ((const block_iq2_xs *)x)->qs + 4 * ib;
        *u = rows4(realm_iq2xs_grid, q[0] & 511u, q[1] & 511u, q[2] & 511u, q[3] & 511u);
    } else {
        const block_iq2_s *b = x;
        const uint8_t *q = b->qs + 4 * ib;
        const int qh = b->qh[ib];
        *u = rows4(realm_iq2s_grid, (unsigned)realm_iq2_s_index(q[0], qh, 0), (unsigned)realm_iq2_s_index(q[1], qh, 1),
                   (unsigned)realm_iq2_s_index(q[2], qh, 2), (unsigned)realm_iq2_s_index(q[3], qh, 3));
    }
    *sg = signs4(fmt == IQ2_XS ? p->signs + 4 * ib : ((const block_iq2_s *)x)->qs + QK_K / 8 + 4 * ib);
    *sc = _mm256_shuffle_epi8(p->scales16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * ib)));
}

AVX2 INLINE const void *block_at(const int fmt, const void *w, int64_t b) {
    return fmt == IQ2_XXS ? (const void *)((const block_iq2_xxs *)w + b)
         : fmt == IQ2_XS  ? (const void *)((const block_iq2_xs *)w + b)
                          : (const void *)((const block_iq2_s *)w + b);
}

/* The block's f16 scale (the first field of all three structs). */
AVX2 INLINE float scale_of(const int fmt, const void *x) {
    return _cvtsh_ss(fmt == IQ2_XXS ? ((const block_iq2_xxs *)x)->d
                   : fmt == IQ2_XS  ? ((const block_iq2_xs *)x)->d
                                    : ((const block_iq2_s *)x)->d);
}

/* s[t] += token t's lanes of sub-block ib of block b (x). */
AVX2 INLINE void sub_lanes(const int fmt, const void *x, const iq2_pre *p, int ib, const realm_act_group *a, int64_t b,
                           __m256i *s, const int T) {
    __m256i u, sg, sc;
    decode_sub(fmt, x, p, ib, &u, &sg, &sc);
    for (int t = 0; t < T; t++) {
        const __m256i q = load32(TOKEN_ROW(a, t) + QK_K * b + 32 * ib);
        s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(q, sg)), sc));
    }
}

/* Per block: lanes = sum over sub-blocks of madd(maddubs(grid, sign(x, signs)), weights)
 * (exact integers, in any order: one token sums even and odd sub-blocks apart, for two
 * dependency chains), acc = fma(dw * dx, lanes, acc); y = 0.125f * hsum8(acc). */
AVX2 INLINE void iq2_k(const int fmt, int64_t nb, const void *w, const realm_act_group *a, float *y, int64_t ys,
                       const int T) {
    __m256 acc[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const void *x = block_at(fmt, w, b);
        iq2_pre p;
        if (fmt != IQ2_XXS) predecode(fmt, x, &p);
        __m256i s[G], s1[1] = {_mm256_setzero_si256()};
        for (int t = 0; t < T; t++) s[t] = _mm256_setzero_si256();
        if (T == 1) { /* unrolled whole: the sub-blocks' constants fold, their decoding overlaps */
#pragma GCC unroll 4
            for (int ib = 0; ib < QK_K / 32; ib += 2) {
                sub_lanes(fmt, x, &p, ib, a, b, s, T);
                sub_lanes(fmt, x, &p, ib + 1, a, b, s1, T);
            }
        } else { /* a loop: the T tokens' sums stay in registers */
            for (int ib = 0; ib < QK_K / 32; ib++) sub_lanes(fmt, x, &p, ib, a, b, s, T);
        }
        if (T == 1) s[0] = _mm256_add_epi32(s[0], s1[0]);
        const float dw = scale_of(fmt, x);
        const float *dx = a->d + realm_act_slot(0, b);
        float d[G];
        if (T > 1) _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_loadu_ps(dx)));
        for (int t = 0; t < T; t++) {
            const __m256 dt = T > 1 ? _mm256_broadcast_ss(d + t) : _mm256_set1_ps(dw * dx[0]);
            acc[t] = _mm256_fmadd_ps(dt, _mm256_cvtepi32_ps(s[t]), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) y[t * ys] = 0.125f * hsum8(acc[t]);
}

AVX2 void realm_iq2_xxs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq2_k(IQ2_XXS, nb, w, a, y, ys, T_));
}

AVX2 void realm_iq2_xs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq2_k(IQ2_XS, nb, w, a, y, ys, T_));
}

AVX2 void realm_iq2_s_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq2_k(IQ2_S, nb, w, a, y, ys, T_));
}

#endif
