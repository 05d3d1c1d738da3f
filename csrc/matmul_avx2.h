/* Pieces shared by the AVX2 matmul kernels (matmul_avx2.c, matmul_iq_avx2.c):
 * loads, horizontal sums (ggml's hsum_float_8), the token-count dispatch and the
 * repacked kernels' whole-block fold.  Include only inside an x86-64 #if, after
 * avx2_util.h and matmul.h. */
#ifndef REALM_MATMUL_AVX2_H
#define REALM_MATMUL_AVX2_H

#define G REALM_TOK_GROUP

/* ---- shared pieces ---- */

AVX2 INLINE __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* Lane i = sum of the 8 lanes of v[i], for i < T <= 4 (other lanes: don't care). */
AVX2 INLINE __m128i hsum4(const __m256i *v, const int T) {
    if (T == 1) {
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v[0]), _mm256_extracti128_si256(v[0], 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        return _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    }
    const __m256i z = _mm256_setzero_si256();
    const __m256i a = _mm256_hadd_epi32(v[0], v[1]);
    const __m256i b = _mm256_hadd_epi32(T > 2 ? v[2] : z, T > 3 ? v[3] : z);
    const __m256i h = _mm256_hadd_epi32(a, b);
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* ggml's hsum_float_8. */
AVX2 INLINE float hsum8(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* acc + (int lanes) * d, fused, for one token's 8 lanes. */
AVX2 INLINE __m256 fold8(__m256 acc, float d, __m256i lanes) {
    return _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
}

/* Byte j = ((bytes[j] >> b) & 1) << s. */
AVX2 INLINE __m256i bitplane(__m256i bytes, int b, int s) {
    const __m256i bit = _mm256_and_si256(_mm256_srli_epi16(bytes, b), _mm256_set1_epi8(1));
    return _mm256_slli_epi16(bit, s);
}

#define TOKEN_ROW(a, t) ((a)->qs + (int64_t)(t) * (a)->n_in)
/* Token t's offset sums of 32-value block b (-128 times each 4 values' sum, 8 int32; q8.c):
 * where they are, and loaded. */
#define OFFSET_SUMS(a, t, b) ((a)->o + (int64_t)(t) * ((a)->n_in / 4) + 8 * (b))
#define OFFSETS(a, t, b) load32(OFFSET_SUMS(a, t, b))
/* Token t's 16 sums of 16 values of block b (Q8_K). */
#define BSUMS(a, t, b) _mm256_loadu_si256((const __m256i *)((a)->bsums + (int64_t)(t) * ((a)->n_in / 16) + 16 * (b)))

/* The token count as a compile-time constant. */
#define CASE_T(n, CALL) \
    case n: {           \
        const int T_ = n; \
        CALL;           \
        break;          \
    }
#if REALM_TOK_GROUP == 8
#define DISPATCH_T(ntok, CALL)                                                                       \
    switch (ntok) {                                                                                  \
        CASE_T(1, CALL) CASE_T(2, CALL) CASE_T(3, CALL) CASE_T(4, CALL) CASE_T(5, CALL) CASE_T(6, CALL) \
        CASE_T(7, CALL) default : { const int T_ = 8; CALL; }                                        \
    }
#else
#error "DISPATCH_T is written for REALM_TOK_GROUP 8"
#endif

/* acc[h] (tokens 4h .. 4h+3 in its lanes) = fma(isum, dw * dx, acc[h]) for a
 * block's whole integer sums, one per token (the repacked kernels' fold). */
AVX2 INLINE void whole_fold(__m128 *acc, const __m256i *lanes, float dw, const float *dx, const int T) {
    for (int h = 0; 4 * h < T; h++) {
        const int n = T - 4 * h < 4 ? T - 4 * h : 4;
        acc[h] = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4(lanes + 4 * h, n)), _mm_mul_ps(_mm_set1_ps(dw), _mm_loadu_ps(dx + 4 * h)), acc[h]);
    }
}

AVX2 INLINE void whole_store(float *y, int64_t ys, const __m128 *acc, const __m128 *accm, const int T) {
    for (int h = 0; 4 * h < T; h++) {
        float tmp[4];
        _mm_storeu_ps(tmp, accm ? _mm_sub_ps(acc[h], accm[h]) : acc[h]);
        for (int t = 4 * h; t < T && t < 4 * h + 4; t++) y[t * ys] = tmp[t - 4 * h];
    }
}

#define WHOLE_ACC __m128 acc[G / 4], accm[G / 4]; for (int h = 0; h < G / 4; h++) acc[h] = accm[h] = _mm_setzero_ps()

/* ---- the K-quants (blocks of 256) ---- */

#define XROW(a, t, b, off) load32(TOKEN_ROW(a, t) + QK_K * (b) + (off))

/* Scales per 16 values, int16 [s0..s7 | s8..s15] split so that lo / hi hold
 * one half in both 128-bit lanes (for in-lane shuffles). */
typedef struct {
    __m256i lo, hi;
} scales16;

AVX2 INLINE scales16 split16(__m256i sc) {
    scales16 r;
    r.lo = _mm256_permute2x128_si256(sc, sc, 0x00);
    r.hi = _mm256_permute2x128_si256(sc, sc, 0x11);
    return r;
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

AVX2 INLINE void store_hsum8(float *y, int64_t ys, const __m256 *acc, const int T) {
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]);
}

