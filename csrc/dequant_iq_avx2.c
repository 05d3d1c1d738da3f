/* AVX2 dequantizers of the IQ, TQ and MXFP4 formats.  Each computes exactly the
 * float operations of its scalar reference in dequant_iq_ref.c (same products, in
 * the same order, no fused multiply-adds), so the outputs are bit-identical; the
 * table look-ups and bit unpacking are what is vectorised.  Compiled for any x86-64
 * by function attribute and chosen at run time (dequant_avx2.c registers them). */
#include "kernels_iq.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "iq_tables.h"

/* y[0..7] = d * (float)q for the low 8 int8 lanes of q. */
AVX2 static inline void put8_i8(float *y, __m128i q, __m256 d) {
    _mm256_storeu_ps(y, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
}

/* y[0..15] = d * (float)q for 16 int8 lanes. */
AVX2 static inline void put16_i8(float *y, __m128i q, __m256 d) {
    put8_i8(y, q, d);
    put8_i8(y + 8, _mm_unpackhi_epi64(q, q), d);
}

/* y[0..31] = d * (float)q for 32 int8 lanes. */
AVX2 static inline void put32_i8(float *y, __m256i q, __m256 d) {
    put16_i8(y, _mm256_castsi256_si128(q), d);
    put16_i8(y + 16, _mm256_extracti128_si256(q, 1), d);
}

AVX2 void realm_iq4_nl_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq4_nl *x = src;
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)realm_kvalues_iq4nl));
    for (int64_t i = 0; i < nb; i++, dst += QK4_NL) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        put32_i8(dst, _mm256_shuffle_epi8(kv, nibbles16(x[i].qs)), d);
    }
}

AVX2 void realm_iq4_xs_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq4_xs *x = src;
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)realm_kvalues_iq4nl));
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++, dst += 32) {
            const int ls = ((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0x0f) | ((x[i].scales_h >> 2 * ib) & 3) << 4;
            const __m256 dl = _mm256_set1_ps(d * (float)(ls - 32));
            put32_i8(dst, _mm256_shuffle_epi8(kv, nibbles16(x[i].qs + 16 * ib)), dl);
        }
    }
}


AVX2 void realm_mxfp4_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_mxfp4 *x = src;
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)realm_kvalues_mxfp4));
    for (int64_t i = 0; i < nb; i++, dst += QK_MXFP4) {
        const __m256 d = _mm256_set1_ps(realm_e8m0_to_f32_half(x[i].e));
        put32_i8(dst, _mm256_shuffle_epi8(kv, nibbles16(x[i].qs)), d);
    }
}

AVX2 void realm_tq2_0_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_tq2_0 *x = src;
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        for (int j = 0; j < QK_K / 4; j += 32) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + j));
            for (int l = 0; l < 4; l++, dst += 32)
                put32_i8(dst, _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(q, 2 * l), m3), one), d);
        }
    }
}

/* 16 ternary digits (-1, 0, 1) as int8: byte k of `bytes` at the place of multiplier mul[k]
 * (16-bit lanes), as tq1_digit in dequant_iq_ref.c. */
AVX2 static inline __m128i tq1_digits16(__m128i bytes, __m256i mul) {
    __m256i w = _mm256_and_si256(_mm256_mullo_epi16(_mm256_cvtepu8_epi16(bytes), mul), _mm256_set1_epi16(0xff));
    w = _mm256_srli_epi16(_mm256_mullo_epi16(w, _mm256_set1_epi16(3)), 8);
    w = _mm256_sub_epi16(w, _mm256_set1_epi16(1));
    return _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

AVX2 void realm_tq1_0_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_tq1_0 *x = src;
    static const short pow3[5] = {1, 3, 9, 27, 81};
    /* the qh part: its 4 bytes at the places 1, 3, 9, 27 in turn */
    const __m256i qh_mul = _mm256_setr_epi16(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27);
    for (int64_t i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        const __m128i a = _mm_loadu_si128((const __m128i *)x[i].qs);
        const __m128i b = _mm_loadu_si128((const __m128i *)(x[i].qs + 16));
        const __m128i c = _mm_loadu_si128((const __m128i *)(x[i].qs + 32));
        for (int n = 0; n < 5; n++, dst += 32) {
            const __m256i mul = _mm256_set1_epi16(pow3[n]);
            put16_i8(dst, tq1_digits16(a, mul), d);
            put16_i8(dst + 16, tq1_digits16(b, mul), d);
        }
        for (int n = 0; n < 5; n++, dst += 16) put16_i8(dst, tq1_digits16(c, _mm256_set1_epi16(pow3[n])), d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        put16_i8(dst, tq1_digits16(_mm_set1_epi32((int)qh), qh_mul), d);
        dst += 16;
    }
}

/* -- the grid formats --------------------------------------------------------------------- */

/* y[0..7] = db * g[j], negated where bit j of signs is set, for the 8 unsigned grid bytes g
 * in the low half of `g`: the product rounded as in the reference, then its sign flipped
 * (an exact negation, as multiplying by -1 is; only a NaN's sign bit may differ, and
 * any NaN is as good as another). */
AVX2 static inline void put8_grid(float *y, __m128i g, __m256 db, unsigned signs) {
    const __m256 v = _mm256_mul_ps(db, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(g)));
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i neg = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)signs), bit), bit);
    _mm256_storeu_ps(y, _mm256_xor_ps(v, _mm256_castsi256_ps(_mm256_slli_epi32(neg, 31))));
}

/* Row r of an 8-byte grid (x86-64 is little-endian: byte j of the word is element j). */
AVX2 static inline __m128i grid_row(const uint64_t *grid, int r) {
    return _mm_loadl_epi64((const __m128i *)(grid + r));
}

