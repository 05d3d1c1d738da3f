/* Scalar reference dot products of TQ1_0 and TQ2_0 weights against Q8_K activations
 * (matmul.h's float steps, fmaf for each fused multiply-add; matmul_tq_avx2.c repeats them
 * bit for bit).  A 256-value block holds ternary values as unsigned u = value + 1 (0, 1, 2;
 * TQ2_0's 2-bit fields may also hold 3) and one f16 scale.  As llama.cpp's AVX2
 * ggml_vec_dot_tq1_0_q8_K / _tq2_0_q8_K, lane k (of 8) of a block is
 *   sum over its 8 runs of 32 values of u * q at positions 4k..4k+3 of the run,
 *   minus the activations' bsums 2k and 2k+1 (the sum of q over values 32k..32k+31),
 * an exact integer; acc_k = fma(lane_k, dw * dx, acc_k) per block, y = hsum8(acc). */
#include "kernels_iq_mm.h"

#include "fp16.h"

#include <math.h>

/* u of a TQ1_0 byte at the place of multiplier p: (q * p mod 256) * 3 >> 8, the digit + 1
 * (see tq1_digit in dequant_iq_ref.c). */
static inline uint8_t tq1_u(uint8_t q, uint8_t p) {
    return (uint8_t)(((uint8_t)(q * p) * 3) >> 8);
}

/* The block's 256 values u in element order (dequant_iq_ref.c's). */
static void tq1_values(const block_tq1_0 *x, uint8_t *u) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    for (int n = 0; n < 5; n++) /* qs[0..31]: 5 x 32 */
        for (int m = 0; m < 32; m++) *u++ = tq1_u(x->qs[m], pow3[n]);
    for (int n = 0; n < 5; n++) /* qs[32..47]: 5 x 16 */
        for (int m = 0; m < 16; m++) *u++ = tq1_u(x->qs[32 + m], pow3[n]);
    for (int n = 0; n < 4; n++) /* qh: 4 x 4 */
        for (int j = 0; j < 4; j++) *u++ = tq1_u(x->qh[j], pow3[n]);
}

static void tq2_values(const block_tq2_0 *x, uint8_t *u) {
    for (int j = 0; j < QK_K / 4; j += 32)
        for (int l = 0; l < 4; l++)
            for (int m = 0; m < 32; m++) *u++ = (x->qs[j + m] >> 2 * l) & 3;
}

static void dot_tq(int tq1, int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    for (int t = 0; t < ntok; t++) {
        const int8_t *q = a->qs + t * a->n_in;
        const int16_t *bs = a->bsums + t * (a->n_in / 16);
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t b = 0; b < nb; b++, q += QK_K, bs += QK_K / 16) {
            uint8_t u[QK_K];
            realm_half dh;
            if (tq1) {
                tq1_values((const block_tq1_0 *)w + b, u);
                dh = ((const block_tq1_0 *)w)[b].d;
            } else {
                tq2_values((const block_tq2_0 *)w + b, u);
                dh = ((const block_tq2_0 *)w)[b].d;
            }
            const float d = realm_half_to_f32(dh) * a->d[realm_act_slot(t, b)];
            for (int k = 0; k < 8; k++) {
                int32_t lane = -(bs[2 * k] + bs[2 * k + 1]);
                for (int c = 0; c < QK_K; c += 32)
                    for (int j = c + 4 * k; j < c + 4 * k + 4; j++) lane += u[j] * q[j];
                acc[k] = fmaf((float)lane, d, acc[k]);
            }
        }
        y[t * ys] = realm_hsum8f(acc);
    }
}

void realm_tq1_0_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_tq(1, nb, w, a, ntok, y, ys);
}

void realm_tq2_0_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys) {
    dot_tq(0, nb, w, a, ntok, y, ys);
}
