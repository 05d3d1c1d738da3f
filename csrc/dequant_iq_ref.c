/* Scalar reference dequantizers of the IQ, TQ and MXFP4 formats.  As in
 * dequant_ref.c, every float operation is llama.cpp's (dequantize_row_* in
 * ggml-quants.c), in the same order, so the results are bit-identical; the SIMD
 * rows (dequant_iq_avx2.c, dequant_iq_neon.c) are tested against these.  Fields
 * wider than a byte are read as the little-endian values they are on disk. */
#define REALM_IQ_TABLES_DEFINE
#include "iq_tables.h"
#include "kernels_iq.h"
#include "fp16.h"

void realm_iq4_nl_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq4_nl *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK4_NL) {
        const float d = realm_half_to_f32(x[i].d);
        for (int j = 0; j < QK4_NL / 2; j++) {
            dst[j] = d * (float)realm_kvalues_iq4nl[x[i].qs[j] & 0x0f];
            dst[j + QK4_NL / 2] = d * (float)realm_kvalues_iq4nl[x[i].qs[j] >> 4];
        }
    }
}

/* The 6-bit scale (bias 32 removed) of sub-block ib (0..7) of an IQ4_XS block. */
static inline int iq4_xs_scale(const block_iq4_xs *b, int ib) {
    const int lo = (b->scales_l[ib / 2] >> 4 * (ib % 2)) & 0x0f;
    const int hi = (b->scales_h >> 2 * ib) & 3;
    return (lo | hi << 4) - 32;
}

void realm_iq4_xs_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq4_xs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *qs = x[i].qs;
        for (int ib = 0; ib < QK_K / 32; ib++, qs += 16, dst += 32) {
            const float dl = d * (float)iq4_xs_scale(&x[i], ib);
            for (int j = 0; j < 16; j++) {
                dst[j] = dl * (float)realm_kvalues_iq4nl[qs[j] & 0x0f];
                dst[j + 16] = dl * (float)realm_kvalues_iq4nl[qs[j] >> 4];
            }
        }
    }
}

/* The E8M0 scale of an MXFP4 block, halved (the code book holds doubled e2m1 values):
 * 2^(e - 128) as llama.cpp's ggml_e8m0_to_fp32_half builds it, subnormal for e < 2. */
static inline float e8m0_to_f32_half(uint8_t e) {
    return realm_bits_to_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

void realm_mxfp4_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_mxfp4 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK_MXFP4) {
        const float d = e8m0_to_f32_half(x[i].e);
        for (int j = 0; j < QK_MXFP4 / 2; j++) {
            dst[j] = (float)realm_kvalues_mxfp4[x[i].qs[j] & 0x0f] * d;
            dst[j + QK_MXFP4 / 2] = (float)realm_kvalues_mxfp4[x[i].qs[j] >> 4] * d;
        }
    }
}

void realm_tq2_0_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_tq2_0 *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int j = 0; j < QK_K / 4; j += 32)
            for (int l = 0; l < 4; l++)
                for (int m = 0; m < 32; m++) *dst++ = (float)(((x[i].qs[j + m] >> 2 * l) & 3) - 1) * d;
    }
}

/* The ternary digit (-1, 0, 1) of a TQ1_0 byte q at the place whose multiplier is p:
 * q * p keeps the digits after it, as a fraction of 256 (the byte wraps); times 3, the
 * integer part is the digit, biased by 1. */
static inline int tq1_digit(uint8_t q, uint8_t p) {
    const uint8_t frac = (uint8_t)(q * p);
    return ((frac * 3) >> 8) - 1;
}

static const uint8_t pow3[5] = {1, 3, 9, 27, 81};

void realm_tq1_0_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_tq1_0 *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int n = 0; n < 5; n++) /* qs[0..31]: 5 x 32 elements */
            for (int m = 0; m < 32; m++) *dst++ = (float)tq1_digit(x[i].qs[m], pow3[n]) * d;
        for (int n = 0; n < 5; n++) /* qs[32..47]: 5 x 16 */
            for (int m = 0; m < 16; m++) *dst++ = (float)tq1_digit(x[i].qs[32 + m], pow3[n]) * d;
        for (int n = 0; n < 4; n++) /* qh: 4 x 4 */
            for (int j = 0; j < QK_K / 64; j++) *dst++ = (float)tq1_digit(x[i].qh[j], pow3[n]) * d;
    }
}
