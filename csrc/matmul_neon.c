/* NEON dot kernels for aarch64: the steps of matmul_ref.c's kernels, bit for
 * bit.  A lane of the reference is the exact int32 sum of 4 products (values
 * 4k..4k+3 of a block), here made by widening multiplies and pairwise adds;
 * each fused multiply-add of the reference is one vfmaq_f32 (a + b * c,
 * rounded once, as fmaf), and the lanes are summed as realm_hsum8f sums them.
 * Weight blocks are decoded once for every token of the group. */
#include "kernels.h"

#if defined(__aarch64__)

#include "dequant.h"
#include "fp16.h"
#include "iq_tables.h"
#include "kernels_iq_mm.h"
#include "matmul.h"
#include "matmul_float.h"
#include <arm_neon.h>
#include <math.h>

/* Lanes k = 0..3 of 16 values: the sums of the products of values 4k..4k+3
 * (|product| <= 128 * 128 fits int16; the pairwise adds widen). */
static inline int32x4_t lanes16(int8x16_t v, int8x16_t x) {
    const int16x8_t lo = vmull_s8(vget_low_s8(v), vget_low_s8(x));
    const int16x8_t hi = vmull_high_s8(v, x);
    return vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
}

/* The whole sum of a 32-value block's products (v[0], v[1] against q[0..32)). */
static inline int32_t isum32(const int8x16_t v[2], const int8_t *q) {
    return vaddvq_s32(vaddq_s32(lanes16(v[0], vld1q_s8(q)), lanes16(v[1], vld1q_s8(q + 16))));
}

/* acc + lanes * d, rounded once (the reference's fmaf(d, lane, acc) in each lane). */
static inline float32x4_t fma_int(float32x4_t acc, int32x4_t lanes, float d) {
    return vfmaq_f32(acc, vcvtq_f32_s32(lanes), vdupq_n_f32(d));
}

/* 16 bytes: `value` where bit g of the byte of h is set. */
static inline uint8x16_t flag(uint8x16_t h, int g, uint8_t value) {
    return vandq_u8(vtstq_u8(h, vdupq_n_u8((uint8_t)(1u << g))), vdupq_n_u8(value));
}

/* 16 bytes, byte i = 16 where bit i of the two bytes h[0], h[1] is set. */
static inline int8x16_t high_bits16(const uint8_t *h) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bytes = vcombine_u8(vdup_n_u8(h[0]), vdup_n_u8(h[1]));
    return vreinterpretq_s8_u8(vandq_u8(vtstq_u8(bytes, vld1q_u8(bit)), vdupq_n_u8(16)));
}

/* Block b's 32 values as int8: v[0] values 0..15, v[1] values 16..31 (see matmul_ref.c's
 * value32), its scale d and minimum m (0 where the format has none). */
static inline void decode32(int type, const void *w, int64_t b, int8x16_t v[2], float *d, float *m) {
    *m = 0.0f;
    if (type == REALM_TYPE_Q8_0) {
        const block_q8_0 *x = (const block_q8_0 *)w + b;
        v[0] = vld1q_s8(x->qs);
        v[1] = vld1q_s8(x->qs + 16);
        *d = realm_half_to_f32(x->d);
        return;
    }
    const uint8_t *qs, *qh = NULL;
    realm_half hd, hm = 0;
    switch (type) {
    case REALM_TYPE_Q4_0: qs = ((const block_q4_0 *)w)[b].qs, hd = ((const block_q4_0 *)w)[b].d; break;
    case REALM_TYPE_Q4_1: {
        const block_q4_1 *x = (const block_q4_1 *)w + b;
        qs = x->qs, hd = x->d, hm = x->m;
        break;
    }
    case REALM_TYPE_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)w + b;
        qs = x->qs, qh = x->qh, hd = x->d;
        break;
    }
    default: { /* REALM_TYPE_Q5_1: the kernels below pass only these five */
        const block_q5_1 *x = (const block_q5_1 *)w + b;
        qs = x->qs, qh = x->qh, hd = x->d, hm = x->m;
        break;
    }
    }
    const uint8x16_t q = vld1q_u8(qs);
    v[0] = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15)));
    v[1] = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
    if (qh) {
        v[0] = vorrq_s8(v[0], high_bits16(qh));
        v[1] = vorrq_s8(v[1], high_bits16(qh + 2));
    }
    if (type == REALM_TYPE_Q4_0 || type == REALM_TYPE_Q5_0) {
        const int8x16_t off = vdupq_n_s8(type == REALM_TYPE_Q4_0 ? 8 : 16);
        v[0] = vsubq_s8(v[0], off);
        v[1] = vsubq_s8(v[1], off);
    }
    *d = realm_half_to_f32(hd);
    *m = realm_half_to_f32(hm);
}

