/* NEON dequantizers for aarch64.  Like the AVX2 ones, each performs exactly the
 * float operations of its scalar reference (separate multiply and add, never a
 * fused multiply-add), so the results are bit-identical. */
#include "dequant.h"
#include "kernels_iq.h"

#if defined(__aarch64__)

#include "fp16.h"
#include "kernels.h"
#include <arm_neon.h>

/* 8 int16 lanes times d, as floats, to y[0..7]. */
static inline void put8_mul(float *y, int16x8_t q, float32x4_t d) {
    vst1q_f32(y, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(q))), d));
    vst1q_f32(y + 4, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(q))), d));
}

/* 16 int8 lanes times d. */
static inline void put16_mul(float *y, int8x16_t q, float32x4_t d) {
    put8_mul(y, vmovl_s8(vget_low_s8(q)), d);
    put8_mul(y + 8, vmovl_s8(vget_high_s8(q)), d);
}

/* 16 uint8 lanes: q * d + m (rounded product, then the sum). */
static inline void put16_mul_add(float *y, uint8x16_t q, float32x4_t d, float32x4_t m) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(q)), hi = vmovl_u8(vget_high_u8(q));
    const uint32x4_t parts[4] = {vmovl_u16(vget_low_u16(lo)), vmovl_u16(vget_high_u16(lo)),
                                 vmovl_u16(vget_low_u16(hi)), vmovl_u16(vget_high_u16(hi))};
    for (int k = 0; k < 4; k++) vst1q_f32(y + 4 * k, vaddq_f32(vmulq_f32(vcvtq_f32_u32(parts[k]), d), m));
}

/* 16 uint8 lanes: d * q - m. */
static inline void put16_mul_sub(float *y, uint8x16_t q, float32x4_t d, float32x4_t m) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(q)), hi = vmovl_u8(vget_high_u8(q));
    const uint32x4_t parts[4] = {vmovl_u16(vget_low_u16(lo)), vmovl_u16(vget_high_u16(lo)),
                                 vmovl_u16(vget_low_u16(hi)), vmovl_u16(vget_high_u16(hi))};
    for (int k = 0; k < 4; k++) vst1q_f32(y + 4 * k, vsubq_f32(vmulq_f32(d, vcvtq_f32_u32(parts[k])), m));
}

/* Byte j (0..15) = 0x10 where bit (first + j) of the little-endian u32 at qh is set. */
static inline uint8x16_t bits16_to_0x10(const uint8_t *qh, int first) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    bits >>= first;
    const uint8x16_t spread = vcombine_u8(vdup_n_u8((uint8_t)bits), vdup_n_u8((uint8_t)(bits >> 8)));
    static const uint8_t mask[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    return vandq_u8(vtstq_u8(spread, vld1q_u8(mask)), vdupq_n_u8(0x10));
}

/* Byte j = value where bit b of bytes[j] is set. */
static inline uint8x16_t bitplane(uint8x16_t bytes, int b, uint8_t value) {
    return vandq_u8(vtstq_u8(bytes, vdupq_n_u8((uint8_t)(1u << b))), vdupq_n_u8(value));
}

void realm_f16_to_float_neon(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))));
        vst1q_f32(dst + i + 4, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i + 4))));
    }
    for (; i < n; i++) dst[i] = realm_half_to_f32(x[i]);
}

void realm_bf16_to_float_neon(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(dst + i, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(x + i), 16)));
        vst1q_f32(dst + i + 4, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(x + i + 4), 16)));
    }
    for (; i < n; i++) dst[i] = realm_bf16_to_f32(x[i]);
}

void realm_q4_0_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q4_0 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK4_0) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        const uint8x16_t raw = vld1q_u8(x[i].qs);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0f))), vdupq_n_s8(8));
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(raw, 4)), vdupq_n_s8(8));
        put16_mul(dst, lo, d);
        put16_mul(dst + 16, hi, d);
    }
}

