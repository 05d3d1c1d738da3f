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
        const uint8_t e = x[i].e;
        const __m256 d = _mm256_set1_ps(realm_bits_to_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23));
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

#endif