static inline float hsum8(float32x4_t lo, float32x4_t hi) {
    float a[8];
    vst1q_f32(a, lo);
    vst1q_f32(a + 4, hi);
    return realm_hsum8f(a);
}

/* matmul_ref.c's dot32: per block acc[k] = fma(dw * dx, lane k, acc[k]), with a minimum
 * summs = fma(m, s, summs); y = hsum8(acc) (+ summs). */
static inline void dot32(int type, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y,
                         int64_t ys) {
    const int with_min = type == REALM_TYPE_Q4_1 || type == REALM_TYPE_Q5_1;
    float32x4_t lo[REALM_TOK_GROUP], hi[REALM_TOK_GROUP];
    float summs[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) lo[t] = hi[t] = vdupq_n_f32(0.0f), summs[t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t v[2];
        float dw, mw;
        decode32(type, w, b, v, &dw, &mw);
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = a->qs + t * a->n_in + 32 * b;
            const int64_t slot = realm_act_slot(t, b);
            const float d = dw * a->d[slot];
            lo[t] = fma_int(lo[t], lanes16(v[0], vld1q_s8(q)), d);
            hi[t] = fma_int(hi[t], lanes16(v[1], vld1q_s8(q + 16)), d);
            if (with_min) summs[t] = fmaf(mw, a->s[slot], summs[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = with_min ? hsum8(lo[t], hi[t]) + summs[t] : hsum8(lo[t], hi[t]);
}

#define DOT32(NAME, TYPE)                                                                              \
    void NAME(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) { \
        dot32(TYPE, nb, w, a, ntok, y, ys);                                                            \
    }
DOT32(realm_q4_0_dot_neon, REALM_TYPE_Q4_0)
DOT32(realm_q4_1_dot_neon, REALM_TYPE_Q4_1)
DOT32(realm_q5_0_dot_neon, REALM_TYPE_Q5_0)
DOT32(realm_q5_1_dot_neon, REALM_TYPE_Q5_1)
DOT32(realm_q8_0_dot_neon, REALM_TYPE_Q8_0)

/* ---- the code-book formats (matmul_iq_ref.c): 4-bit indices, value j < 16 the low nibble
 * of qs[j], value j + 16 its high nibble ---- */

static inline void looked_up(const uint8_t *qs, int8x16_t book, int8x16_t v[2]) {
    const uint8x16_t q = vld1q_u8(qs);
    v[0] = vqtbl1q_s8(book, vandq_u8(q, vdupq_n_u8(15)));
    v[1] = vqtbl1q_s8(book, vshrq_n_u8(q, 4));
}

/* Block b of IQ4_NL (mxfp4 0) or MXFP4: its values and scale. */
static inline void lut32(int mxfp4, const void *w, int64_t b, int8x16_t v[2], float *d) {
    if (mxfp4) {
        const block_mxfp4 *x = (const block_mxfp4 *)w + b;
        looked_up(x->qs, vld1q_s8(realm_kvalues_mxfp4), v);
        *d = realm_e8m0_to_f32_half(x->e);
        return;
    }
    const block_iq4_nl *x = (const block_iq4_nl *)w + b;
    looked_up(x->qs, vld1q_s8(realm_kvalues_iq4nl), v);
    *d = realm_half_to_f32(x->d);
}

/* A 32-value block of Q4_0, IQ4_NL or MXFP4: its values and scale. */
static inline void values32(int type, const void *w, int64_t b, int8x16_t v[2], float *d) {
    float m;
    if (type == REALM_TYPE_Q4_0) decode32(type, w, b, v, d, &m);
    else lut32(type == REALM_TYPE_MXFP4, w, b, v, d);
}

/* Whole-block sums (a repacked matrix of Q4_0, IQ4_NL or MXFP4): acc = fma(isum, dw * dx, acc). */
static inline void dot32_whole(int type, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y,
                               int64_t ys) {
    float acc[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) acc[t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t v[2];
        float dw;
        values32(type, w, b, v, &dw);
        for (int t = 0; t < ntok; t++) {
            const int32_t isum = isum32(v, a->qs + t * a->n_in + 32 * b);
            acc[t] = fmaf((float)isum, dw * a->d[realm_act_slot(t, b)], acc[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = acc[t];
}

void realm_q4_0_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot32_whole(REALM_TYPE_Q4_0, nb, w, a, ntok, y, ys);
}

/* ---- K-quants against Q8_K activations (matmul_ref.c: lane k of group g holds values
 * 32g + 4k .. +3, times the scale of its 16 values) ---- */

/* A block's 256 values as int8, v[2g] values 32g..32g+15 of group g and v[2g + 1] the
 * next 16, with the scale of each 16 values, s16[j] (sub-block j). */
typedef struct {
    int8x16_t v[16];
    int32_t s16[16];
} kblock;

/* bytes >> shift (a shift known only at run time) */
static inline uint8x16_t shr_u8(uint8x16_t x, int shift) { return vshlq_u8(x, vdupq_n_s8((int8_t)-shift)); }

/* Q2_K (2-bit values of qs, see matmul_ref.c's crumb) and Q3_K (minus 4 unless the hmask bit). */
static inline void crumbs(const uint8_t *qs, const uint8_t *hmask, kblock *k) {
    for (int g = 0; g < 8; g++)
        for (int h = 0; h < 2; h++) {
            uint8x16_t c = vandq_u8(shr_u8(vld1q_u8(qs + 32 * (g / 4) + 16 * h), 2 * (g % 4)), vdupq_n_u8(3));
            int8x16_t v = vreinterpretq_s8_u8(c);
            if (hmask) {
                const uint8x16_t high = flag(vld1q_u8(hmask + 16 * h), g, 4);
                v = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(c, high)), vdupq_n_s8(4));
            }
            k->v[2 * g + h] = v;
        }
}

/* Q4_K, Q5_K: group g is the low (g even) or high nibbles of qs[32 (g / 2) ..], with bit g of
 * qh[0..32) on top for Q5_K; both 16-value halves take the group's scale sc[g]. */
static inline void nibbles(const uint8_t *qs, const uint8_t *qh, const uint8_t sc[8], kblock *k) {
    for (int g = 0; g < 8; g++)
        for (int h = 0; h < 2; h++) {
            const uint8x16_t b = vld1q_u8(qs + 32 * (g / 2) + 16 * h);
            uint8x16_t v = g & 1 ? vshrq_n_u8(b, 4) : vandq_u8(b, vdupq_n_u8(15));
            if (qh) v = vorrq_u8(v, flag(vld1q_u8(qh + 16 * h), g, 16));
            k->v[2 * g + h] = vreinterpretq_s8_u8(v);
            k->s16[2 * g + h] = sc[g];
        }
}

/* Q6_K: group g = 4n + k: low 4 bits from ql[64n + 32 (k & 1) ..] (high nibble for k >= 2),
 * top 2 bits at bit 2k of qh[32n ..] (see matmul_ref.c's q6_value). */
static inline void sixes(const block_q6_K *x, kblock *k) {
    for (int g = 0; g < 8; g++) {
        const int n = g / 4, kk = g % 4;
        for (int h = 0; h < 2; h++) {
            const uint8x16_t lo = vandq_u8(shr_u8(vld1q_u8(x->ql + 64 * n + 32 * (kk & 1) + 16 * h), 4 * (kk / 2)),
                                           vdupq_n_u8(15));
            const uint8x16_t hi = vandq_u8(shr_u8(vld1q_u8(x->qh + 32 * n + 16 * h), 2 * kk), vdupq_n_u8(3));
            k->v[2 * g + h] = vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 4)));
        }
    }
    for (int j = 0; j < 16; j++) k->s16[j] = x->scales[j];
}

/* One token's lanes 0..3 and 4..7 (exact: integer sums, each times its scale). */
static inline void k_lanes(const kblock *k, const int8_t *q, int32x4_t *lo, int32x4_t *hi) {
    int32x4_t l = vdupq_n_s32(0), h = vdupq_n_s32(0);
    for (int g = 0; g < 8; g++) {
        l = vmlaq_n_s32(l, lanes16(k->v[2 * g], vld1q_s8(q + 32 * g)), k->s16[2 * g]);
        h = vmlaq_n_s32(h, lanes16(k->v[2 * g + 1], vld1q_s8(q + 32 * g + 16)), k->s16[2 * g + 1]);
    }
    *lo = l;
    *hi = h;
}

/* A block's step of one token in lanes: acc[k] = fma(d, lane k, acc[k]). */
static inline void k_step(const kblock *k, const int8_t *q, float d, float32x4_t *lo, float32x4_t *hi) {
    int32x4_t l, h;
    k_lanes(k, q, &l, &h);
    *lo = fma_int(*lo, l, d);
    *hi = fma_int(*hi, h, d);
}

/* A block's step of one token in whole sums (a repacked matrix): acc = fma(isum, dw * dx, acc),
 * accm = fma(imin, dmin * dx, accm); y = acc - accm at the end. */
static inline void k_whole_step(const kblock *k, const int8_t *q, int32_t imin, float dw, float dmin, float dx,
                                float *acc, float *accm) {
    int32x4_t l, h;
    k_lanes(k, q, &l, &h);
    *acc = fmaf((float)vaddvq_s32(vaddq_s32(l, h)), dw * dx, *acc);
    *accm = fmaf((float)imin, dmin * dx, *accm);
}

/* Token t's activations of block b: its values and its sums of 16. */
static inline const int8_t *k_values(const realm_act_group *a, int t, int64_t b) {
    return a->qs + t * a->n_in + QK_K * b;
}
static inline const int16_t *k_bsums(const realm_act_group *a, int t, int64_t b) {
    return a->bsums + t * (a->n_in / 16) + QK_K / 16 * b;
}

void realm_q2_K_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q2_K *x = w;
    float32x4_t lo[REALM_TOK_GROUP], hi[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) lo[t] = hi[t] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        crumbs(x[b].qs, NULL, &k);
        for (int j = 0; j < 16; j++) k.s16[j] = x[b].scales[j] & 15;
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = k_values(a, t, b);
            const int16_t *bs = k_bsums(a, t, b);
            const float dx = a->d[realm_act_slot(t, b)];
            const float d = dx * realm_half_to_f32(x[b].d), dmin = -(dx * realm_half_to_f32(x[b].dmin));
            int32_t m[8];
            for (int j = 0; j < 8; j++)
                m[j] = (x[b].scales[2 * j] >> 4) * bs[2 * j] + (x[b].scales[2 * j + 1] >> 4) * bs[2 * j + 1];
            lo[t] = fma_int(lo[t], vld1q_s32(m), dmin);
            hi[t] = fma_int(hi[t], vld1q_s32(m + 4), dmin);
            k_step(&k, q, d, &lo[t], &hi[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = hsum8(lo[t], hi[t]);
}

void realm_q2_K_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q2_K *x = w;
    float acc[REALM_TOK_GROUP], accm[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) acc[t] = accm[t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        crumbs(x[b].qs, NULL, &k);
        for (int j = 0; j < 16; j++) k.s16[j] = x[b].scales[j] & 15;
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = k_values(a, t, b);
            const int16_t *bs = k_bsums(a, t, b);
            int32_t imin = 0;
            for (int j = 0; j < 16; j++) imin += (x[b].scales[j] >> 4) * bs[j];
            k_whole_step(&k, q, imin, realm_half_to_f32(x[b].d), realm_half_to_f32(x[b].dmin),
                         a->d[realm_act_slot(t, b)], &acc[t], &accm[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = acc[t] - accm[t];
}

void realm_q3_K_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q3_K *x = w;
    float32x4_t lo[REALM_TOK_GROUP], hi[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) lo[t] = hi[t] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        crumbs(x[b].qs, x[b].hmask, &k);
        int8_t sc[16];
        realm_q3_K_scales(x[b].scales, sc);
        for (int j = 0; j < 16; j++) k.s16[j] = sc[j];
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = k_values(a, t, b);
            const float d = a->d[realm_act_slot(t, b)] * realm_half_to_f32(x[b].d);
            k_step(&k, q, d, &lo[t], &hi[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = hsum8(lo[t], hi[t]);
}

/* Q4_K's and Q5_K's scales and minimums. */
static inline void k4_scales(const uint8_t *scales, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 8; j++) realm_k4_scale_min(j, scales, &sc[j], &m[j]);
}

void realm_q4_K_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q4_K *x = w;
    float32x4_t lo[REALM_TOK_GROUP], hi[REALM_TOK_GROUP], mins[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) lo[t] = hi[t] = mins[t] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        uint8_t sc[8], m[8];
        k4_scales(x[b].scales, sc, m);
        nibbles(x[b].qs, NULL, sc, &k);
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = k_values(a, t, b);
            const int16_t *bs = k_bsums(a, t, b);
            const float dx = a->d[realm_act_slot(t, b)];
            const float d = dx * realm_half_to_f32(x[b].d), dmin = -(dx * realm_half_to_f32(x[b].dmin));
            int32_t lm[4];
            for (int i = 0; i < 4; i++)
                lm[i] = m[2 * i] * (bs[4 * i] + bs[4 * i + 1]) + m[2 * i + 1] * (bs[4 * i + 2] + bs[4 * i + 3]);
            mins[t] = fma_int(mins[t], vld1q_s32(lm), dmin);
            k_step(&k, q, d, &lo[t], &hi[t]);
        }
    }
    for (int t = 0; t < ntok; t++) {
        float am[4];
        vst1q_f32(am, mins[t]);
        y[t * ys] = hsum8(lo[t], hi[t]) + ((am[0] + am[2]) + (am[1] + am[3]));
    }
}

void realm_q4_K_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q4_K *x = w;
    float acc[REALM_TOK_GROUP], accm[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) acc[t] = accm[t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        uint8_t sc[8], m[8];
        k4_scales(x[b].scales, sc, m);
        nibbles(x[b].qs, NULL, sc, &k);
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = k_values(a, t, b);
            const int16_t *bs = k_bsums(a, t, b);
            int32_t imin = 0;
            for (int j = 0; j < 8; j++) imin += m[j] * (bs[2 * j] + bs[2 * j + 1]);
            k_whole_step(&k, q, imin, realm_half_to_f32(x[b].d), realm_half_to_f32(x[b].dmin),
                         a->d[realm_act_slot(t, b)], &acc[t], &accm[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = acc[t] - accm[t];
}

void realm_q5_K_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q5_K *x = w;
    float32x4_t lo[REALM_TOK_GROUP], hi[REALM_TOK_GROUP];
    float summs[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) lo[t] = hi[t] = vdupq_n_f32(0.0f), summs[t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        uint8_t sc[8], m[8];
        k4_scales(x[b].scales, sc, m);
        nibbles(x[b].qs, x[b].qh, sc, &k);
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = k_values(a, t, b);
            const int16_t *bs = k_bsums(a, t, b);
            const float dx = a->d[realm_act_slot(t, b)];
            const float d = dx * realm_half_to_f32(x[b].d), dmin = -(dx * realm_half_to_f32(x[b].dmin));
            int32_t imin = 0;
            for (int j = 0; j < 8; j++) imin += m[j] * (bs[2 * j] + bs[2 * j + 1]);
            summs[t] = fmaf(dmin, (float)imin, summs[t]);
            k_step(&k, q, d, &lo[t], &hi[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = hsum8(lo[t], hi[t]) + summs[t];
}

/* Q6_K: values 0..63; the -32 offset enters lane k as -32 (sc[2k] bsum[2k] + sc[2k+1] bsum[2k+1]). */
void realm_q6_K_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q6_K *x = w;
    float32x4_t lo[REALM_TOK_GROUP], hi[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) lo[t] = hi[t] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        sixes(&x[b], &k);
        const int8_t *sc = x[b].scales;
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = k_values(a, t, b);
            const int16_t *bs = k_bsums(a, t, b);
            const float d = a->d[realm_act_slot(t, b)] * realm_half_to_f32(x[b].d);
            int32_t off[8];
            for (int j = 0; j < 8; j++) off[j] = -32 * (sc[2 * j] * bs[2 * j] + sc[2 * j + 1] * bs[2 * j + 1]);
            int32x4_t l, h;
            k_lanes(&k, q, &l, &h);
            lo[t] = fma_int(lo[t], vaddq_s32(vld1q_s32(off), l), d);
            hi[t] = fma_int(hi[t], vaddq_s32(vld1q_s32(off + 4), h), d);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = hsum8(lo[t], hi[t]);
}

/* ---- the code-book formats in llama.cpp's vec_dot order (the blocks: looked_up, lut32 above) ---- */

/* matmul_iq_ref.c's dot_lut32: even blocks into one accumulator, odd ones into another,
 * summed lane-wise, then hsum8; an unpaired last block summed whole and added unfused. */
static inline void dot_lut32(int mxfp4, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y,
                             int64_t ys) {
    float32x4_t acc[2][2][REALM_TOK_GROUP]; /* [block parity][lanes 0..3, 4..7][token] */
    for (int t = 0; t < ntok; t++) acc[0][0][t] = acc[0][1][t] = acc[1][0][t] = acc[1][1][t] = vdupq_n_f32(0.0f);
    const int64_t pairs = nb & ~(int64_t)1;
    for (int64_t b = 0; b < pairs; b++) {
        int8x16_t v[2];
        float dw;
        lut32(mxfp4, w, b, v, &dw);
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = a->qs + t * a->n_in + 32 * b;
            const float d = dw * a->d[realm_act_slot(t, b)];
            acc[b & 1][0][t] = fma_int(acc[b & 1][0][t], lanes16(v[0], vld1q_s8(q)), d);
            acc[b & 1][1][t] = fma_int(acc[b & 1][1][t], lanes16(v[1], vld1q_s8(q + 16)), d);
        }
    }
    for (int t = 0; t < ntok; t++) {
        float s = hsum8(vaddq_f32(acc[0][0][t], acc[1][0][t]), vaddq_f32(acc[0][1][t], acc[1][1][t]));
        if (pairs < nb) {
            int8x16_t v[2];
            float dw;
            lut32(mxfp4, w, pairs, v, &dw);
            const int32_t isum = isum32(v, a->qs + t * a->n_in + 32 * pairs);
            s = REALM_IQ_TAIL(dw * a->d[realm_act_slot(t, pairs)], (float)isum, s);
        }
        y[t * ys] = s;
    }
}

void realm_iq4_nl_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_lut32(0, nb, w, a, ntok, y, ys);
}

void realm_iq4_nl_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot32_whole(REALM_TYPE_IQ4_NL, nb, w, a, ntok, y, ys);
}

void realm_mxfp4_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_lut32(1, nb, w, a, ntok, y, ys);
}

