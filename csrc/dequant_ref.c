/* Scalar reference dequantizers, one per format (its row's to_float_ref in
 * traits.c).  Every arithmetic step is the same float operation, in the same
 * order, as llama.cpp's reference code, so the results are bit-identical; the
 * SIMD paths are tested against these. */
#include "dequant.h"
#include "fp16.h"
#include "kernels.h"

#include <string.h>

void realm_f32_to_float_ref(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void realm_f16_to_float_ref(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++) dst[i] = realm_half_to_f32(x[i]);
}

void realm_bf16_to_float_ref(const void *src, float *dst, int64_t n) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < n; i++) dst[i] = realm_bf16_to_f32(x[i]);
}

void realm_q4_0_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q4_0 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK4_0) {
        const float d = realm_half_to_f32(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            dst[j] = (float)((x[i].qs[j] & 0x0f) - 8) * d;
            dst[j + QK4_0 / 2] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void realm_q4_1_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK4_1) {
        const float d = realm_half_to_f32(x[i].d);
        const float m = realm_half_to_f32(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            dst[j] = (float)(x[i].qs[j] & 0x0f) * d + m;
            dst[j + QK4_1 / 2] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

void realm_q5_0_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK5_0) {
        const float d = realm_half_to_f32(x[i].d);
        const uint32_t qh = realm_u32le(x[i].qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int hi0 = (qh >> j) & 1, hi1 = (qh >> (j + 16)) & 1;
            dst[j] = (float)(((x[i].qs[j] & 0x0f) | hi0 << 4) - 16) * d;
            dst[j + QK5_0 / 2] = (float)(((x[i].qs[j] >> 4) | hi1 << 4) - 16) * d;
        }
    }
}

void realm_q5_1_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK5_1) {
        const float d = realm_half_to_f32(x[i].d);
        const float m = realm_half_to_f32(x[i].m);
        const uint32_t qh = realm_u32le(x[i].qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int hi0 = (qh >> j) & 1, hi1 = (qh >> (j + 16)) & 1;
            dst[j] = (float)((x[i].qs[j] & 0x0f) | hi0 << 4) * d + m;
            dst[j + QK5_1 / 2] = (float)((x[i].qs[j] >> 4) | hi1 << 4) * d + m;
        }
    }
}

void realm_q8_0_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK8_0) {
        const float d = realm_half_to_f32(x[i].d);
        for (int j = 0; j < QK8_0; j++) dst[j] = (float)x[i].qs[j] * d;
    }
}

void realm_q2_K_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q2_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const float dmin = realm_half_to_f32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int k = 0; k < 2; k++, is++) { /* two groups of 16 per shift */
                    const float dl = d * (float)(x[i].scales[is] & 0x0f);
                    const float ml = dmin * (float)(x[i].scales[is] >> 4);
                    for (int l = 0; l < 16; l++)
                        *dst++ = dl * (float)((q[16 * k + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/* The sixteen 6-bit scales of a Q3_K block, unpacked to signed bytes (bias 32 removed). */
void realm_q3_K_scales(const uint8_t packed[12], int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? packed[j] & 0x0f : packed[j - 8] >> 4;
        const int hi = (packed[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        out[j] = (int8_t)((lo | hi << 4) - 32);
    }
}

void realm_q3_K_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q3_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        int8_t sc[16];
        realm_q3_K_scales(x[i].scales, sc);
        const uint8_t *q = x[i].qs;
        int is = 0, bit = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, bit++) {
                for (int k = 0; k < 2; k++, is++) {
                    const float dl = d * (float)sc[is];
                    for (int l = 0; l < 16; l++) {
                        const int lo = (q[16 * k + l] >> shift) & 3;
                        const int hi = (x[i].hmask[16 * k + l] >> bit) & 1;
                        *dst++ = dl * (float)(lo - (hi ? 0 : 4));
                    }
                }
            }
        }
    }
}

/* Scale and min number j (0..7) of a Q4_K/Q5_K block's 12 packed bytes. */
void realm_k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void realm_q4_K_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q4_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const float dmin = realm_half_to_f32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        for (int is = 0; is < 8; is += 2, q += 32) {
            uint8_t sc, m;
            realm_k4_scale_min(is, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            realm_k4_scale_min(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) *dst++ = d1 * (float)(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) *dst++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

void realm_q5_K_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q5_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const float dmin = realm_half_to_f32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        for (int is = 0; is < 8; is += 2, q += 32) {
            uint8_t sc, m;
            realm_k4_scale_min(is, x[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            realm_k4_scale_min(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                *dst++ = d1 * (float)((q[l] & 0x0f) | ((x[i].qh[l] >> is) & 1) << 4) - m1;
            for (int l = 0; l < 32; l++)
                *dst++ = d2 * (float)((q[l] >> 4) | ((x[i].qh[l] >> (is + 1)) & 1) << 4) - m2;
        }
    }
}

void realm_q6_K_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q6_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = realm_half_to_f32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n = 0; n < QK_K; n += 128, ql += 64, qh += 32, sc += 8, dst += 128) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0f) | ((qh[l] >> 0) & 3) << 4) - 32;
                const int q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                dst[l] = d * (float)sc[is] * (float)q1;
                dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

void realm_q8_K_to_float_ref(const void *src, float *dst, int64_t nb) {
    const block_q8_K *x = src;
    for (int64_t i = 0; i < nb; i++, dst += QK_K) {
        for (int j = 0; j < QK_K; j++) dst[j] = x[i].d * (float)x[i].qs[j];
    }
}