/* Rows a and b of a 4-byte grid, side by side. */
AVX2 static inline __m128i grid_rows4(const uint32_t *grid, int a, int b) {
    const uint32_t pair[2] = {grid[a], grid[b]};
    return _mm_loadl_epi64((const __m128i *)pair);
}

AVX2 void realm_iq2_xxs_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq2_xxs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *q = (const uint8_t *)x[i].qs;
        for (int ib = 0; ib < QK_K / 32; ib++, q += 8) {
            const uint32_t sc = realm_u32le(q + 4);
            const __m256 db = _mm256_set1_ps(d * (0.5f + (float)(sc >> 28)) * 0.25f);
            for (int l = 0; l < 4; l++, dst += 8)
                put8_grid(dst, grid_row(realm_iq2xxs_grid, q[l]), db, realm_ksigns_iq2xs[(sc >> 7 * l) & 127]);
        }
    }
}

AVX2 void realm_iq2_xs_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq2_xs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const __m256 db[2] = {_mm256_set1_ps(d * (0.5f + (float)(x[i].scales[ib] & 0x0f)) * 0.25f),
                                  _mm256_set1_ps(d * (0.5f + (float)(x[i].scales[ib] >> 4)) * 0.25f)};
            for (int l = 0; l < 4; l++, dst += 8) {
                const uint16_t v = x[i].qs[4 * ib + l];
                put8_grid(dst, grid_row(realm_iq2xs_grid, v & 511), db[l / 2], realm_ksigns_iq2xs[v >> 9]);
            }
        }
    }
}

AVX2 void realm_iq2_s_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq2_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *qs = x[i].qs, *signs = x[i].qs + QK_K / 8;
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const __m256 db[2] = {_mm256_set1_ps(d * (0.5f + (float)(x[i].scales[ib] & 0x0f)) * 0.25f),
                                  _mm256_set1_ps(d * (0.5f + (float)(x[i].scales[ib] >> 4)) * 0.25f)};
            for (int l = 0; l < 4; l++, dst += 8) {
                const int idx = realm_iq2_s_index(qs[4 * ib + l], x[i].qh[ib], l);
                put8_grid(dst, grid_row(realm_iq2s_grid, idx), db[l / 2], signs[4 * ib + l]);
            }
        }
    }
}

AVX2 void realm_iq3_xxs_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq3_xxs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *qs = x[i].qs, *scales_signs = x[i].qs + QK_K / 4;
        for (int ib = 0; ib < QK_K / 32; ib++, qs += 8) {
            const uint32_t sc = realm_u32le(scales_signs + 4 * ib);
            const __m256 db = _mm256_set1_ps(d * (0.5f + (float)(sc >> 28)) * 0.5f);
            for (int l = 0; l < 4; l++, dst += 8)
                put8_grid(dst, grid_rows4(realm_iq3xxs_grid, qs[2 * l], qs[2 * l + 1]), db,
                          realm_ksigns_iq2xs[(sc >> 7 * l) & 127]);
        }
    }
}

AVX2 void realm_iq3_s_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq3_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const __m256 db = _mm256_set1_ps(d * (float)(1 + 2 * ((x[i].scales[ib / 2] >> 4 * (ib % 2)) & 0x0f)));
            const uint8_t *qs = x[i].qs + 8 * ib;
            const int qh = x[i].qh[ib];
            for (int l = 0; l < 4; l++, dst += 8) {
                const int a = realm_iq3_s_index(qs, qh, 2 * l);
                const int b = realm_iq3_s_index(qs, qh, 2 * l + 1);
                put8_grid(dst, grid_rows4(realm_iq3s_grid, a, b), db, x[i].signs[4 * ib + l]);
            }
        }
    }
}

/* y[0..7] = dl * (g[j] + delta) for the int8 elements g of iq1s_grid row r. */
AVX2 static inline void put8_iq1(float *y, int r, __m256 dl, __m256 delta) {
    const __m256 g = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(grid_row(realm_iq1s_grid, r)));
    _mm256_storeu_ps(y, _mm256_mul_ps(dl, _mm256_add_ps(g, delta)));
}

AVX2 void realm_iq1_s_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq1_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const unsigned h = x[i].qh[ib];
            const __m256 dl = _mm256_set1_ps(d * (float)(2 * ((h >> 12) & 7) + 1));
            const __m256 delta = _mm256_set1_ps(realm_iq1_delta(h & 0x8000, 15));
            for (int l = 0; l < 4; l++, dst += 8)
                put8_iq1(dst, x[i].qs[4 * ib + l] | ((h >> 3 * l) & 7) << 8, dl, delta);
        }
    }
}

AVX2 void realm_iq1_m_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_iq1_m *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *s = x[i].scales;
        const uint16_t bits = (uint16_t)((realm_u16le(s) >> 12) | ((realm_u16le(s + 2) >> 8) & 0x00f0) |
                                         ((realm_u16le(s + 4) >> 4) & 0x0f00) | (realm_u16le(s + 6) & 0xf000));
        const float d = realm_half_to_f32(bits);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const unsigned w = realm_u16le(s + 2 * (ib / 2)), sh = 6 * (ib % 2);
            const __m256 dl[2] = {_mm256_set1_ps(d * (float)(2 * ((w >> sh) & 7) + 1)),
                                  _mm256_set1_ps(d * (float)(2 * ((w >> (sh + 3)) & 7) + 1))};
            for (int l = 0; l < 4; l++, dst += 8) {
                const int qh = x[i].qh[2 * ib + l / 2] >> 4 * (l % 2);
                const __m256 delta = _mm256_set1_ps(realm_iq1_delta((uint32_t)qh & 0x08, 3));
                put8_iq1(dst, x[i].qs[4 * ib + l] | (qh & 7) << 8, dl[l / 2], delta);
            }
        }
    }
}

#endif
