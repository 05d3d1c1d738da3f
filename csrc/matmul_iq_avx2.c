/* AVX2 dot products of IQ4_NL, IQ4_XS and MXFP4 weights against int8 activations:
 * one weight row against a group of up to REALM_TOK_GROUP activation rows.  A block's
 * 4-bit indices go through its code book with one byte shuffle (kvalues_iq4nl, or
 * MXFP4's doubled e2m1 values), then maddubs + madd give 8 exact int32 lanes (lane
 * k: values 4k..4k+3 of 32); the float steps are matmul.h's (llama.cpp's x86
 * kernels), which matmul_iq_ref.c performs in scalar code, bit for bit.  On CPUs
 * with AVX-512 VNNI the several-rows kernels at the end (rows_vnni) take over:
 * the same integers by other instructions, the same float steps per row. */
#include "kernels_iq_mm.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <stddef.h>

#include "avx2_util.h"
#include "fp16.h"
#include "iq_tables.h"
#include "matmul_avx2.h"

AVX2 INLINE __m256i book16(const int8_t *kvalues) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kvalues));
}

/* The repacked-order kernels below also serve Q4_0, whose block is IQ4_NL's with the
 * code book -8..7 (its value is the index - 8): `kind` picks the book and the scale. */
enum { LUT_IQ4_NL, LUT_MXFP4, LUT_Q4_0 };
_Static_assert(sizeof(block_q4_0) == sizeof(block_iq4_nl) && offsetof(block_q4_0, qs) == offsetof(block_iq4_nl, qs),
               "Q4_0 read as IQ4_NL");
static const int8_t kvalues_q4_0[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};

AVX2 INLINE const int8_t *lut_book(const int kind) {
    return kind == LUT_MXFP4 ? realm_kvalues_mxfp4 : kind == LUT_Q4_0 ? kvalues_q4_0 : realm_kvalues_iq4nl;
}

/* 32 indices (16 bytes: low nibbles then high) as the code book's signed bytes.  The 16
 * bytes in both halves, the upper half's 64-bit words shifted right by 4: masked, its
 * bytes are the high nibbles. */
AVX2 INLINE __m256i lut32(const uint8_t *qs, __m256i book) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i idx = _mm256_and_si256(_mm256_srlv_epi64(raw, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
    return _mm256_shuffle_epi8(book, idx);
}

/* Lane k = sum of u[j] x[j] for j = 4k..4k+3 (au = |u|). */
AVX2 INLINE __m256i lanes8(__m256i au, __m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(au, _mm256_sign_epi8(x, u)), _mm256_set1_epi16(1));
}

/* Block b's indices and scale (mxfp4: E8M0, else IQ4_NL's f16). */
AVX2 INLINE const uint8_t *qs32(const void *w, int64_t b, const int mxfp4) {
    return mxfp4 ? ((const block_mxfp4 *)w)[b].qs : ((const block_iq4_nl *)w)[b].qs;
}

AVX2 INLINE float scale32(const void *w, int64_t b, const int mxfp4) {
    return mxfp4 ? realm_e8m0_to_f32_half(((const block_mxfp4 *)w)[b].e) : _cvtsh_ss(((const block_iq4_nl *)w)[b].d);
}

/* vec_dot: even blocks into acc[0], odd ones into acc[1]; an unpaired last block summed
 * whole and added after hsum8(acc[0] + acc[1]). */
