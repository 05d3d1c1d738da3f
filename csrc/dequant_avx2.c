/* AVX2/FMA/F16C dequantizers.  Each computes exactly the float operations of its
 * scalar reference in dequant_ref.c (same products, same order, no fused
 * multiply-adds), so the outputs are bit-identical; only the bookkeeping is
 * vectorised.  Compiled for any x86-64 and selected at run time. */
#include "dequant.h"
#include "kernels_iq.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include "kernels.h"

/* Stores 32 consecutive floats: (int8 q[i]) * d[i / 16 among d0, d1]. */
AVX2 static inline void put32_mul(float *y, __m256i q, __m256 d0, __m256 d1) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d0));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo))), d0));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d1));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi))), d1));
}

/* Stores 32 floats: q[i] * d + m (the product rounded, then the sum). */
AVX2 static inline void put32_mul_add(float *y, __m256i q, __m256 d, __m256 m) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y + 0, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d), m));
    _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo))), d), m));
    _mm256_storeu_ps(y + 16, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d), m));
    _mm256_storeu_ps(y + 24, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi))), d), m));
}

/* Stores 32 floats: d[i/16] * q[i] - m[i/16], scales per 16 as in Q2_K. */
AVX2 static inline void put32_mul_sub2(float *y, __m256i q, __m256 d0, __m256 m0, __m256 d1, __m256 m1) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y + 0, _mm256_sub_ps(_mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))), m0));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)))), m0));
    _mm256_storeu_ps(y + 16, _mm256_sub_ps(_mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))), m1));
    _mm256_storeu_ps(y + 24, _mm256_sub_ps(_mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)))), m1));
}

/* 32 bytes, byte j = 0x10 if bit j of the little-endian u32 at qh is set, else 0. */
AVX2 static inline __m256i bits32_to_0x10(const uint8_t *qh) {
    return _mm256_and_si256(bits32(qh), _mm256_set1_epi8(0x10));
}

/* 32 bytes, byte j = `value` where bit `b` of byte j is set, else 0. */
AVX2 static inline __m256i bitplane(__m256i bytes, int b, char value) {
    const __m256i bit = _mm256_set1_epi8((char)(1u << b));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(value));
}

/* The float formats, 8 values at a time (float8) and one at a time (float1, the tails). */
AVX2 static inline __m256 float8(const void *src, int64_t i, const int type) {
    if (type == REALM_TYPE_F32) return _mm256_loadu_ps((const float *)src + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
    if (type == REALM_TYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* BF16 */
}

AVX2 static inline float float1(const void *src, int64_t i, const int type) {
    if (type == REALM_TYPE_F32) return ((const float *)src)[i];
    const uint16_t h = ((const uint16_t *)src)[i];
    return type == REALM_TYPE_F16 ? realm_half_to_f32(h) : realm_bf16_to_f32(h);
}

/* n values of a float format into dst, 32 a step.  stream: with streaming (non-temporal)
 * stores (to_float_stream, traits.h), one value at a time up to dst's first 32-byte boundary
 * and a store fence at the end. */
AVX2 static inline void float_rows(const void *src, float *dst, int64_t n, const int type, const int stream) {
    int64_t i = 0;
    if (stream)
        for (; i < n && ((uintptr_t)(dst + i) & 31); i++) dst[i] = float1(src, i, type);
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 32; k += 8) {
            if (stream) _mm256_stream_ps(dst + i + k, float8(src, i + k, type));
            else _mm256_storeu_ps(dst + i + k, float8(src, i + k, type));
        }
    for (; i < n; i++) dst[i] = float1(src, i, type);
    if (stream) _mm_sfence();
}

AVX2 void realm_f16_to_float_avx2(const void *src, float *dst, int64_t n) { float_rows(src, dst, n, REALM_TYPE_F16, 0); }

AVX2 void realm_bf16_to_float_avx2(const void *src, float *dst, int64_t n) { float_rows(src, dst, n, REALM_TYPE_BF16, 0); }

AVX2 void realm_f32_to_float_stream_avx2(const void *src, float *dst, int64_t n) {
    float_rows(src, dst, n, REALM_TYPE_F32, 1);
}

AVX2 void realm_f16_to_float_stream_avx2(const void *src, float *dst, int64_t n) {
    float_rows(src, dst, n, REALM_TYPE_F16, 1);
}

AVX2 void realm_bf16_to_float_stream_avx2(const void *src, float *dst, int64_t n) {
    float_rows(src, dst, n, REALM_TYPE_BF16, 1);
}

AVX2 void realm_q4_0_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q4_0 *x = src;
    const __m256i off = _mm256_set1_epi8(8);
    for (int64_t i = 0; i < nb; i++, dst += QK4_0) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        put32_mul(dst, _mm256_sub_epi8(nibbles16(x[i].qs), off), d, d);
    }
}

AVX2 void realm_q4_1_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK4_1) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        const __m256 m = _mm256_set1_ps(realm_half_to_f32(x[i].m));
        put32_mul_add(dst, nibbles16(x[i].qs), d, m);
    }
}

