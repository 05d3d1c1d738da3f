/* Scalar reference dot products: one weight row against ntok activation
 * rows.  Each block's integer dot product is exact; the float steps are the
 * ones matmul.h defines, and the AVX2 kernels repeat them bit for bit. */
#include "matmul.h"
#include "fp16.h"

static inline void fold(float *acc, float dw, float dx, int32_t isum) {
    *acc = *acc + (dw * dx) * (float)isum;
}

static inline uint32_t u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- 32-element formats against REALM_ACT_Q8 ----
 * Value j of a block: Q4/Q5 keep the low nibbles of qs[0..16) as values
 * 0..15 and the high nibbles as 16..31, with bit j of qh on top for Q5.
 * Q4_0/Q5_0/Q8_0 values are signed; Q4_1/Q5_1 add a minimum m per block. */

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
        return (q | (int)((u32le(x->qh) >> j) & 1) << 4) - 16;
    }
    case REALM_TYPE_Q5_1: {
        const block_q5_1 *x = (const block_q5_1 *)w + b;
        const int q = lo ? x->qs[j % 16] & 15 : x->qs[j % 16] >> 4;
        return q | (int)((u32le(x->qh) >> j) & 1) << 4;
    }
    default: return ((const block_q8_0 *)w)[b].qs[j];
    }
}

/* Block scale d and minimum m (0 where the format has none). */
static inline void scales32(int type, const void *w, int64_t b, float *d, float *m) {
    realm_half hd, hm = 0;
    switch (type) {
    case REALM_TYPE_Q4_0: hd = ((const block_q4_0 *)w)[b].d; break;
    case REALM_TYPE_Q4_1: hd = ((const block_q4_1 *)w)[b].d; hm = ((const block_q4_1 *)w)[b].m; break;
    case REALM_TYPE_Q5_0: hd = ((const block_q5_0 *)w)[b].d; break;
    case REALM_TYPE_Q5_1: hd = ((const block_q5_1 *)w)[b].d; hm = ((const block_q5_1 *)w)[b].m; break;
    default: hd = ((const block_q8_0 *)w)[b].d; break;
    }
    *d = realm_half_to_f32(hd);
    *m = realm_half_to_f32(hm);
}

/* Block b goes to partial sum b % 4 (blocks padded to a multiple of 4 with
 * zero terms); the four are combined as ((s0 + s1) + (s2 + s3)), each s_k
 * being acc_k + accm_k for formats with a minimum. */
static void dot32(int type, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const int with_min = type == REALM_TYPE_Q4_1 || type == REALM_TYPE_Q5_1;
    const int64_t nbp = realm_act_padded(REALM_ACT_Q8, 32 * nb);
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, accm[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nbp; b++) {
            const int64_t slot = realm_act_slot(REALM_ACT_Q8, t, b);
            int32_t isum = 0;
            float dw = 0.0f, mw = 0.0f;
            if (b < nb) {
                for (int j = 0; j < 32; j++) isum += value32(type, w, b, j) * q[32 * b + j];
                scales32(type, w, b, &dw, &mw);
            }
            fold(&acc[b & 3], dw, a->d[slot], isum);
            if (with_min) fold(&accm[b & 3], mw, a->d[slot], a->sums[slot]);
        }
        if (with_min)
            for (int k = 0; k < 4; k++) acc[k] = acc[k] + accm[k];
        y[t * ys] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

#define DOT32(NAME, TYPE)                                                                                \
    static void NAME(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) { \
        dot32(TYPE, nb, w, a, ntok, y, ys);                                                              \
    }
DOT32(dot_q4_0, REALM_TYPE_Q4_0)
DOT32(dot_q4_1, REALM_TYPE_Q4_1)
DOT32(dot_q5_0, REALM_TYPE_Q5_0)
DOT32(dot_q5_1, REALM_TYPE_Q5_1)
DOT32(dot_q8_0, REALM_TYPE_Q8_0)

/* K-quants: one exact integer sum per block of 256 (and one for the
 * minimums), folded in block order:
 *     acc = acc + (d * dx) * isum,  accm = accm + (dmin * dx) * imin,  y = acc - accm */
typedef struct {
    float acc, accm;
} sums;

/* ---- K-quants against REALM_ACT_Q8_K (blocks of 256, sums per 16) ---- */

/* Q2_K, Q3_K: value i of group g (32 values, g = 0..7) comes from byte
 * qs[32 * (g / 4) + i] at bit 2 * (g % 4); sub-block j (16 values) is
 * values 16j..16j+15, i.e. group j / 2. */
static inline int crumb(const uint8_t *qs, int idx) {
    const int g = idx / 32, i = idx % 32;
    return (qs[32 * (g / 4) + i] >> (2 * (g % 4))) & 3;
}

static void dot_q2_K(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q2_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        sums s = {0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            int32_t isum = 0, imin = 0;
            for (int j = 0; j < 16; j++) {
                int32_t dot = 0;
                for (int i = 16 * j; i < 16 * j + 16; i++) dot += crumb(x[b].qs, i) * q[i];
                isum += (x[b].scales[j] & 15) * dot;
                imin += (x[b].scales[j] >> 4) * bs[j];
            }
            const float dx = a->d[realm_act_slot(REALM_ACT_Q8_K, t, b)];
            fold(&s.acc, realm_half_to_f32(x[b].d), dx, isum);
            fold(&s.accm, realm_half_to_f32(x[b].dmin), dx, imin);
        }
        y[t * ys] = s.acc - s.accm;
    }
}

