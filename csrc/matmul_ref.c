/* Scalar reference dot products: one weight row against ntok activation
 * rows.  The float steps are the ones matmul.h defines (llama.cpp's x86
 * kernels'), with fmaf for each fused multiply-add; the integer sums are
 * exact, so only which values go into which lane matters, and the AVX2
 * kernels repeat the same steps bit for bit.  The float weights' steps are
 * matmul_float.h's. */
#include "matmul.h"
#include "fp16.h"
#include "kernels.h"
#include "matmul_float.h"

#include <math.h>
#include <stdlib.h>

/* ---- 32-element formats against REALM_ACT_Q8 ----
 * Value j of a block: Q4/Q5 keep the low nibbles of qs[0..16) as values
 * 0..15 and the high nibbles as 16..31, with bit j of qh on top for Q5.
 * Q4_0/Q5_0/Q8_0 values are signed (minus 8 / 16); Q4_1/Q5_1 are not and add
 * a minimum m per block. */

static inline int value32(int type, const void *w, int64_t b, int j) {
    const int lo = j < 16;
    switch (type) {
    case REALM_TYPE_Q4_0: {
        const uint8_t q = ((const block_q4_0 *)w)[b].qs[j % 16];
        return (lo ? q & 15 : q >> 4) - 8;
    }
    case REALM_TYPE_Q4_1: {
        const uint8_t q = ((const block_q4_1 *)w)[b].qs[j % 16];
        return lo ? q & 15 : q >> 4;
    }
    case REALM_TYPE_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)w + b;
        const int q = lo ? x->qs[j % 16] & 15 : x->qs[j % 16] >> 4;
        return (q | (int)((realm_u32le(x->qh) >> j) & 1) << 4) - 16;
    }
    case REALM_TYPE_Q5_1: {
        const block_q5_1 *x = (const block_q5_1 *)w + b;
        const int q = lo ? x->qs[j % 16] & 15 : x->qs[j % 16] >> 4;
        return q | (int)((realm_u32le(x->qh) >> j) & 1) << 4;
    }
    case REALM_TYPE_Q8_0: return ((const block_q8_0 *)w)[b].qs[j];
    }
    abort(); /* not reached: only the kernels below call this, each with its own type */
}

/* Block scale d and minimum m (0 where the format has none). */
static inline void scales32(int type, const void *w, int64_t b, float *d, float *m) {
    realm_half hd, hm = 0;
    switch (type) {
    case REALM_TYPE_Q4_0: hd = ((const block_q4_0 *)w)[b].d; break;
    case REALM_TYPE_Q4_1: hd = ((const block_q4_1 *)w)[b].d; hm = ((const block_q4_1 *)w)[b].m; break;
    case REALM_TYPE_Q5_0: hd = ((const block_q5_0 *)w)[b].d; break;
    case REALM_TYPE_Q5_1: hd = ((const block_q5_1 *)w)[b].d; hm = ((const block_q5_1 *)w)[b].m; break;
    case REALM_TYPE_Q8_0: hd = ((const block_q8_0 *)w)[b].d; break;
    default: abort(); /* not reached: only the kernels below call this, each with its own type */
    }
    *d = realm_half_to_f32(hd);
    *m = realm_half_to_f32(hm);
}

/* Lane k (of 8) holds values 4k..4k+3 of every block:
 *     acc[k] = fma(dw * dx, lane sum, acc[k]);  summs = fma(m, s, summs)
 *     y = hsum8(acc) (+ summs for the formats with a minimum) */
static void dot32(int type, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const int with_min = type == REALM_TYPE_Q4_1 || type == REALM_TYPE_Q5_1;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, summs = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t slot = realm_act_slot(t, b);
            float dw, mw;
            scales32(type, w, b, &dw, &mw);
            const float d = dw * a->d[slot];
            for (int k = 0; k < 8; k++) {
                int32_t lane = 0;
                for (int j = 4 * k; j < 4 * k + 4; j++) lane += value32(type, w, b, j) * q[32 * b + j];
                acc[k] = fmaf(d, (float)lane, acc[k]);
            }
            if (with_min) summs = fmaf(mw, a->s[slot], summs);
        }
        y[t * ys] = with_min ? realm_hsum8f(acc) + summs : realm_hsum8f(acc);
    }
}

#define DOT32(NAME, TYPE)                                                                              \
    void NAME(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) { \
        dot32(TYPE, nb, w, a, ntok, y, ys);                                                            \
    }