AVX2 void realm_q5_0_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q5_0 *x = src;
    const __m256i off = _mm256_set1_epi8(16);
    for (int64_t i = 0; i < nb; i++, dst += QK5_0) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        const __m256i q = _mm256_or_si256(nibbles16(x[i].qs), bits32_to_0x10(x[i].qh));
        put32_mul(dst, _mm256_sub_epi8(q, off), d, d);
    }
}

AVX2 void realm_q5_1_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK5_1) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        const __m256 m = _mm256_set1_ps(realm_half_to_f32(x[i].m));
        put32_mul_add(dst, _mm256_or_si256(nibbles16(x[i].qs), bits32_to_0x10(x[i].qh)), d, m);
    }
}

AVX2 void realm_q8_0_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK8_0) {
        const __m256 d = _mm256_set1_ps(realm_half_to_f32(x[i].d));
        for (int k = 0; k < QK8_0; k += 8) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x[i].qs + k)));
            _mm256_storeu_ps(dst + k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}

AVX2 void realm_q8_K_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q8_K *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK_K) {
        const __m256 d = _mm256_set1_ps(x[i].d);
        for (int k = 0; k < QK_K; k += 8) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x[i].qs + k)));
            _mm256_storeu_ps(dst + k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
    }
}

AVX2 void realm_q2_K_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q2_K *x = src;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d), dmin = realm_half_to_f32(x[i].dmin);
        for (int half = 0; half < 2; half++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * half));
            for (int shift = 0; shift < 8; shift += 2, dst += 32) {
                const uint8_t *sc = x[i].scales + 8 * half + shift;
                put32_mul_sub2(dst, _mm256_and_si256(_mm256_srli_epi16(q, shift), m3),
                               _mm256_set1_ps(d * (float)(sc[0] & 0x0f)), _mm256_set1_ps(dmin * (float)(sc[0] >> 4)),
                               _mm256_set1_ps(d * (float)(sc[1] & 0x0f)), _mm256_set1_ps(dmin * (float)(sc[1] >> 4)));
            }
        }
    }
}

AVX2 void realm_q3_K_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q3_K *x = src;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        int8_t sc[16];
        realm_q3_K_scales(x[i].scales, sc);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        for (int b = 0; b < 8; b++, dst += 32) { /* b: the hmask bit, 4 shifts per 32 q bytes */
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * (b >> 2)));
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (b & 3)), m3);
            /* lo - 4 where the high bit is clear: lo - 4 + (bit ? 4 : 0) */
            const __m256i v = _mm256_add_epi8(_mm256_sub_epi8(lo, _mm256_set1_epi8(4)), bitplane(hm, b, 4));
            put32_mul(dst, v, _mm256_set1_ps(d * (float)sc[2 * b]), _mm256_set1_ps(d * (float)sc[2 * b + 1]));
        }
    }
}

/* d * q - m for 32 unsigned bytes q, one (d, m) pair. */
AVX2 static inline void put32_k(float *y, __m256i q, float d, float m) {
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    put32_mul_sub2(y, q, vd, vm, vd, vm);
}

AVX2 void realm_q4_K_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q4_K *x = src;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d), dmin = realm_half_to_f32(x[i].dmin);
        for (int is = 0; is < 8; is += 2, dst += 64) {
            uint8_t s1, m1, s2, m2;
            realm_k4_scale_min(is, x[i].scales, &s1, &m1);
            realm_k4_scale_min(is + 1, x[i].scales, &s2, &m2);
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 16 * is));
            put32_k(dst, _mm256_and_si256(q, m4), d * (float)s1, dmin * (float)m1);
            put32_k(dst + 32, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), d * (float)s2, dmin * (float)m2);
        }
    }
}

AVX2 void realm_q5_K_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q5_K *x = src;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d), dmin = realm_half_to_f32(x[i].dmin);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)x[i].qh);
        for (int is = 0; is < 8; is += 2, dst += 64) {
            uint8_t s1, m1, s2, m2;
            realm_k4_scale_min(is, x[i].scales, &s1, &m1);
            realm_k4_scale_min(is + 1, x[i].scales, &s2, &m2);
            const __m256i q = _mm256_loadu_si256((const __m256i *)(x[i].qs + 16 * is));
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), bitplane(qh, is, 0x10));
            const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), bitplane(qh, is + 1, 0x10));
            put32_k(dst, lo, d * (float)s1, dmin * (float)m1);
            put32_k(dst + 32, hi, d * (float)s2, dmin * (float)m2);
        }
    }
}

AVX2 void realm_q6_K_to_float_avx2(const void *src, float *dst, int64_t nb) {
    const block_q6_K *x = src;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int n = 0; n < 2; n++, dst += 128) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * n));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * n + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * n));
            const int8_t *sc = x[i].scales + 8 * n;
            const __m256i lows[4] = {_mm256_and_si256(ql0, m4), _mm256_and_si256(ql1, m4),
                                     _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                     _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4)};
            for (int k = 0; k < 4; k++) {
                const __m256i h = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m3), 4);
                const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lows[k], h), off);
                put32_mul(dst + 32 * k, q, _mm256_set1_ps(d * (float)sc[2 * k]), _mm256_set1_ps(d * (float)sc[2 * k + 1]));
            }
        }
    }
}

#endif