AVX2 INLINE void lut32_k(const int mxfp4, int64_t nb, const void *w, const realm_act_group *a, float *y, int64_t ys,
                         const int T) {
    const __m256i book = book16(mxfp4 ? realm_kvalues_mxfp4 : realm_kvalues_iq4nl);
    __m256 acc[2][G];
    for (int t = 0; t < T; t++) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    const int64_t pairs = nb & ~(int64_t)1;
    for (int64_t b = 0; b < pairs; b += 2) {
        for (int h = 0; h < 2; h++) {
            const __m256i u = lut32(qs32(w, b + h, mxfp4), book), au = _mm256_sign_epi8(u, u);
            const float dw = scale32(w, b + h, mxfp4);
            const float *dx = a->d + realm_act_slot(0, b + h);
            float d[G];
            if (T > 1) _mm256_storeu_ps(d, _mm256_mul_ps(_mm256_set1_ps(dw), _mm256_loadu_ps(dx)));
            for (int t = 0; t < T; t++) {
                const __m256i p = lanes8(au, u, load32(TOKEN_ROW(a, t) + 32 * (b + h)));
                const __m256 dt = T > 1 ? _mm256_broadcast_ss(d + t) : _mm256_set1_ps(dw * dx[0]);
                acc[h][t] = _mm256_fmadd_ps(dt, _mm256_cvtepi32_ps(p), acc[h][t]);
            }
        }
    }
    int32_t isum[G];
    float dlast = 0.0f;
    if (nb & 1) {
        const int64_t b = nb - 1;
        const __m256i u = lut32(qs32(w, b, mxfp4), book), au = _mm256_sign_epi8(u, u);
        dlast = scale32(w, b, mxfp4);
        for (int t = 0; t < T; t++) {
            const __m256i p = lanes8(au, u, load32(TOKEN_ROW(a, t) + 32 * b));
            isum[t] = _mm_cvtsi128_si32(hsum4(&p, 1));
        }
    }
    for (int t = 0; t < T; t++) {
        float s = hsum8(_mm256_add_ps(acc[0][t], acc[1][t]));
        if (nb & 1) s = REALM_IQ_TAIL(dlast * a->d[realm_act_slot(t, nb - 1)], (float)isum[t], s);
        y[t * ys] = s;
    }
}

AVX2 INLINE __m256i lut_lanes(const void *w, int64_t b, const int mxfp4, __m256i book, __m256i x) {
    const __m256i u = lut32(qs32(w, b, mxfp4), book);
    return lanes8(_mm256_sign_epi8(u, u), u, x);
}

/* The scales of blocks b .. b + 3, as scale32 gives them. */
AVX2 INLINE __m128 scales4(const void *w, int64_t b, const int mxfp4) {
    if (mxfp4) {
        const block_mxfp4 *x = (const block_mxfp4 *)w + b;
        const __m128i e = _mm_setr_epi32(x[0].e, x[1].e, x[2].e, x[3].e);
        const __m128i normal = _mm_slli_epi32(_mm_sub_epi32(e, _mm_set1_epi32(1)), 23);
        const __m128i tiny = _mm_sllv_epi32(_mm_set1_epi32(0x00200000), e);
        return _mm_castsi128_ps(_mm_blendv_epi8(normal, tiny, _mm_cmplt_epi32(e, _mm_set1_epi32(2))));
    }
    const block_iq4_nl *x = (const block_iq4_nl *)w + b;
    return _mm_cvtph_ps(_mm_setr_epi16((short)x[0].d, (short)x[1].d, (short)x[2].d, (short)x[3].d, 0, 0, 0, 0));
}

/* Lane i = the sum of the 8 lanes of v[i], i < 4 (exact integers: any order). */
AVX2 INLINE __m128i hsum4x4(const __m256i *v) {
    const __m256i p0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    const __m256i p1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    const __m256i q = _mm256_add_epi32(_mm256_unpacklo_epi64(p0, p1), _mm256_unpackhi_epi64(p0, p1));
    return _mm_add_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
}

/* As llama.cpp multiplies a repacked matrix: acc = fma(isum, dw * dx, acc).  One token
 * takes 4 blocks' sums from one reduction, then folds them in order. */