void realm_q4_1_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK4_1) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        const float32x4_t m = vdupq_n_f32(realm_half_to_f32(x[i].m));
        const uint8x16_t raw = vld1q_u8(x[i].qs);
        put16_mul_add(dst, vandq_u8(raw, vdupq_n_u8(0x0f)), d, m);
        put16_mul_add(dst + 16, vshrq_n_u8(raw, 4), d, m);
    }
}

void realm_q5_0_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK5_0) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        const uint8x16_t raw = vld1q_u8(x[i].qs);
        const uint8x16_t lo = vorrq_u8(vandq_u8(raw, vdupq_n_u8(0x0f)), bits16_to_0x10(x[i].qh, 0));
        const uint8x16_t hi = vorrq_u8(vshrq_n_u8(raw, 4), bits16_to_0x10(x[i].qh, 16));
        put16_mul(dst, vsubq_s8(vreinterpretq_s8_u8(lo), vdupq_n_s8(16)), d);
        put16_mul(dst + 16, vsubq_s8(vreinterpretq_s8_u8(hi), vdupq_n_s8(16)), d);
    }
}

void realm_q5_1_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK5_1) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        const float32x4_t m = vdupq_n_f32(realm_half_to_f32(x[i].m));
        const uint8x16_t raw = vld1q_u8(x[i].qs);
        put16_mul_add(dst, vorrq_u8(vandq_u8(raw, vdupq_n_u8(0x0f)), bits16_to_0x10(x[i].qh, 0)), d, m);
        put16_mul_add(dst + 16, vorrq_u8(vshrq_n_u8(raw, 4), bits16_to_0x10(x[i].qh, 16)), d, m);
    }
}

void realm_q8_0_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK8_0) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        put16_mul(dst, vld1q_s8(x[i].qs), d);
        put16_mul(dst + 16, vld1q_s8(x[i].qs + 16), d);
    }
}

void realm_q8_K_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q8_K *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK_K) {
        const float32x4_t d = vdupq_n_f32(x[i].d);
        for (int k = 0; k < QK_K; k += 16) put16_mul(dst + k, vld1q_s8(x[i].qs + k), d);
    }
}

void realm_q2_K_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q2_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d), dmin = realm_half_to_f32(x[i].dmin);
        int is = 0;
        for (int half = 0; half < 2; half++) {
            const uint8x16_t q[2] = {vld1q_u8(x[i].qs + 32 * half), vld1q_u8(x[i].qs + 32 * half + 16)};
            for (int shift = 0; shift < 8; shift += 2) {
                for (int k = 0; k < 2; k++, is++, dst += 16) {
                    const uint8_t sc = x[i].scales[is];
                    const uint8x16_t v = vandq_u8(vshlq_u8(q[k], vdupq_n_s8((int8_t)-shift)), vdupq_n_u8(3));
                    put16_mul_sub(dst, v, vdupq_n_f32(d * (float)(sc & 0x0f)), vdupq_n_f32(dmin * (float)(sc >> 4)));
                }
            }
        }
    }
}

void realm_q3_K_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q3_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        int8_t sc[16];
        realm_q3_K_scales(x[i].scales, sc);
        const uint8x16_t hm[2] = {vld1q_u8(x[i].hmask), vld1q_u8(x[i].hmask + 16)};
        int is = 0;
        for (int b = 0; b < 8; b++) { /* b: the hmask bit, 4 shifts per 32 q bytes */
            for (int k = 0; k < 2; k++, is++, dst += 16) {
                const uint8x16_t q = vld1q_u8(x[i].qs + 32 * (b >> 2) + 16 * k);
                const uint8x16_t lo = vandq_u8(vshlq_u8(q, vdupq_n_s8((int8_t)(-2 * (b & 3)))), vdupq_n_u8(3));
                /* lo - 4 where the high bit is clear */
                const int8x16_t v = vsubq_s8(vreinterpretq_s8_u8(vaddq_u8(lo, bitplane(hm[k], b, 4))), vdupq_n_s8(4));
                put16_mul(dst, v, vdupq_n_f32(d * (float)sc[is]));
            }
        }
    }
}