void realm_mxfp4_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot32_whole(REALM_TYPE_MXFP4, nb, w, a, ntok, y, ys);
}

/* IQ4_XS: 8 sub-blocks of 32 with 6-bit scales ls - 32, against Q8_K; acc[k] = fma(dw * dx,
 * lane k, acc[k]), y = hsum8(acc). */
void realm_iq4_xs_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_iq4_xs *x = w;
    const int8x16_t book = vld1q_s8(realm_kvalues_iq4nl);
    float32x4_t lo[REALM_TOK_GROUP], hi[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) lo[t] = hi[t] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        kblock k;
        for (int i = 0; i < QK_K / 32; i++) {
            looked_up(x[b].qs + 16 * i, book, &k.v[2 * i]);
            k.s16[2 * i] = k.s16[2 * i + 1] =
                (((x[b].scales_l[i / 2] >> 4 * (i % 2)) & 15) | ((x[b].scales_h >> 2 * i) & 3) << 4) - 32;
        }
        for (int t = 0; t < ntok; t++) {
            const float d = realm_half_to_f32(x[b].d) * a->d[realm_act_slot(t, b)];
            k_step(&k, k_values(a, t, b), d, &lo[t], &hi[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = hsum8(lo[t], hi[t]);
}

/* ---- float weights (matmul_float.h): element 64i + 16j + l into sum j, lane l; then
 * (s0 + s2) + (s1 + s3) lane-wise, reduced as realm_hsum16f; the leftovers as the
 * reference's tails ---- */

/* Elements k..k+3 of a weight row (F32, or F16 widened: exact), wherever it lies. */
static inline float32x4_t weights4(const void *w, int f16, int64_t k) {
    if (f16) return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8((const uint8_t *)w + 2 * k)));
    return vreinterpretq_f32_u8(vld1q_u8((const uint8_t *)w + 4 * k));
}