AVX2 INLINE void lut32_whole_k(const int kind, int64_t nb, const void *w, const realm_act_group *a, float *y, int64_t ys,
                               const int T) {
    const int mxfp4 = kind == LUT_MXFP4;
    const __m256i book = book16(lut_book(kind));
    if (T == 1) {
        __m128 acc = _mm_setzero_ps();
        int64_t b = 0;
        for (; b + 4 <= nb; b += 4) {
            __m256i l[4];
            for (int k = 0; k < 4; k++) l[k] = lut_lanes(w, b + k, mxfp4, book, load32(a->qs + 32 * (b + k)));
            const __m128 isum = _mm_cvtepi32_ps(hsum4x4(l));
            const __m128 dw = scales4(w, b, mxfp4);
            const __m128 d = _mm_mul_ps(dw, _mm_setr_ps(a->d[realm_act_slot(0, b)], a->d[realm_act_slot(0, b + 1)],
                                                        a->d[realm_act_slot(0, b + 2)], a->d[realm_act_slot(0, b + 3)]));
            acc = _mm_fmadd_ss(isum, d, acc);
            acc = _mm_fmadd_ss(_mm_shuffle_ps(isum, isum, 1), _mm_shuffle_ps(d, d, 1), acc);
            acc = _mm_fmadd_ss(_mm_shuffle_ps(isum, isum, 2), _mm_shuffle_ps(d, d, 2), acc);
            acc = _mm_fmadd_ss(_mm_shuffle_ps(isum, isum, 3), _mm_shuffle_ps(d, d, 3), acc);
        }
        for (; b < nb; b++) {
            const __m256i l = lut_lanes(w, b, mxfp4, book, load32(a->qs + 32 * b));
            acc = _mm_fmadd_ss(_mm_cvtepi32_ps(hsum4(&l, 1)), _mm_set_ss(scale32(w, b, mxfp4) * a->d[realm_act_slot(0, b)]), acc);
        }
        y[0] = _mm_cvtss_f32(acc);
        return;
    }
    /* token t's sums in lane t: acc = fma(isum, dw * dx, acc) for all tokens at once */
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const __m256i u = lut32(qs32(w, b, mxfp4), book), au = _mm256_sign_epi8(u, u);
        __m256i l[G];
        for (int t = 0; t < G; t++) l[t] = t < T ? lanes8(au, u, load32(TOKEN_ROW(a, t) + 32 * b)) : _mm256_setzero_si256();
        const __m256 d = _mm256_mul_ps(_mm256_set1_ps(scale32(w, b, mxfp4)), _mm256_loadu_ps(a->d + realm_act_slot(0, b)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum8x8(l)), d, acc);
    }
    float out[G];
    _mm256_storeu_ps(out, acc);
    for (int t = 0; t < T; t++) y[t * ys] = out[t];
}

/* IQ4_XS: per super-block, lane k = sum over sub-blocks i of ls_i * (values 4k..4k+3),
 * then acc = fma(dw * dx, lanes, acc); y = hsum8(acc). */
AVX2 INLINE void iq4_xs_k(int64_t nb, const block_iq4_xs *x, const realm_act_group *a, float *y, int64_t ys, const int T) {
    const __m256i book = book16(realm_kvalues_iq4nl);
    __m256 acc[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i s[G];
        for (int t = 0; t < T; t++) s[t] = _mm256_setzero_si256();
        const unsigned sh = x[b].scales_h;
        for (int i = 0; i < QK_K / 32; i++) {
            const __m256i u = lut32(x[b].qs + 16 * i, book), au = _mm256_sign_epi8(u, u);
            const int ls = (((x[b].scales_l[i / 2] >> 4 * (i % 2)) & 15) | ((sh >> 2 * i) & 3) << 4) - 32;
            const __m256i lsv = _mm256_set1_epi16((short)ls);
            for (int t = 0; t < T; t++) {
                const __m256i p = _mm256_maddubs_epi16(au, _mm256_sign_epi8(load32(TOKEN_ROW(a, t) + QK_K * b + 32 * i), u));
                s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(p, lsv));
            }
        }
        const float dw = _cvtsh_ss(x[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx[t]), _mm256_cvtepi32_ps(s[t]), acc[t]);
    }
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]);
}

