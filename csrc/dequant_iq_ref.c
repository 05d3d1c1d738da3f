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