void realm_q4_K_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q4_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d), dmin = realm_half_to_f32(x[i].dmin);
        for (int is = 0; is < 8; is += 2, dst += 64) {
            uint8_t s1, m1, s2, m2;
            realm_k4_scale_min(is, x[i].scales, &s1, &m1);
            realm_k4_scale_min(is + 1, x[i].scales, &s2, &m2);
            const float32x4_t d1 = vdupq_n_f32(d * (float)s1), n1 = vdupq_n_f32(dmin * (float)m1);
            const float32x4_t d2 = vdupq_n_f32(d * (float)s2), n2 = vdupq_n_f32(dmin * (float)m2);
            for (int k = 0; k < 2; k++) {
                const uint8x16_t q = vld1q_u8(x[i].qs + 16 * is + 16 * k);
                put16_mul_sub(dst + 16 * k, vandq_u8(q, vdupq_n_u8(0x0f)), d1, n1);
                put16_mul_sub(dst + 32 + 16 * k, vshrq_n_u8(q, 4), d2, n2);
            }
        }
    }
}

void realm_q5_K_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q5_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d), dmin = realm_half_to_f32(x[i].dmin);
        const uint8x16_t qh[2] = {vld1q_u8(x[i].qh), vld1q_u8(x[i].qh + 16)};
        for (int is = 0; is < 8; is += 2, dst += 64) {
            uint8_t s1, m1, s2, m2;
            realm_k4_scale_min(is, x[i].scales, &s1, &m1);
            realm_k4_scale_min(is + 1, x[i].scales, &s2, &m2);
            const float32x4_t d1 = vdupq_n_f32(d * (float)s1), n1 = vdupq_n_f32(dmin * (float)m1);
            const float32x4_t d2 = vdupq_n_f32(d * (float)s2), n2 = vdupq_n_f32(dmin * (float)m2);
            for (int k = 0; k < 2; k++) {
                const uint8x16_t q = vld1q_u8(x[i].qs + 16 * is + 16 * k);
                const uint8x16_t lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), bitplane(qh[k], is, 0x10));
                const uint8x16_t hi = vorrq_u8(vshrq_n_u8(q, 4), bitplane(qh[k], is + 1, 0x10));
                put16_mul_sub(dst + 16 * k, lo, d1, n1);
                put16_mul_sub(dst + 32 + 16 * k, hi, d2, n2);
            }
        }
    }
}

void realm_q6_K_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_q6_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int n = 0; n < 2; n++, dst += 128) {
            const uint8_t *ql = x[i].ql + 64 * n, *qh = x[i].qh + 32 * n;
            const int8_t *sc = x[i].scales + 8 * n;
            for (int k = 0; k < 2; k++) { /* 16 of the 32 columns l at a time */
                const uint8x16_t l0 = vld1q_u8(ql + 16 * k), l1 = vld1q_u8(ql + 32 + 16 * k);
                const uint8x16_t h = vld1q_u8(qh + 16 * k);
                const uint8x16_t m4 = vdupq_n_u8(0x0f), m3 = vdupq_n_u8(3);
                const uint8x16_t parts[4] = {
                    vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(h, m3), 4)),
                    vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h, 2), m3), 4)),
                    vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h, 4), m3), 4)),
                    vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vshrq_n_u8(h, 6), 4)),
                };
                for (int p = 0; p < 4; p++) {
                    const int8x16_t q = vsubq_s8(vreinterpretq_s8_u8(parts[p]), vdupq_n_s8(32));
                    put16_mul(dst + 32 * p + 16 * k, q, vdupq_n_f32(d * (float)sc[2 * p + k]));
                }
            }
        }
    }
}

#endif