AVX2 void realm_iq4_nl_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, lut32_k(0, nb, w, a, y, ys, T_));
}

AVX2 void realm_iq4_nl_dot_whole_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, lut32_whole_k(LUT_IQ4_NL, nb, w, a, y, ys, T_));
}

AVX2 void realm_mxfp4_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, lut32_k(1, nb, w, a, y, ys, T_));
}

AVX2 void realm_mxfp4_dot_whole_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, lut32_whole_k(LUT_MXFP4, nb, w, a, y, ys, T_));
}

AVX2 void realm_iq4_xs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    DISPATCH_T(ntok, iq4_xs_k(nb, w, a, y, ys, T_));
}

/* ---- several rows per call, with AVX-512 VNNI (rows_vnni, traits.h) ----
 * The repacked order (acc = fma(isum_b, dw_b * dx_b, acc) per row) for 8 rows at once,
 * the rows in the 8 lanes of one accumulator per token.  Rows i and i + 4 share a vector:
 * their 16 index bytes in its two halves, the low nibbles through the code book in one
 * shuffle, the high ones in another.  The book's values are biased by +128 to be unsigned
 * for dpbusd; the bias, 128 * (the sum of the block's activations), is taken back exactly
 * in the integer sums (the accumulators start from its negation, the activations' offset
 * sums). */
VNNI INLINE __m256i vnni_dot(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }

/* The scales (as scale32 gives them) of the blocks at blk, blk + rb, ... blk + 7 rb, in lane order. */
VNNI INLINE __m256 scales8(const uint8_t *blk, int64_t rb, const int mxfp4) {
    if (mxfp4) {
        uint64_t e = 0;
        for (int i = 0; i < 8; i++) {
            e |= (uint64_t)blk[i * rb] << 8 * i;
            __asm__("" : "+r"(e));
        }
        const __m256i ev = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)e));
        const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(ev, _mm256_set1_epi32(1)), 23);
        const __m256i tiny = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), ev);
        return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, tiny, _mm256_cmpgt_epi32(_mm256_set1_epi32(2), ev)));
    }
    /* in general registers: gcc's vectorization of this gather is slower */
    uint64_t lo = 0, hi = 0;
    for (int i = 0; i < 4; i++) {
        uint16_t d0, d1;
        memcpy(&d0, blk + i * rb, 2);
        memcpy(&d1, blk + (i + 4) * rb, 2);
        lo |= (uint64_t)d0 << 16 * i;
        hi |= (uint64_t)d1 << 16 * i;
        __asm__("" : "+r"(lo), "+r"(hi));
    }
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)hi, (long long)lo));
}

VNNI INLINE void lut32_rows8_k(const int kind, int64_t nb, const uint8_t *w, int64_t rb, const uint8_t *end,
                               const realm_act_group *a, float *y, int64_t ys, const int T) {
    const int mxfp4 = kind == LUT_MXFP4;
    const int bs = mxfp4 ? (int)sizeof(block_mxfp4) : (int)sizeof(block_iq4_nl);
    const int qoff = mxfp4 ? (int)offsetof(block_mxfp4, qs) : (int)offsetof(block_iq4_nl, qs);
    const __m256i ubook = _mm256_xor_si256(book16(lut_book(kind)), _mm256_set1_epi8(-128));
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    /* The 8 rows' blocks sit in 8 streams the hardware prefetchers follow poorly: each block
     * step prefetches the next stretch of the call's rows ahead (8 blocks' bytes, pf_lead
     * ahead), so that the weights arrive from memory in time. */
    const uint8_t *pf = w + pf_lead(rb, 8);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bs;
        if (pf + 8 * bs * b < end)
            for (int k = 0; k < 8 * bs; k += 64) _mm_prefetch((const char *)(pf + 8 * bs * b + k), _MM_HINT_T0);
        __m256i lo[4], hi[4];
        for (int i = 0; i < 4; i++) {
            const __m256i raw = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(blk + i * rb + qoff))),
                _mm_loadu_si128((const __m128i *)(blk + (i + 4) * rb + qoff)), 1);
            lo[i] = _mm256_shuffle_epi8(ubook, _mm256_and_si256(raw, m4));
            hi[i] = _mm256_shuffle_epi8(ubook, _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4));
        }
        const __m256 dw = scales8(blk, rb, mxfp4);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            const int8_t *xt = TOKEN_ROW(a, t) + 32 * b;
            const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xt));
            const __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xt + 16)));
            /* lane k of each half: -128 times the sums of values 4k..4k+3 and 16+4k..16+4k+3,
             * from the buffer's offset sums (q8.c) */
            const __m256i o = OFFSETS(a, t, b);
            const __m256i nbias = _mm256_add_epi32(o, _mm256_permute2x128_si256(o, o, 1));
            __m256i s[4];
            for (int i = 0; i < 4; i++) s[i] = vnni_dot(vnni_dot(nbias, lo[i], xl), hi[i], xh);
            const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(dx[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows_hsum(s)), d, acc[t]);
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ys, acc[t]);
}

