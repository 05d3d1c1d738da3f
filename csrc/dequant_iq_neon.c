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

#endif
