/* softmax.h -- the array work of the sampler's softmax: e^x, the highest logit and the
 * next logit above a bound, over a whole vocabulary (262,144 logits for Gemma 3).
 *
 * Each function has a scalar reference (_ref); the plain names run 4 lanes at a time
 * where the guest is built with wasm SIMD and give the reference's bits exactly (the
 * same float operations in the same order, lane by lane), otherwise they are the
 * reference.  libm's expf, called two or three times per logit, took ~7 ms a token
 * on Gemma 3's vocabulary in wasm; the lanes take ~0.5 ms. */
#ifndef REALM_SOFTMAX_H
#define REALM_SOFTMAX_H
#include <stdint.h>

/* e^x for x <= 0 (the sampler's logits minus their maximum), within 1 ulp of the
 * exact value; 0 where that is below FLT_MIN (x < -87.33), NaN for NaN.  A positive
 * x counts as 0 (it never occurs: callers subtract the maximum). */
float softmax_exp(float x);

/* w[i] = softmax_exp(x[i] / div - sub) where x[i] >= threshold, else +0 (NaN x[i] too), for
 * i < n, each also added to *sum in double and to *fsum in float (either may be NULL), in
 * order of i (the draw's sum and top-p's, as llama.cpp takes them); returns how many x[i]
 * reach the threshold. */
uint32_t softmax_weights(float *w, const float *x, uint32_t n, float div, float sub, float threshold,
                         double *sum, float *fsum);
uint32_t softmax_weights_ref(float *w, const float *x, uint32_t n, float div, float sub, float threshold,
                             double *sum, float *fsum);

/* The highest of x[0..n) that is not NaN, or NaN when all are (fmaxf's fold; n > 0). */
float softmax_max(const float *x, uint32_t n);
float softmax_max_ref(const float *x, uint32_t n);

/* The first i in [from, n) with x[i] > bound, or n. */
uint32_t softmax_next_above(const float *x, uint32_t from, uint32_t n, float bound);
uint32_t softmax_next_above_ref(const float *x, uint32_t from, uint32_t n, float bound);

#endif /* REALM_SOFTMAX_H */