DOT32(realm_q4_0_dot_ref, REALM_TYPE_Q4_0)
DOT32(realm_q4_1_dot_ref, REALM_TYPE_Q4_1)
DOT32(realm_q5_0_dot_ref, REALM_TYPE_Q5_0)
DOT32(realm_q5_1_dot_ref, REALM_TYPE_Q5_1)
DOT32(realm_q8_0_dot_ref, REALM_TYPE_Q8_0)

/* Q4_0 as llama.cpp multiplies a repacked matrix: whole-block sums,
 * acc = fma(isum, dw * dx, acc). */
void realm_q4_0_dot_whole_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int32_t isum = 0;
            for (int j = 0; j < 32; j++) isum += value32(REALM_TYPE_Q4_0, w, b, j) * q[32 * b + j];
            float dw, mw;
            scales32(REALM_TYPE_Q4_0, w, b, &dw, &mw);
            acc = fmaf((float)isum, dw * a->d[realm_act_slot(t, b)], acc);
        }
        y[t * ys] = acc;
    }
}

/* ---- K-quants against REALM_ACT_Q8_K (blocks of 256, sums per 16) ----
 * A block is 8 groups of 32 values; lane k (of 8) holds values 4k..4k+3 of
 * every group, each times its 16-value sub-block's scale (sub-block 2g or
 * 2g + 1 of group g: k < 4 or not).  Per block, in lanes,
 *     acc[k] = fma(dx * dw, lane sum, acc[k]),  y = hsum8(acc),
 * with the minimums folded in first as fma(-(dx * dmin), lane, acc[k]) from
 * the 16-value sums (Q2_K), or kept in 4 lanes (Q4_K: minimum times 32-value
 * sum, sub-blocks 2i, 2i + 1 in lane i) or one sum (Q5_K) of
 * fma(-(dx * dmin), imin, summs), y = hsum8(acc) + summs.  The "whole" kernels
 * (Q2_K, Q4_K) sum each block whole instead, as llama.cpp multiplies the
 * matrices it repacks:
 *     acc = fma(isum, dw * dx, acc),  accm = fma(imin, dmin * dx, accm),
 *     y = acc - accm */

/* Q2_K, Q3_K: value i of group g (32 values, g = 0..7) comes from byte
 * qs[32 * (g / 4) + i] at bit 2 * (g % 4). */
static inline int crumb(const uint8_t *qs, int idx) {
    const int g = idx / 32, i = idx % 32;
    return (qs[32 * (g / 4) + i] >> (2 * (g % 4))) & 3;
}

/* Lane k's value indices of group g: 32g + 4k .. +3; sub-block 2g + k / 4. */
#define FOR_LANE(g, k, i) for (int i = 32 * (g) + 4 * (k); i < 32 * (g) + 4 * (k) + 4; i++)

void realm_q2_K_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q2_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            const float dx = a->d[realm_act_slot(t, b)];
            const float d = dx * realm_half_to_f32(x[b].d), dmin = -(dx * realm_half_to_f32(x[b].dmin));
            for (int k = 0; k < 8; k++) {
                const int32_t m = (x[b].scales[2 * k] >> 4) * bs[2 * k] + (x[b].scales[2 * k + 1] >> 4) * bs[2 * k + 1];
                acc[k] = fmaf(dmin, (float)m, acc[k]);
            }
            for (int k = 0; k < 8; k++) {
                int32_t lane = 0;
                for (int g = 0; g < 8; g++) {
                    int32_t dot = 0;
                    FOR_LANE(g, k, i) dot += crumb(x[b].qs, i) * q[i];
                    lane += (x[b].scales[2 * g + k / 4] & 15) * dot;
                }
                acc[k] = fmaf(d, (float)lane, acc[k]);
            }
        }
        y[t * ys] = realm_hsum8f(acc);
    }
}

void realm_q2_K_dot_whole_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q2_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc = 0.0f, accm = 0.0f;
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            int32_t isum = 0, imin = 0;
            for (int j = 0; j < 16; j++) {
                int32_t dot = 0;
                for (int i = 16 * j; i < 16 * j + 16; i++) dot += crumb(x[b].qs, i) * q[i];
                isum += (x[b].scales[j] & 15) * dot;
                imin += (x[b].scales[j] >> 4) * bs[j];
            }
            const float dx = a->d[realm_act_slot(t, b)];
            acc = fmaf((float)isum, realm_half_to_f32(x[b].d) * dx, acc);
            accm = fmaf((float)imin, realm_half_to_f32(x[b].dmin) * dx, accm);
        }
        y[t * ys] = acc - accm;
    }
}

