/* Scalar reference dot products of IQ3_XXS and IQ3_S weights against Q8_K activations
 * (matmul.h's float steps, fmaf for each fused multiply-add; matmul_iq3_avx2.c repeats
 * them bit for bit).  A 256-value block is 8 sub-blocks of 32, each 8 rows of a 4-byte
 * grid (unsigned values), a sign bit per value and a 4-bit scale ls, weight 2 ls + 1.
 * Lane k (of 8) of a sub-block sums its values 4k..4k+3 times the activations; a block's
 * lane k sums (2 ls_i + 1) * lane k of sub-block i over i, exactly, then
 *   acc_k = fma(dw * dx, lane_k, acc_k),  y = hsum8(acc)  (IQ3_XXS: y = 0.25f * hsum8(acc))
 * as llama.cpp's AVX2 ggml_vec_dot_iq3_xxs_q8_K / _iq3_s_q8_K. */
#include "kernels_iq_mm.h"

#include "fp16.h"
#include "iq_tables.h"
#include "kernels_iq.h"

#include <math.h>

/* lane[k] += ls * (lane k of the 32 values w[j] * q[j]) */
static inline void add_lanes32(int32_t *lane, const int8_t *w, const int8_t *q, int ls) {
    for (int k = 0; k < 8; k++) {
        int32_t s = 0;
        for (int j = 4 * k; j < 4 * k + 4; j++) s += w[j] * q[j];
        lane[k] += ls * s;
    }
}

/* w[0..7] = the 8 bytes of a grid row pair, negated where bit j of signs is set. */
static inline void grid8(int8_t *w, uint64_t row, unsigned signs) {
    for (int j = 0; j < 8; j++) {
        const int g = (int)((row >> 8 * j) & 0xff);
        w[j] = (int8_t)((signs >> j) & 1 ? -g : g);
    }
}

/* Sub-block ib of an IQ3_XXS block as 32 signed values; returns 2 ls + 1. */
static inline int iq3_xxs_sub(const block_iq3_xxs *x, int ib, int8_t *w) {
    const uint8_t *qs = x->qs + 8 * ib;
    const uint32_t sc = realm_u32le(x->qs + QK_K / 4 + 4 * ib);
    for (int l = 0; l < 4; l++)
        grid8(w + 8 * l, realm_grid4x2(realm_iq3xxs_grid, qs[2 * l], qs[2 * l + 1]), realm_ksigns_iq2xs[(sc >> 7 * l) & 127]);
    return 2 * (int)(sc >> 28) + 1;
}

/* Sub-block ib of an IQ3_S block as 32 signed values; returns 2 ls + 1. */
static inline int iq3_s_sub(const block_iq3_s *x, int ib, int8_t *w) {
    const uint8_t *qs = x->qs + 8 * ib;
    const int qh = x->qh[ib];
    for (int l = 0; l < 4; l++) {
        const int a = realm_iq3_s_index(qs, qh, 2 * l), b = realm_iq3_s_index(qs, qh, 2 * l + 1);
        grid8(w + 8 * l, realm_grid4x2(realm_iq3s_grid, a, b), x->signs[4 * ib + l]);
    }
    return 2 * ((x->scales[ib / 2] >> 4 * (ib % 2)) & 15) + 1;
}

static void dot_iq3(int xxs, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K) {
            int32_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            realm_half dh;
            for (int ib = 0; ib < QK_K / 32; ib++) {
                int8_t v[32];
                int ls;
                if (xxs) {
                    const block_iq3_xxs *x = (const block_iq3_xxs *)w + b;
                    ls = iq3_xxs_sub(x, ib, v);
                    dh = x->d;
                } else {
                    const block_iq3_s *x = (const block_iq3_s *)w + b;
                    ls = iq3_s_sub(x, ib, v);
                    dh = x->d;
                }
                add_lanes32(lane, v, q + 32 * ib, ls);
            }
            const float d = realm_half_to_f32(dh) * a->d[realm_act_slot(t, b)];
            for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lane[k], acc[k]);
        }
        const float s = realm_hsum8f(acc);
        y[t * ys] = xxs ? 0.25f * s : s;
    }
}

void realm_iq3_xxs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_iq3(1, nb, w, a, ntok, y, ys);
}

void realm_iq3_s_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_iq3(0, nb, w, a, ntok, y, ys);
}