static void dot_q3_K(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q3_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++, q += QK_K) {
            int8_t sc[16];
            realm_q3_K_scales(x[b].scales, sc);
            int32_t isum = 0;
            for (int j = 0; j < 16; j++) {
                int32_t dot = 0;
                for (int i = 16 * j; i < 16 * j + 16; i++) {
                    const int high = (x[b].hmask[i % 32] >> (i / 32)) & 1;
                    dot += (crumb(x[b].qs, i) - (high ? 0 : 4)) * q[i];
                }
                isum += sc[j] * dot;
            }
            fold(&acc, realm_half_to_f32(x[b].d), a->d[realm_act_slot(REALM_ACT_Q8_K, t, b)], isum);
        }
        y[t * ys] = acc;
    }
}

/* Q4_K, Q5_K: sub-block j (32 values) is the low (j even) or high (j odd)
 * nibbles of qs[32 * (j / 2) .. + 32], with bit j of qh[0..32) on top for Q5_K. */
static void dot_q4_K(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q4_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        sums s = {0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            int32_t isum = 0, imin = 0;
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                realm_k4_scale_min(j, x[b].scales, &sc, &m);
                const uint8_t *qs = x[b].qs + 32 * (j / 2);
                int32_t dot = 0;
                for (int i = 0; i < 32; i++) dot += ((qs[i] >> (4 * (j & 1))) & 15) * q[32 * j + i];
                isum += sc * dot;
                imin += m * (bs[2 * j] + bs[2 * j + 1]);
            }
            const float dx = a->d[realm_act_slot(REALM_ACT_Q8_K, t, b)];
            fold(&s.acc, realm_half_to_f32(x[b].d), dx, isum);
            fold(&s.accm, realm_half_to_f32(x[b].dmin), dx, imin);
        }
        y[t * ys] = s.acc - s.accm;
    }
}

static void dot_q5_K(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q5_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        sums s = {0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            int32_t isum = 0, imin = 0;
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                realm_k4_scale_min(j, x[b].scales, &sc, &m);
                const uint8_t *qs = x[b].qs + 32 * (j / 2);
                int32_t dot = 0;
                for (int i = 0; i < 32; i++) {
                    const int v = ((qs[i] >> (4 * (j & 1))) & 15) | ((x[b].qh[i] >> j) & 1) << 4;
                    dot += v * q[32 * j + i];
                }
                isum += sc * dot;
                imin += m * (bs[2 * j] + bs[2 * j + 1]);
            }
            const float dx = a->d[realm_act_slot(REALM_ACT_Q8_K, t, b)];
            fold(&s.acc, realm_half_to_f32(x[b].d), dx, isum);
            fold(&s.accm, realm_half_to_f32(x[b].dmin), dx, imin);
        }
        y[t * ys] = s.acc - s.accm;
    }
}

/* Q6_K: value i = 128n + 32k + l (l < 32) has its low 4 bits in
 * ql[64n + l + 32 (k & 1)] (high nibble when k >= 2), its top 2 bits at bit
 * 2k of qh[32n + l]; sub-block j = i / 16 has scale scales[j]. */
static void dot_q6_K(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_q6_K *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++, q += QK_K) {
            int32_t isum = 0;
            for (int j = 0; j < 16; j++) {
                int32_t dot = 0;
                for (int i = 16 * j; i < 16 * j + 16; i++) {
                    const int n = i / 128, k = (i / 32) % 4, l = i % 32;
                    const int lo = (x[b].ql[64 * n + l + 32 * (k & 1)] >> (4 * (k / 2))) & 15;
                    const int hi = (x[b].qh[32 * n + l] >> (2 * k)) & 3;
                    dot += ((lo | hi << 4) - 32) * q[i];
                }
                isum += x[b].scales[j] * dot;
            }
            fold(&acc, realm_half_to_f32(x[b].d), a->d[realm_act_slot(REALM_ACT_Q8_K, t, b)], isum);
        }
        y[t * ys] = acc;
    }
}

/* ---- float weights against f32 activations: sequential sums ---- */

static void dot_f32(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const float *x = w;
    for (int t = 0; t < ntok; t++) {
        const float *v = a->xf + t * a->n_in;
        float acc = 0.0f;
        for (int64_t i = 0; i < n; i++) acc += x[i] * v[i];
        y[t * ys] = acc;
    }
}

static void dot_f16(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const uint16_t *x = w;
    for (int t = 0; t < ntok; t++) {
        const float *v = a->xf + t * a->n_in;
        float acc = 0.0f;
        for (int64_t i = 0; i < n; i++) acc += realm_half_to_f32(x[i]) * v[i];
        y[t * ys] = acc;
    }
}

static void dot_bf16(int64_t n, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const uint16_t *x = w;
    for (int t = 0; t < ntok; t++) {
        const float *v = a->xf + t * a->n_in;
        float acc = 0.0f;
        for (int64_t i = 0; i < n; i++) acc += realm_bf16_to_f32(x[i]) * v[i];
        y[t * ys] = acc;
    }
}

realm_dot_fn realm_dot_ref(int wtype) {
    switch (wtype) {
    case REALM_TYPE_F32: return dot_f32;
    case REALM_TYPE_F16: return dot_f16;
    case REALM_TYPE_BF16: return dot_bf16;
    case REALM_TYPE_Q4_0: return dot_q4_0;
    case REALM_TYPE_Q4_1: return dot_q4_1;
    case REALM_TYPE_Q5_0: return dot_q5_0;
    case REALM_TYPE_Q5_1: return dot_q5_1;
    case REALM_TYPE_Q8_0: return dot_q8_0;
    case REALM_TYPE_Q2_K: return dot_q2_K;
    case REALM_TYPE_Q3_K: return dot_q3_K;
    case REALM_TYPE_Q4_K: return dot_q4_K;
    case REALM_TYPE_Q5_K: return dot_q5_K;
    case REALM_TYPE_Q6_K: return dot_q6_K;
    default: return NULL;
    }
}