/* ---- the several-rows kernels (rows_vnni, traits.h: matmul_iq_avx2.c, matmul_k_vnni.c) ---- */

#define VNNI __attribute__((target("avx2,fma,f16c,avx512vnni,avx512vl")))

/* Lane t = the sum of the 8 lanes of v[t] (exact integers: any order). */
AVX2 INLINE __m256i hsum8x8(const __m256i *v) {
    __m256i p[4], q[2];
    for (int i = 0; i < 4; i++)
        p[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++)
        q[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(p[2 * i], p[2 * i + 1]), _mm256_unpackhi_epi64(p[2 * i], p[2 * i + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(q[0], q[1], 0x20), _mm256_permute2x128_si256(q[0], q[1], 0x31));
}

/* Software prefetch.  A call's rows are read as several streams at once, which the hardware
 * prefetchers follow poorly, and a tile's rows start cold: the kernels prefetch the start of
 * their rows at once, then at each step the stretch pf_lead bytes ahead of their progress
 * (about 6 KiB, and at least the `step` rows they take together), never past their rows. */
AVX2 INLINE int64_t pf_lead(int64_t rb, int step) { return step * rb > 6144 ? step * rb : 6144; }

/* The wide kernels fetch the next 16 rows while they work on these: `lines` cache lines a
 * block from *pf, which advances, never past end. */
AVX2 INLINE void prefetch_lines(const uint8_t **pf, const uint8_t *end, int lines) {
    for (int l = 0; l < lines && *pf < end; l++, *pf += 64) _mm_prefetch((const char *)*pf, _MM_HINT_T0);
}

AVX2 INLINE void prefetch_start(const uint8_t *w, const uint8_t *end, int64_t lead) {
    for (const uint8_t *p = w; p < w + lead && p < end; p += 64) _mm_prefetch((const char *)p, _MM_HINT_T0);
}

/* Dword i of v holds two f16, lo | hi << 16 (row i's block scales): both as floats, lane i. */
AVX2 INLINE void split_halves8(__m256i v, __m256 *lo, __m256 *hi) {
    const __m256i split = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0,
                                                                  1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    const __m256i h = _mm256_permute4x64_epi64(split, _MM_SHUFFLE(3, 1, 2, 0)); /* lo 0..7 | hi 0..7 */
    *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

/* The two f16 at byte off, off + 2 of 8 rows' blocks (blk, blk + rb, ...) as floats, row i in
 * lane i: one 32-bit load a row (gathered in general registers), split by one shuffle. */
AVX2 INLINE void halves_pair8(const uint8_t *blk, int64_t rb, int off, __m256 *lo, __m256 *hi) {
    uint64_t q[4];
    for (int i = 0; i < 4; i++) {
        uint32_t a, b;
        memcpy(&a, blk + 2 * i * rb + off, 4);
        memcpy(&b, blk + (2 * i + 1) * rb + off, 4);
        q[i] = a | (uint64_t)b << 32;
        __asm__("" : "+r"(q[i]));
    }
    split_halves8(_mm256_setr_epi64x((long long)q[0], (long long)q[1], (long long)q[2], (long long)q[3]), lo, hi);
}

/* The 8 rows r[0..8) of 8 int32 each, transposed: r[k] lane j = row j's lane k (the wide
 * kernels' packing: matmul_dot32_rows.h, matmul_k_vnni.c). */
AVX2 INLINE void wide_transpose8(__m256i r[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_unpacklo_epi64(a[i], a[i + 2]);
        b[i + 1] = _mm256_unpackhi_epi64(a[i], a[i + 2]);
        b[i + 2] = _mm256_unpacklo_epi64(a[i + 1], a[i + 3]);
        b[i + 3] = _mm256_unpackhi_epi64(a[i + 1], a[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x20);
        r[i + 4] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x31);
    }
}

/* Lane i (row i) = the sum of the lanes of s[i % 4]'s half i / 4 (exact integers). */
AVX2 INLINE __m256i rows_hsum(const __m256i *s) {
    const __m256i p0 = _mm256_add_epi32(_mm256_unpacklo_epi32(s[0], s[1]), _mm256_unpackhi_epi32(s[0], s[1]));
    const __m256i p1 = _mm256_add_epi32(_mm256_unpacklo_epi32(s[2], s[3]), _mm256_unpackhi_epi32(s[2], s[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(p0, p1), _mm256_unpackhi_epi64(p0, p1));
}

#endif