void realm_q3_K_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q3_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K) {
            int8_t sc[16];
            realm_q3_K_scales(x[b].scales, sc);
            const float d = a->d[realm_act_slot(t, b)] * realm_half_to_f32(x[b].d);
            for (int k = 0; k < 8; k++) {
                int32_t lane = 0;
                for (int g = 0; g < 8; g++) {
                    int32_t dot = 0;
                    FOR_LANE(g, k, i) {
                        const int high = (x[b].hmask[i % 32] >> (i / 32)) & 1;
                        dot += (crumb(x[b].qs, i) - (high ? 0 : 4)) * q[i];
                    }
                    lane += sc[2 * g + k / 4] * dot;
                }
                acc[k] = fmaf(d, (float)lane, acc[k]);
            }
        }
        y[t * ys] = realm_hsum8f(acc);
    }
}

/* Q4_K, Q5_K: sub-block j (32 values) is the low (j even) or high (j odd)
 * nibbles of qs[32 * (j / 2) .. + 32], with bit j of qh[0..32) on top for Q5_K. */
static inline int k45_value(const uint8_t *qs, const uint8_t *qh, int idx) {
    const int j = idx / 32, i = idx % 32;
    const int v = (qs[32 * (j / 2) + i] >> (4 * (j & 1))) & 15;
    return qh ? v | ((qh[i] >> j) & 1) << 4 : v;
}

void realm_q4_K_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q4_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, accm[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            const float dx = a->d[realm_act_slot(t, b)];
            const float d = dx * realm_half_to_f32(x[b].d), dmin = -(dx * realm_half_to_f32(x[b].dmin));
            uint8_t sc[8], m[8];
            for (int j = 0; j < 8; j++) realm_k4_scale_min(j, x[b].scales, &sc[j], &m[j]);
            for (int i = 0; i < 4; i++) {
                const int32_t lane = m[2 * i] * (bs[4 * i] + bs[4 * i + 1]) + m[2 * i + 1] * (bs[4 * i + 2] + bs[4 * i + 3]);
                accm[i] = fmaf(dmin, (float)lane, accm[i]);
            }
            for (int k = 0; k < 8; k++) {
                int32_t lane = 0;
                for (int g = 0; g < 8; g++) {
                    int32_t dot = 0;
                    FOR_LANE(g, k, i) dot += k45_value(x[b].qs, NULL, i) * q[i];
                    lane += sc[g] * dot;
                }
                acc[k] = fmaf(d, (float)lane, acc[k]);
            }
        }
        y[t * ys] = realm_hsum8f(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
    }
}

void realm_q4_K_dot_whole_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q4_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc = 0.0f, accm = 0.0f;
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            int32_t isum = 0, imin = 0;
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                realm_k4_scale_min(j, x[b].scales, &sc, &m);
                int32_t dot = 0;
                for (int i = 32 * j; i < 32 * j + 32; i++) dot += k45_value(x[b].qs, NULL, i) * q[i];
                isum += sc * dot;
                imin += m * (bs[2 * j] + bs[2 * j + 1]);
            }
            const float dx = a->d[realm_act_slot(t, b)];
            acc = fmaf((float)isum, realm_half_to_f32(x[b].d) * dx, acc);
            accm = fmaf((float)imin, realm_half_to_f32(x[b].dmin) * dx, accm);
        }
        y[t * ys] = acc - accm;
    }
}

void realm_q5_K_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q5_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, summs = 0.0f;
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            const float dx = a->d[realm_act_slot(t, b)];
            const float d = dx * realm_half_to_f32(x[b].d), dmin = -(dx * realm_half_to_f32(x[b].dmin));
            uint8_t sc[8], m[8];
            int32_t imin = 0;
            for (int j = 0; j < 8; j++) {
                realm_k4_scale_min(j, x[b].scales, &sc[j], &m[j]);
                imin += m[j] * (bs[2 * j] + bs[2 * j + 1]);
            }
            summs = fmaf(dmin, (float)imin, summs);
            for (int k = 0; k < 8; k++) {
                int32_t lane = 0;
                for (int g = 0; g < 8; g++) {
                    int32_t dot = 0;
                    FOR_LANE(g, k, i) dot += k45_value(x[b].qs, x[b].qh, i) * q[i];
                    lane += sc[g] * dot;
                }
                acc[k] = fmaf(d, (float)lane, acc[k]);
            }
        }
        y[t * ys] = realm_hsum8f(acc) + summs;
    }
}

