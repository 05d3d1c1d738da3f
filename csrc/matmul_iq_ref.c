/* Scalar reference dot products of IQ4_NL, IQ4_XS and MXFP4 weights (matmul.h's
 * float steps, with fmaf for each fused multiply-add; matmul_iq_avx2.c repeats them
 * bit for bit).  A 32-value block holds 16 bytes of 4-bit indices into a code book
 * (kvalues_iq4nl, or MXFP4's doubled e2m1 values): value j < 16 is the low nibble of
 * qs[j], value j + 16 its high nibble.  Lane k (of 8) sums values 4k..4k+3. */
#include "kernels_iq_mm.h"

#include "fp16.h"
#include "iq_tables.h"

#include <math.h>

/* The block scale, the code book and the indices of block b of a 32-value format. */
static inline const uint8_t *block32(int mxfp4, const void *w, int64_t b, float *d, const int8_t **book) {
    if (mxfp4) {
        const block_mxfp4 *x = (const block_mxfp4 *)w + b;
        *d = realm_e8m0_to_f32_half(x->e);
        *book = realm_kvalues_mxfp4;
        return x->qs;
    }
    const block_iq4_nl *x = (const block_iq4_nl *)w + b;
    *d = realm_half_to_f32(x->d);
    *book = realm_kvalues_iq4nl;
    return x->qs;
}

static inline int32_t lane32(const uint8_t *qs, const int8_t *book, const int8_t *q, int k) {
    int32_t s = 0;
    for (int j = 4 * k; j < 4 * k + 4; j++) s += book[j < 16 ? qs[j] & 15 : qs[j - 16] >> 4] * q[j];
    return s;
}

/* llama.cpp's AVX2 vec_dot: even blocks into acc0, odd ones into acc1 (lane-wise
 * fma(dw * dx, lane, acc)), s = hsum8(acc0 + acc1); a last, unpaired block is summed
 * whole and added as s + (dw * dx) * isum, unfused (ggml's scalar tail). */
static void dot_lut32(int mxfp4, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc[2][8] = {{0.0f}};
        const int64_t pairs = nb & ~(int64_t)1;
        int64_t b = 0;
        for (; b < pairs; b++) {
            float dw;
            const int8_t *book;
            const uint8_t *qs = block32(mxfp4, w, b, &dw, &book);
            const float d = dw * a->d[realm_act_slot(t, b)];
            for (int k = 0; k < 8; k++) acc[b & 1][k] = fmaf(d, (float)lane32(qs, book, q + 32 * b, k), acc[b & 1][k]);
        }
        float sum[8];
        for (int k = 0; k < 8; k++) sum[k] = acc[0][k] + acc[1][k];
        float s = realm_hsum8f(sum);
        if (b < nb) {
            float dw;
            const int8_t *book;
            const uint8_t *qs = block32(mxfp4, w, b, &dw, &book);
            int32_t isum = 0;
            for (int k = 0; k < 8; k++) isum += lane32(qs, book, q + 32 * b, k);
            s = REALM_IQ_TAIL(dw * a->d[realm_act_slot(t, b)], (float)isum, s);
        }
        y[t * ys] = s;
    }
}

/* As llama.cpp multiplies a repacked matrix: acc = fma(isum, dw * dx, acc). */
static void dot_lut32_whole(int mxfp4, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            float dw;
            const int8_t *book;
            const uint8_t *qs = block32(mxfp4, w, b, &dw, &book);
            int32_t isum = 0;
            for (int k = 0; k < 8; k++) isum += lane32(qs, book, q + 32 * b, k);
            acc = fmaf((float)isum, dw * a->d[realm_act_slot(t, b)], acc);
        }
        y[t * ys] = acc;
    }
}

void realm_iq4_nl_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_lut32(0, nb, w, a, ntok, y, ys);
}

void realm_iq4_nl_dot_whole_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_lut32_whole(0, nb, w, a, ntok, y, ys);
}

void realm_mxfp4_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_lut32(1, nb, w, a, ntok, y, ys);
}

void realm_mxfp4_dot_whole_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_lut32_whole(1, nb, w, a, ntok, y, ys);
}

/* IQ4_XS against Q8_K: 8 sub-blocks of 32 with 6-bit scales ls - 32; lane k of a
 * super-block sums ls_i * (values 4k..4k+3 of sub-block i) over i, then
 * acc[k] = fma(dw * dx, lane, acc[k]) and y = hsum8(acc). */
void realm_iq4_xs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    const block_iq4_xs *x = w;
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K) {
            int32_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int i = 0; i < QK_K / 32; i++) {
                const int ls = (((x[b].scales_l[i / 2] >> 4 * (i % 2)) & 15) | ((x[b].scales_h >> 2 * i) & 3) << 4) - 32;
                for (int k = 0; k < 8; k++) lane[k] += ls * lane32(x[b].qs + 16 * i, realm_kvalues_iq4nl, q + 32 * i, k);
            }
            const float d = realm_half_to_f32(x[b].d) * a->d[realm_act_slot(t, b)];
            for (int k = 0; k < 8; k++) acc[k] = fmaf(d, (float)lane[k], acc[k]);
        }
        y[t * ys] = realm_hsum8f(acc);
    }
}