/* The reduced sums of the first np (a multiple of 64) elements: F32 fused, F16's exact
 * products added. */
static inline float sums64(const void *w, int f16, const float *x, int64_t np) {
    float32x4_t acc[4][4]; /* [sum j][lanes 4r..4r+3] */
    for (int j = 0; j < 4; j++)
        for (int r = 0; r < 4; r++) acc[j][r] = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < np; i += REALM_FLOAT_STEP)
        for (int j = 0; j < 4; j++)
            for (int r = 0; r < 4; r++) {
                const int64_t k = i + 16 * j + 4 * r;
                const float32x4_t wv = weights4(w, f16, k), xv = vld1q_f32(x + k);
                acc[j][r] = f16 ? vaddq_f32(acc[j][r], vmulq_f32(wv, xv)) : vfmaq_f32(acc[j][r], wv, xv);
            }
    float v[16];
    for (int r = 0; r < 4; r++)
        vst1q_f32(v + 4 * r, vaddq_f32(vaddq_f32(acc[0][r], acc[2][r]), vaddq_f32(acc[1][r], acc[3][r])));
    return realm_hsum16f(v);
}

void realm_f32_dot_neon(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    for (int t = 0; t < ntok; t++) {
        const float *x = a->xf + t * a->n_in;
        y[t * ys] = realm_f32_tail(sums64(w, 0, x, np), w, x, np, n);
    }
}

void realm_f16_dot_neon(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const int64_t np = n & ~(int64_t)(REALM_FLOAT_STEP - 1);
    for (int t = 0; t < ntok; t++) {
        const float *x = a->xf + t * a->n_in; /* rounded to f16 (REALM_ACT_F16) */
        y[t * ys] = realm_f16_tail(sums64(w, 1, x, np), w, x, np, n);
    }
}

#endif