VNNI INLINE void lut32_rows_whole(const int kind, int64_t nb, const void *w, int64_t nrows, const realm_act_group *a,
                                  int ntok, float *y, int64_t ys) {
    const int64_t rb = nb * (kind == LUT_MXFP4 ? (int64_t)sizeof(block_mxfp4) : (int64_t)sizeof(block_iq4_nl));
    const uint8_t *wb = w, *end = wb + nrows * rb;
    prefetch_start(wb, end, pf_lead(rb, 8));
    int64_t r = 0;
    for (; r + 8 <= nrows; r += 8) DISPATCH_T(ntok, lut32_rows8_k(kind, nb, wb + r * rb, rb, end, a, y + r, ys, T_));
    for (; r < nrows; r++) DISPATCH_T(ntok, lut32_whole_k(kind, nb, wb + r * rb, a, y + r, ys, T_));
}

VNNI void realm_iq4_nl_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok,
                                       float *y, int64_t ys) {
    lut32_rows_whole(LUT_IQ4_NL, nb, w, nrows, a, ntok, y, ys);
}

VNNI void realm_mxfp4_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok,
                                      float *y, int64_t ys) {
    lut32_rows_whole(LUT_MXFP4, nb, w, nrows, a, ntok, y, ys);
}

VNNI void realm_q4_0_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok,
                                     float *y, int64_t ys) {
    lut32_rows_whole(LUT_Q4_0, nb, w, nrows, a, ntok, y, ys);
}

/* IQ4_XS, vec_dot order, two adjacent rows per step: their sub-blocks' 16 index bytes in
 * the two halves of one vector (values 0..15 through the book in one shuffle, 16..31 in
 * another), so the pair shares the activations' loads; maddubs, then dpwssd multiplies
 * the int16 pairs by the sub-block's scale and adds them to the lanes: lane k's integers
 * as iq4_xs_k makes them, put back per row at the super-block's end. */
#define VNNI_XS __attribute__((target("avx2,fma,f16c,bmi2,avx512vnni,avx512vl")))

/* Byte i: the 6-bit scale of sub-block i (unbiased, 0..63). */
VNNI_XS INLINE uint64_t xs_scales8(const block_iq4_xs *x) {
    uint32_t sl;
    memcpy(&sl, x->scales_l, 4);
    const uint64_t l = _pdep_u64(sl & 0x0f0f0f0fu, 0x00ff00ff00ff00ffULL) | _pdep_u64((sl >> 4) & 0x0f0f0f0fu, 0xff00ff00ff00ff00ULL);
    return l | _pdep_u64(x->scales_h, 0x0303030303030303ULL) << 4;
}

