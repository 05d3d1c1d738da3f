/* NEON dot kernels for aarch64: the steps of matmul_ref.c's kernels, bit for
 * bit.  A lane of the reference is the exact int32 sum of 4 products (values
 * 4k..4k+3 of a block), here made by widening multiplies and pairwise adds;
 * each fused multiply-add of the reference is one vfmaq_f32 (a + b * c,
 * rounded once, as fmaf), and the lanes are summed as realm_hsum8f sums them.
 * Weight blocks are decoded once for every token of the group. */
#include "kernels.h"

#if defined(__aarch64__)

#include "fp16.h"
#include "matmul.h"
#include <arm_neon.h>
#include <math.h>

/* Lanes k = 0..3 of 16 values: the sums of the products of values 4k..4k+3
 * (|product| <= 128 * 128 fits int16; the pairwise adds widen). */
static inline int32x4_t lanes16(int8x16_t v, int8x16_t x) {
    const int16x8_t lo = vmull_s8(vget_low_s8(v), vget_low_s8(x));
    const int16x8_t hi = vmull_high_s8(v, x);
    return vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
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
            const float32x4_t d = vdupq_n_f32(dw * a->d[slot]);
            lo[t] = vfmaq_f32(lo[t], vcvtq_f32_s32(lanes16(v[0], vld1q_s8(q))), d);
            hi[t] = vfmaq_f32(hi[t], vcvtq_f32_s32(lanes16(v[1], vld1q_s8(q + 16))), d);
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

/* Q4_0 whole-block sums (a repacked matrix): acc = fma(isum, dw * dx, acc). */
void realm_q4_0_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    float acc[REALM_TOK_GROUP];
    for (int t = 0; t < ntok; t++) acc[t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t v[2];
        float dw, mw;
        decode32(REALM_TYPE_Q4_0, w, b, v, &dw, &mw);
        for (int t = 0; t < ntok; t++) {
            const int8_t *q = a->qs + t * a->n_in + 32 * b;
            const int32_t isum = vaddvq_s32(vaddq_s32(lanes16(v[0], vld1q_s8(q)), lanes16(v[1], vld1q_s8(q + 16))));
            acc[t] = fmaf((float)isum, dw * a->d[realm_act_slot(t, b)], acc[t]);
        }
    }
    for (int t = 0; t < ntok; t++) y[t * ys] = acc[t];
}

#endif
