/* Scalar reference dot products of IQ2_XXS, IQ2_XS and IQ2_S weights against Q8_K
 * activations (matmul.h's float steps, with fmaf for each fused multiply-add;
 * matmul_iq2_avx2.c repeats them bit for bit).
 *
 * A 256-value block is 8 sub-blocks of 32 = 32 groups of 8 values; a group is a row of
 * its format's grid (8 unsigned bytes) with a sign per value, and each 16 values have a
 * 4-bit scale ls, weighted 2 ls + 1 (IQ2_XXS: one ls per 32 values).  llama.cpp's AVX2
 * kernels sum, per block, the exact integer lane k (of 8) = the sum over the sub-blocks
 * of (2 ls + 1) * (values 4k..4k+3 of the sub-block times the activations), then
 * acc[k] = fma(dw * dx, lane k, acc[k]) block by block, and y = 0.125f * hsum8(acc).
 * Here each block is decoded once into signed int8 values and the 16 weights 2 ls + 1,
 * then multiplied into every token of the group. */
#include "kernels_iq_mm.h"

#include "fp16.h"
#include "iq_tables.h"
#include "kernels_iq.h"

#include <math.h>

/* v[0..7] = the bytes of grid row `row`, negated where bit j of `signs` is set. */
static inline void grid8(int8_t *v, uint64_t row, unsigned signs) {
    for (int j = 0; j < 8; j++) {
        const int g = (uint8_t)(row >> 8 * j);
        v[j] = (int8_t)((signs >> j) & 1 ? -g : g);
    }
}

/* A decoded block: its 256 signed values and the weight 2 ls + 1 of each 16 values. */
typedef struct {
    int8_t v[QK_K];
    int32_t sc[QK_K / 16];
} iq2_decoded;

static void decode_iq2_xxs(const block_iq2_xxs *x, iq2_decoded *o) {
    const uint8_t *q = (const uint8_t *)x->qs; /* per 32: 4 index bytes, then a u32 of signs and scale */
    for (int ib = 0; ib < QK_K / 32; ib++, q += 8) {
        const uint32_t idx = realm_u32le(q), aux = realm_u32le(q + 4);
        o->sc[2 * ib] = o->sc[2 * ib + 1] = 2 * (int32_t)(aux >> 28) + 1;
        for (int l = 0; l < 4; l++)
            grid8(o->v + 32 * ib + 8 * l, realm_iq2xxs_grid[(idx >> 8 * l) & 0xff], realm_ksigns_iq2xs[(aux >> 7 * l) & 127]);
    }
}

static void decode_iq2_xs(const block_iq2_xs *x, iq2_decoded *o) {
    for (int ib = 0; ib < QK_K / 32; ib++) {
        o->sc[2 * ib] = 2 * (x->scales[ib] & 15) + 1;
        o->sc[2 * ib + 1] = 2 * (x->scales[ib] >> 4) + 1;
        for (int l = 0; l < 4; l++) {
            const unsigned q = x->qs[4 * ib + l];
            grid8(o->v + 32 * ib + 8 * l, realm_iq2xs_grid[q & 511], realm_ksigns_iq2xs[q >> 9]);
        }
    }
}

static void decode_iq2_s(const block_iq2_s *x, iq2_decoded *o) {
    const uint8_t *signs = x->qs + QK_K / 8;
    for (int ib = 0; ib < QK_K / 32; ib++) {
        o->sc[2 * ib] = 2 * (x->scales[ib] & 15) + 1;
        o->sc[2 * ib + 1] = 2 * (x->scales[ib] >> 4) + 1;
        for (int l = 0; l < 4; l++)
            grid8(o->v + 32 * ib + 8 * l, realm_iq2s_grid[realm_iq2_s_index(x->qs[4 * ib + l], x->qh[ib], l)],
                  signs[4 * ib + l]);
    }
}

/* The 8 exact integer lanes of a decoded block against 256 activations. */
static void lanes(const iq2_decoded *o, const int8_t *q, int32_t lane[8]) {
    for (int k = 0; k < 8; k++) lane[k] = 0;
    for (int ib = 0; ib < QK_K / 32; ib++)
        for (int k = 0; k < 8; k++) {
            int32_t s = 0;
            for (int j = 32 * ib + 4 * k; j < 32 * ib + 4 * k + 4; j++) s += o->v[j] * q[j];
            lane[k] += o->sc[2 * ib + k / 4] * s;
        }
}

enum { IQ2_XXS, IQ2_XS, IQ2_S };

static void dot_iq2(const int fmt, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    float acc[REALM_TOK_GROUP][8] = {{0.0f}};
    iq2_decoded o;
    for (int64_t b = 0; b < nb; b++) {
        realm_half d;
        if (fmt == IQ2_XXS) {
            const block_iq2_xxs *x = (const block_iq2_xxs *)w + b;
            decode_iq2_xxs(x, &o);
            d = x->d;
        } else if (fmt == IQ2_XS) {
            const block_iq2_xs *x = (const block_iq2_xs *)w + b;
            decode_iq2_xs(x, &o);
            d = x->d;
        } else {
            const block_iq2_s *x = (const block_iq2_s *)w + b;
            decode_iq2_s(x, &o);
            d = x->d;
        }
        const float dw = realm_half_to_f32(d);
        for (int t = 0; t < ntok; t++) {
            int32_t lane[8];
            lanes(&o, a->qs + t * a->n_in + QK_K * b, lane);
            const float dt = dw * a->d[realm_act_slot(t, b)];
            for (int k = 0; k < 8; k++) acc[t][k] = fmaf(dt, (float)lane[k], acc[t][k]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = 0.125f * realm_hsum8f(acc[t]);
}

void realm_iq2_xxs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_iq2(IQ2_XXS, nb, w, a, ntok, y, ys);
}

void realm_iq2_xs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_iq2(IQ2_XS, nb, w, a, ntok, y, ys);
}

void realm_iq2_s_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_iq2(IQ2_S, nb, w, a, ntok, y, ys);
}
