/* Scalar reference dot products of IQ1_S and IQ1_M weights against Q8_K activations
 * (matmul.h's float steps, fmaf for each fused multiply-add; matmul_iq1_avx2.c repeats
 * them bit for bit).  A 256-value block is 8 sub-blocks of 32, each 4 rows of the
 * iq1s grid (8 values in -1, 0, 1 each) plus a delta of +-0.125 per row (IQ1_S: per
 * sub-block), with odd weights 2 s + 1 (IQ1_S: one per sub-block; IQ1_M: one per 16
 * values).  As llama.cpp's AVX2 ggml_vec_dot_iq1_s_q8_K / _iq1_m_q8_K, the grid values'
 * products and the deltas' are summed apart, exactly, and scaled in f32 apart:
 *   IQ1_S: lane_k = sum over sub-blocks of w * (lane k of grid * q), acc_k = fma(d, lane_k,
 *          acc_k); the deltas' sign * w * (the sub-block's two 16-value activation sums,
 *          bsums) summed over the block into one integer e, acc1 = fma(d, e, acc1);
 *          y = hsum8(acc) + 0.125f * acc1 (unfused).
 *   IQ1_M: lane_k as IQ1_S's with the 16-value weights into acc, and lane'_k = sum of the
 *          weight * (lane k of +-q, the sign the row's delta's) into acc';
 *          y = fma(0.125f, hsum8(acc'), hsum8(acc)). */
#include "kernels_iq_mm.h"

#include "fp16.h"
#include "iq_tables.h"
#include "kernels_iq.h"

#include <math.h>

/* Grid row r of iq1s_grid: its 8 signed values. */
static inline void row8(int8_t *v, int r) {
    const uint64_t row = realm_iq1s_grid[r];
    for (int j = 0; j < 8; j++) v[j] = (int8_t)(uint8_t)(row >> 8 * j);
}

/* sum of v[j] q[j] for j in 4k .. 4k + 3 */
static inline int32_t lane4(const int8_t *v, const int8_t *q, int k) {
    int32_t s = 0;
    for (int j = 4 * k; j < 4 * k + 4; j++) s += v[j] * q[j];
    return s;
}

void realm_iq1_s_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_iq1_s *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, acc1 = 0.0f;
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            int32_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, e = 0;
            for (int ib = 0; ib < QK_K / 32; ib++) {
                const int h = x[b].qh[ib], ls = 2 * ((h >> 12) & 7) + 1;
                int8_t v[32];
                for (int l = 0; l < 4; l++) row8(v + 8 * l, x[b].qs[4 * ib + l] | ((h >> 3 * l) & 7) << 8);
                for (int k = 0; k < 8; k++) lane[k] += ls * lane4(v, q + 32 * ib, k);
                e += (bs[2 * ib] + bs[2 * ib + 1]) * (h & 0x8000 ? -ls : ls);
            }
            const float d = realm_half_to_f32(x[b].d) * a->d[realm_act_slot(t, b)];
            for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lane[k], acc[k]);
            acc1 = fmaf(d, (float)e, acc1);
        }
        y[t * ys] = realm_hsum8f(acc) + 0.125f * acc1;
    }
}

/* IQ1_M's f16 block scale: the top nibbles of its 4 u16 scale words. */
static inline uint16_t iq1_m_scale(const uint8_t *sc) {
    return (uint16_t)((realm_u16le(sc) >> 12) | ((realm_u16le(sc + 2) >> 8) & 0x00f0) | ((realm_u16le(sc + 4) >> 4) & 0x0f00) |
                      (realm_u16le(sc + 6) & 0xf000));
}

void realm_iq1_m_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_iq1_m *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        float accd[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K) {
            int32_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, laned[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int ib = 0; ib < QK_K / 32; ib++) {
                const int sw = realm_u16le(x[b].scales + 2 * (ib / 2)) >> 6 * (ib % 2);
                const int ls[2] = {2 * (sw & 7) + 1, 2 * ((sw >> 3) & 7) + 1}; /* values 0..15, 16..31 */
                int8_t v[32], sd[32]; /* the grid values; the deltas' signs */
                for (int l = 0; l < 4; l++) {
                    const int nib = x[b].qh[2 * ib + l / 2] >> 4 * (l % 2);
                    row8(v + 8 * l, x[b].qs[4 * ib + l] | (nib & 7) << 8);
                    for (int j = 0; j < 8; j++) sd[8 * l + j] = nib & 8 ? -1 : 1;
                }
                for (int k = 0; k < 8; k++) {
                    lane[k] += ls[k / 4] * lane4(v, q + 32 * ib, k);
                    laned[k] += ls[k / 4] * lane4(sd, q + 32 * ib, k);
                }
            }
            const float d = realm_half_to_f32(iq1_m_scale(x[b].scales)) * a->d[realm_act_slot(t, b)];
            for (int k = 0; k < 8; k++) {
                acc[k] = fmaf(d, (float)lane[k], acc[k]);
                accd[k] = fmaf(d, (float)laned[k], accd[k]);
            }
        }
        y[t * ys] = fmaf(0.125f, realm_hsum8f(accd), realm_hsum8f(acc));
    }
}
