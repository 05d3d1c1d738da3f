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

#endif