VNNI_XS INLINE void iq4_xs_pair_k(int64_t nb, const block_iq4_xs *x0, const block_iq4_xs *x1, const uint8_t *end,
                                  const realm_act_group *a, float *y, int64_t ys, const int T) {
    const __m256i book = book16(realm_kvalues_iq4nl), m4 = _mm256_set1_epi8(0x0f);
    __m256 acc[2][G];
    for (int t = 0; t < T; t++) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    /* the stretch of the rows ahead at the pair's pace (pf_lead) */
    const uint8_t *pf = (const uint8_t *)x0 + pf_lead(nb * (int64_t)sizeof(block_iq4_xs), 2);
    for (int64_t b = 0; b < nb; b++) {
        if (pf + 2 * sizeof(block_iq4_xs) * b < end)
            for (int k = 0; k < 2 * (int)sizeof(block_iq4_xs); k += 64)
                _mm_prefetch((const char *)(pf + 2 * sizeof(block_iq4_xs) * b + k), _MM_HINT_T0);
        /* words 0..7: row 0's ls - 32 of sub-blocks 0..7, words 8..15 row 1's */
        const __m256i ls = _mm256_sub_epi16(
            _mm256_cvtepu8_epi16(_mm_set_epi64x((long long)xs_scales8(x1 + b), (long long)xs_scales8(x0 + b))),
            _mm256_set1_epi16(32));
        __m256i sl[G], sh[G];
        for (int t = 0; t < T; t++) sl[t] = sh[t] = _mm256_setzero_si256();
        for (int i = 0; i < QK_K / 32; i++) {
            const __m256i raw = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(x0[b].qs + 16 * i))),
                                                        _mm_loadu_si128((const __m128i *)(x1[b].qs + 16 * i)), 1);
            const __m256i lo = _mm256_shuffle_epi8(book, _mm256_and_si256(raw, m4));
            const __m256i hi = _mm256_shuffle_epi8(book, _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4));
            const __m256i alo = _mm256_sign_epi8(lo, lo), ahi = _mm256_sign_epi8(hi, hi);
            const __m256i lsv = _mm256_shuffle_epi8(ls, _mm256_set1_epi16((short)(0x0100 * (2 * i + 1) + 2 * i)));
            for (int t = 0; t < T; t++) {
                const int8_t *q = TOKEN_ROW(a, t) + QK_K * b + 32 * i;
                const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
                const __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q + 16)));
                sl[t] = _mm256_dpwssd_epi32(sl[t], _mm256_maddubs_epi16(alo, _mm256_sign_epi8(xl, lo)), lsv);
                sh[t] = _mm256_dpwssd_epi32(sh[t], _mm256_maddubs_epi16(ahi, _mm256_sign_epi8(xh, hi)), lsv);
            }
        }
        const float dw0 = _cvtsh_ss(x0[b].d), dw1 = _cvtsh_ss(x1[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            const __m256i l0 = _mm256_permute2x128_si256(sl[t], sh[t], 0x20), l1 = _mm256_permute2x128_si256(sl[t], sh[t], 0x31);
            acc[0][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * dx[t]), _mm256_cvtepi32_ps(l0), acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * dx[t]), _mm256_cvtepi32_ps(l1), acc[1][t]);
        }
    }
    for (int t = 0; t < T; t++) {
        y[t * ys] = hsum8(acc[0][t]);
        y[t * ys + 1] = hsum8(acc[1][t]);
    }
}

VNNI_XS void realm_iq4_xs_rows_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                                    int64_t ys) {
    const block_iq4_xs *x = w;
    const uint8_t *end = (const uint8_t *)(x + nrows * nb);
    prefetch_start(w, end, pf_lead(nb * (int64_t)sizeof(block_iq4_xs), 2));
    int64_t r = 0;
    for (; r + 2 <= nrows; r += 2) DISPATCH_T(ntok, iq4_xs_pair_k(nb, x + r * nb, x + (r + 1) * nb, end, a, y + r, ys, T_));
    for (; r < nrows; r++) DISPATCH_T(ntok, iq4_xs_k(nb, x + r * nb, a, y + r, ys, T_));
}

#endif