/* Q6_K: value i = 128n + 32k + l (l < 32) has its low 4 bits in
 * ql[64n + l + 32 (k & 1)] (high nibble when k >= 2), its top 2 bits at bit
 * 2k of qh[32n + l]; sub-block j = i / 16 has scale scales[j].  The -32
 * offset goes into lane k as -32 (sc[2k] bsum[2k] + sc[2k+1] bsum[2k+1]). */
static inline int q6_value(const block_q6_K *x, int i) {
    const int n = i / 128, k = (i / 32) % 4, l = i % 32;
    const int lo = (x->ql[64 * n + l + 32 * (k & 1)] >> (4 * (k / 2))) & 15;
    const int hi = (x->qh[32 * n + l] >> (2 * k)) & 3;
    return lo | hi << 4;
}

void realm_q6_K_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q6_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            const float d = a->d[realm_act_slot(t, b)] * realm_half_to_f32(x[b].d);
            const int8_t *sc = x[b].scales;
            for (int k = 0; k < 8; k++) {
                int32_t lane = -32 * (sc[2 * k] * bs[2 * k] + sc[2 * k + 1] * bs[2 * k + 1]);
                for (int g = 0; g < 8; g++) {
                    int32_t dot = 0;
                    FOR_LANE(g, k, i) dot += q6_value(&x[b], i) * q[i];
                    lane += sc[2 * g + k / 4] * dot;
                }
                acc[k] = fmaf(d, (float)lane, acc[k]);
            }
        }
        y[t * ys] = realm_hsum8f(acc);
    }
}

/* ---- float weights: llama.cpp's ggml_vec_dot_f32 / _f16 / _bf16 (matmul_float.h) ---- */

/* The first np (a multiple of 64) elements in four sums of 16 lanes: element
 * 64 i + 16 j + l into sum j, lane l, fused (F16's products are exact in f32, so
 * a plain add rounds alike); then (s0 + s2) + (s1 + s3) lane-wise, reduced. */
static float lanes16(const void *w, int f16, const float *x, int64_t np) {
    float acc[4][16] = {{0}};
    for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 16; l++) {
                const int64_t k = i + 16 * j + l;
                if (f16) {
                    const float p = realm_half_to_f32(realm_ld_u16(w, k)) * realm_ld_f32(x, k);
                    acc[j][l] = acc[j][l] + p;
                } else {
                    acc[j][l] = fmaf(realm_ld_f32(w, k), realm_ld_f32(x, k), acc[j][l]);
                }
            }
    float v[16];
    for (int l = 0; l < 16; l++) v[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    return realm_hsum16f(v);
}

void realm_f32_dot_ref(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    for (int t = 0; t < ntok; t++) {
        const float *x = a->xf + t * a->n_in;
        y[t * ys] = realm_f32_tail(lanes16(w, 0, x, np), w, x, np, n);
    }
}

void realm_f16_dot_ref(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    for (int t = 0; t < ntok; t++) {
        const float *x = a->xf + t * a->n_in; /* rounded to f16 (REALM_ACT_F16) */
        y[t * ys] = realm_f16_tail(lanes16(w, 1, x, np), w, x, np, n);
    }
}

/* vdpbf16ps, 16 lanes: lane j takes pair (2j, 2j + 1) of the 32 values, the odd
 * product first (realm_dpbf16_step). */
static void dpbf16(float *acc, const char *w, const uint16_t *x) {
    for (int j = 0; j < 16; j++)
        acc[j] = realm_dpbf16_step(realm_dpbf16_step(acc[j], realm_ld_u16(w, 2 * j + 1), x[2 * j + 1]),
                                   realm_ld_u16(w, 2 * j), x[2 * j]);
}

void realm_bf16_dot_ref(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const char *wh = w; /* 2 bytes a value */
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    for (int t = 0; t < ntok; t++) {
        const uint16_t *x = a->xh + t * a->n_in; /* rounded to bf16 (REALM_ACT_BF16) */
        float c1[16] = {0}, c2[16] = {0};
        for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP) {
            dpbf16(c1, wh + 2 * i, x + i);
            dpbf16(c2, wh + 2 * (i + 32), x + i + 32);
        }
        y[t * ys] = realm_bf16_tail(realm_hsum16f(c1), realm_hsum16f(c2), wh, x, np, n);
    }
}
