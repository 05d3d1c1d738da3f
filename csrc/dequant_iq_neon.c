/* NEON dequantizers of the IQ, TQ and MXFP4 formats for aarch64.  Like the AVX2
 * ones, each performs exactly the float operations of its scalar reference in
 * dequant_iq_ref.c (separate multiplies and adds, never a fused multiply-add), so
 * the results are bit-identical.  dequant_neon.c registers them. */
#include "kernels_iq.h"

#if defined(__aarch64__)

#include "fp16.h"
#include "iq_tables.h"
#include <arm_neon.h>

/* y[0..7] = d * (float)q for 8 int8 lanes. */
static inline void put8_i8(float *y, int8x8_t q, float32x4_t d) {
    const int16x8_t w = vmovl_s8(q);
    vst1q_f32(y, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w)))));
    vst1q_f32(y + 4, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_high_s16(w)))));
}

/* y[0..15] = d * (float)q for 16 int8 lanes. */
static inline void put16_i8(float *y, int8x16_t q, float32x4_t d) {
    put8_i8(y, vget_low_s8(q), d);
    put8_i8(y + 8, vget_high_s8(q), d);
}

void realm_iq4_nl_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq4_nl *x = src;
    const int8x16_t kv = vld1q_s8(realm_kvalues_iq4nl);
    for (int64_t i = 0; i < nb; i++, dst += QK4_NL) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        const uint8x16_t q = vld1q_u8(x[i].qs);
        put16_i8(dst, vqtbl1q_s8(kv, vandq_u8(q, vdupq_n_u8(0x0f))), d);
        put16_i8(dst + 16, vqtbl1q_s8(kv, vshrq_n_u8(q, 4)), d);
    }
}

void realm_iq4_xs_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq4_xs *x = src;
    const int8x16_t kv = vld1q_s8(realm_kvalues_iq4nl);
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++, dst += 32) {
            const int ls = ((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0x0f) | ((x[i].scales_h >> 2 * ib) & 3) << 4;
            const float32x4_t dl = vdupq_n_f32(d * (float)(ls - 32));
            const uint8x16_t q = vld1q_u8(x[i].qs + 16 * ib);
            put16_i8(dst, vqtbl1q_s8(kv, vandq_u8(q, vdupq_n_u8(0x0f))), dl);
            put16_i8(dst + 16, vqtbl1q_s8(kv, vshrq_n_u8(q, 4)), dl);
        }
    }
}


void realm_mxfp4_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_mxfp4 *x = src;
    const int8x16_t kv = vld1q_s8(realm_kvalues_mxfp4);
    for (int64_t i = 0; i < nb; i++, dst += QK_MXFP4) {
        const uint8_t e = x[i].e;
        const float32x4_t d = vdupq_n_f32(realm_bits_to_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23));
        const uint8x16_t q = vld1q_u8(x[i].qs);
        put16_i8(dst, vqtbl1q_s8(kv, vandq_u8(q, vdupq_n_u8(0x0f))), d);
        put16_i8(dst + 16, vqtbl1q_s8(kv, vshrq_n_u8(q, 4)), d);
    }
}

void realm_tq2_0_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_tq2_0 *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        for (int j = 0; j < QK_K / 4; j += 32) {
            const uint8x16_t q[2] = {vld1q_u8(x[i].qs + j), vld1q_u8(x[i].qs + j + 16)};
            for (int l = 0; l < 4; l++, dst += 32) {
                for (int h = 0; h < 2; h++) {
                    const uint8x16_t v = vandq_u8(vshlq_u8(q[h], vdupq_n_s8((int8_t)(-2 * l))), vdupq_n_u8(3));
                    put16_i8(dst + 16 * h, vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(1)), d);
                }
            }
        }
    }
}

/* 16 ternary digits (-1, 0, 1): bytes[k] at the place of multiplier mul[k], as tq1_digit. */
static inline int8x16_t tq1_digits16(uint8x16_t bytes, uint8x16_t mul) {
    const uint8x16_t frac = vmulq_u8(bytes, mul); /* wraps, as the byte product does */
    const uint8x8_t lo = vshrn_n_u16(vmull_u8(vget_low_u8(frac), vdup_n_u8(3)), 8);
    const uint8x8_t hi = vshrn_n_u16(vmull_u8(vget_high_u8(frac), vdup_n_u8(3)), 8);
    return vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(lo, hi)), vdupq_n_s8(1));
}

void realm_tq1_0_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_tq1_0 *x = src;
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    static const uint8_t qh_mul[16] = {1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27};
    for (int64_t i = 0; i < nb; i++) {
        const float32x4_t d = vdupq_n_f32(realm_half_to_f32(x[i].d));
        const uint8x16_t a = vld1q_u8(x[i].qs), b = vld1q_u8(x[i].qs + 16), c = vld1q_u8(x[i].qs + 32);
        for (int n = 0; n < 5; n++, dst += 32) {
            put16_i8(dst, tq1_digits16(a, vdupq_n_u8(pow3[n])), d);
            put16_i8(dst + 16, tq1_digits16(b, vdupq_n_u8(pow3[n])), d);
        }
        for (int n = 0; n < 5; n++, dst += 16) put16_i8(dst, tq1_digits16(c, vdupq_n_u8(pow3[n])), d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, 4);
        put16_i8(dst, tq1_digits16(vreinterpretq_u8_u32(vdupq_n_u32(qh)), vld1q_u8(qh_mul)), d);
        dst += 16;
    }
}

#endif
