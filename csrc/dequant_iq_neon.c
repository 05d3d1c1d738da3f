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

/* -- the grid formats --------------------------------------------------------------------- */

/* y[0..7] = db * g[j], negated where bit j of signs is set, for the 8 unsigned grid bytes g
 * (byte j of `row`): the product rounded as in the reference, then its sign flipped (an
 * exact negation, as multiplying by -1 is; only a NaN's sign bit may differ). */
static inline void put8_grid(float *y, uint64_t row, float32x4_t db, unsigned signs) {
    static const uint32_t bits[8] = {1, 2, 4, 8, 16, 32, 64, 128};
    const uint16x8_t w = vmovl_u8(vcreate_u8(row));
    const uint32x4_t s = vdupq_n_u32(signs);
    const float32x4_t lo = vmulq_f32(db, vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))));
    const float32x4_t hi = vmulq_f32(db, vcvtq_f32_u32(vmovl_u16(vget_high_u16(w))));
    const uint32x4_t nlo = vshlq_n_u32(vtstq_u32(s, vld1q_u32(bits)), 31);
    const uint32x4_t nhi = vshlq_n_u32(vtstq_u32(s, vld1q_u32(bits + 4)), 31);
    vst1q_f32(y, vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(lo), nlo)));
    vst1q_f32(y + 4, vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(hi), nhi)));
}

void realm_iq2_xxs_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq2_xxs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *q = (const uint8_t *)x[i].qs;
        for (int ib = 0; ib < QK_K / 32; ib++, q += 8) {
            const uint32_t sc = realm_u32le(q + 4);
            const float32x4_t db = vdupq_n_f32(d * (0.5f + (float)(sc >> 28)) * 0.25f);
            for (int l = 0; l < 4; l++, dst += 8)
                put8_grid(dst, realm_iq2xxs_grid[q[l]], db, realm_ksigns_iq2xs[(sc >> 7 * l) & 127]);
        }
    }
}

void realm_iq2_xs_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq2_xs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const float32x4_t db[2] = {vdupq_n_f32(d * (0.5f + (float)(x[i].scales[ib] & 0x0f)) * 0.25f),
                                       vdupq_n_f32(d * (0.5f + (float)(x[i].scales[ib] >> 4)) * 0.25f)};
            for (int l = 0; l < 4; l++, dst += 8) {
                const uint16_t v = x[i].qs[4 * ib + l];
                put8_grid(dst, realm_iq2xs_grid[v & 511], db[l / 2], realm_ksigns_iq2xs[v >> 9]);
            }
        }
    }
}

void realm_iq2_s_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq2_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *qs = x[i].qs, *signs = x[i].qs + QK_K / 8;
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const float32x4_t db[2] = {vdupq_n_f32(d * (0.5f + (float)(x[i].scales[ib] & 0x0f)) * 0.25f),
                                       vdupq_n_f32(d * (0.5f + (float)(x[i].scales[ib] >> 4)) * 0.25f)};
            for (int l = 0; l < 4; l++, dst += 8) {
                const int idx = realm_iq2_s_index(qs[4 * ib + l], x[i].qh[ib], l);
                put8_grid(dst, realm_iq2s_grid[idx], db[l / 2], signs[4 * ib + l]);
            }
        }
    }
}

void realm_iq3_xxs_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq3_xxs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *qs = x[i].qs, *scales_signs = x[i].qs + QK_K / 4;
        for (int ib = 0; ib < QK_K / 32; ib++, qs += 8) {
            const uint32_t sc = realm_u32le(scales_signs + 4 * ib);
            const float32x4_t db = vdupq_n_f32(d * (0.5f + (float)(sc >> 28)) * 0.5f);
            for (int l = 0; l < 4; l++, dst += 8)
                put8_grid(dst, realm_grid4x2(realm_iq3xxs_grid, qs[2 * l], qs[2 * l + 1]), db,
                          realm_ksigns_iq2xs[(sc >> 7 * l) & 127]);
        }
    }
}

void realm_iq3_s_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq3_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const float32x4_t db = vdupq_n_f32(d * (float)(1 + 2 * ((x[i].scales[ib / 2] >> 4 * (ib % 2)) & 0x0f)));
            const uint8_t *qs = x[i].qs + 8 * ib;
            const int qh = x[i].qh[ib];
            for (int l = 0; l < 4; l++, dst += 8) {
                const int a = realm_iq3_s_index(qs, qh, 2 * l);
                const int b = realm_iq3_s_index(qs, qh, 2 * l + 1);
                put8_grid(dst, realm_grid4x2(realm_iq3s_grid, a, b), db, x[i].signs[4 * ib + l]);
            }
        }
    }
}

/* y[0..7] = dl * (g[j] + delta) for the int8 elements g of iq1s_grid row r. */
static inline void put8_iq1(float *y, int r, float32x4_t dl, float32x4_t delta) {
    const int16x8_t w = vmovl_s8(vcreate_s8(realm_iq1s_grid[r]));
    vst1q_f32(y, vmulq_f32(dl, vaddq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), delta)));
    vst1q_f32(y + 4, vmulq_f32(dl, vaddq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))), delta)));
}

void realm_iq1_s_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq1_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const unsigned h = x[i].qh[ib];
            const float32x4_t dl = vdupq_n_f32(d * (float)(2 * ((h >> 12) & 7) + 1));
            const float32x4_t delta = vdupq_n_f32(realm_iq1_delta(h & 0x8000, 15));
            for (int l = 0; l < 4; l++, dst += 8)
                put8_iq1(dst, x[i].qs[4 * ib + l] | ((h >> 3 * l) & 7) << 8, dl, delta);
        }
    }
}

void realm_iq1_m_to_float_neon(const void *src, float *dst, int64_t nb) {
    const block_iq1_m *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *s = x[i].scales;
        const uint16_t bits = (uint16_t)((realm_u16le(s) >> 12) | ((realm_u16le(s + 2) >> 8) & 0x00f0) |
                                         ((realm_u16le(s + 4) >> 4) & 0x0f00) | (realm_u16le(s + 6) & 0xf000));
        const float d = realm_half_to_f32(bits);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const unsigned w = realm_u16le(s + 2 * (ib / 2)), sh = 6 * (ib % 2);
            const float32x4_t dl[2] = {vdupq_n_f32(d * (float)(2 * ((w >> sh) & 7) + 1)),
                                       vdupq_n_f32(d * (float)(2 * ((w >> (sh + 3)) & 7) + 1))};
            for (int l = 0; l < 4; l++, dst += 8) {
                const int qh = x[i].qh[2 * ib + l / 2] >> 4 * (l % 2);
                const float32x4_t delta = vdupq_n_f32(realm_iq1_delta((uint32_t)qh & 0x08, 3));
                put8_iq1(dst, x[i].qs[4 * ib + l] | (qh & 7) << 8, dl[l / 2], delta);
            }
        }
    }
}

#endif
