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

void realm_mxfp4_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_mxfp4 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK_MXFP4) {
        const float d = realm_e8m0_to_f32_half(x[i].e);
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

/* -- the grid formats: 8 (or 2 x 4) grid bytes per group, a sign per element ---------------- */

/* Byte j of a grid row (bits 8j..8j+7 of the table word). */
static inline float grid_u8(uint64_t row, int j) {
    return (float)(uint8_t)(row >> 8 * j);
}

/* y[0..7] = db * g[j], negated where bit j of signs is set, as llama.cpp's
 * `db * grid[j] * (signs & kmask_iq2xs[j] ? -1.f : 1.f)`. */
static inline void grid8_signed(float *y, uint64_t row, unsigned signs, float db) {
    for (int j = 0; j < 8; j++) y[j] = db * grid_u8(row, j) * ((signs >> j) & 1 ? -1.f : 1.f);
}

void realm_iq2_xxs_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq2_xxs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *q = (const uint8_t *)x[i].qs;
        for (int ib = 0; ib < QK_K / 32; ib++, q += 8) {
            const uint32_t idx = realm_u32le(q), sc = realm_u32le(q + 4);
            const float db = d * (0.5f + (float)(sc >> 28)) * 0.25f;
            for (int l = 0; l < 4; l++, dst += 8)
                grid8_signed(dst, realm_iq2xxs_grid[(idx >> 8 * l) & 0xff], realm_ksigns_iq2xs[(sc >> 7 * l) & 127], db);
        }
    }
}

void realm_iq2_xs_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq2_xs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const float db[2] = {d * (0.5f + (float)(x[i].scales[ib] & 0x0f)) * 0.25f,
                                 d * (0.5f + (float)(x[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; l++, dst += 8) {
                const uint16_t v = x[i].qs[4 * ib + l];
                grid8_signed(dst, realm_iq2xs_grid[v & 511], realm_ksigns_iq2xs[v >> 9], db[l / 2]);
            }
        }
    }
}

void realm_iq2_s_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq2_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *qs = x[i].qs, *signs = x[i].qs + QK_K / 8;
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const float db[2] = {d * (0.5f + (float)(x[i].scales[ib] & 0x0f)) * 0.25f,
                                 d * (0.5f + (float)(x[i].scales[ib] >> 4)) * 0.25f};
            for (int l = 0; l < 4; l++, dst += 8) {
                const int idx = realm_iq2_s_index(qs[4 * ib + l], x[i].qh[ib], l);
                grid8_signed(dst, realm_iq2s_grid[idx], signs[4 * ib + l], db[l / 2]);
            }
        }
    }
}

void realm_iq3_xxs_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq3_xxs *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *qs = x[i].qs, *scales_signs = x[i].qs + QK_K / 4;
        for (int ib = 0; ib < QK_K / 32; ib++, qs += 8) {
            const uint32_t sc = realm_u32le(scales_signs + 4 * ib);
            const float db = d * (0.5f + (float)(sc >> 28)) * 0.5f;
            for (int l = 0; l < 4; l++, dst += 8)
                grid8_signed(dst, realm_grid4x2(realm_iq3xxs_grid, qs[2 * l], qs[2 * l + 1]),
                             realm_ksigns_iq2xs[(sc >> 7 * l) & 127], db);
        }
    }
}

void realm_iq3_s_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq3_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const float db = d * (float)(1 + 2 * ((x[i].scales[ib / 2] >> 4 * (ib % 2)) & 0x0f));
            const uint8_t *qs = x[i].qs + 8 * ib;
            const int qh = x[i].qh[ib];
            for (int l = 0; l < 4; l++, dst += 8) {
                const int a = realm_iq3_s_index(qs, qh, 2 * l);
                const int b = realm_iq3_s_index(qs, qh, 2 * l + 1);
                grid8_signed(dst, realm_grid4x2(realm_iq3s_grid, a, b), x[i].signs[4 * ib + l], db);
            }
        }
    }
}

#define IQ1S_DELTA 0.125f

/* y[0..7] = dl * (g[j] + delta) for the int8 elements g of an iq1s_grid row. */
static inline void grid8_iq1(float *y, uint64_t row, float dl, float delta) {
    for (int j = 0; j < 8; j++) {
        const int g = (int)((row >> 8 * j) & 0xff);
        y[j] = dl * ((float)(g - ((g & 0x80) << 1)) + delta);
    }
}

void realm_iq1_s_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq1_s *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const unsigned h = x[i].qh[ib];
            const float dl = d * (float)(2 * ((h >> 12) & 7) + 1);
            const float delta = h & 0x8000 ? -IQ1S_DELTA : IQ1S_DELTA;
            for (int l = 0; l < 4; l++, dst += 8)
                grid8_iq1(dst, realm_iq1s_grid[x[i].qs[4 * ib + l] | ((h >> 3 * l) & 7) << 8], dl, delta);
        }
    }
}

/* IQ1_M's f16 block scale, whose 4 nibbles are the top nibbles of its 4 u16 scale words. */
static inline uint16_t iq1_m_scale_bits(const uint8_t *scales) {
    return (uint16_t)((realm_u16le(scales) >> 12) | ((realm_u16le(scales + 2) >> 8) & 0x00f0) |
                      ((realm_u16le(scales + 4) >> 4) & 0x0f00) | (realm_u16le(scales + 6) & 0xf000));
}

void realm_iq1_m_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_iq1_m *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(iq1_m_scale_bits(x[i].scales));
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const unsigned w = realm_u16le(x[i].scales + 2 * (ib / 2)), sh = 6 * (ib % 2);
            const float dl[2] = {d * (float)(2 * ((w >> sh) & 7) + 1), d * (float)(2 * ((w >> (sh + 3)) & 7) + 1)};
            for (int l = 0; l < 4; l++, dst += 8) {
                const int qh = x[i].qh[2 * ib + l / 2] >> 4 * (l % 2); /* this group's nibble */
                const float delta = qh & 0x08 ? -IQ1S_DELTA : IQ1S_DELTA;
                grid8_iq1(dst, realm_iq1s_grid[x[i].qs[4 * ib + l] | (qh & 7) << 8], dl[l / 2], delta);
            }
        }
    }
}
