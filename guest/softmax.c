/* softmax.c -- see softmax.h. */
#include "softmax.h"

#include <math.h>
#include <string.h>
#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

/* e^x = 2^n e^r with n = round(x / ln2) and r = x - n ln2 in [-ln2/2, ln2/2], taken in two
 * steps (Cody and Waite: n ln2_hi is exact for |n| < 2^13), and e^r = 1 + r + r^2 P(r)
 * with Cephes' minimax P for that interval (within 1 ulp in float arithmetic: under 0.99
 * over every float of [ln FLT_MIN, 0], correctly rounded for 99.2% of them).  n comes
 * from adding 1.5 * 2^23, where floats are the integers: the sum rounds x / ln2 to the
 * nearest (ties to even) and its low bits hold n, for 2^n's exponent, with no float to
 * int conversion (several instructions a lane in wasm). */
#define EXP_MIN (-87.33654475f) /* ln(FLT_MIN) */
#define LOG2E 1.44269504089f
#define ROUND 12582912.0f      /* 1.5 * 2^23 */
#define ROUND_BITS 0x4B400000u /* its bits: ROUND + n has ROUND_BITS + n */
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f

float softmax_exp(float x)
{
    if (x != x) return x;
    if (x < EXP_MIN) return 0.0f;
    if (x > 0.0f) x = 0.0f;
    float j = x * LOG2E + ROUND, n = j - ROUND; /* n in [-126, 0] */
    float r = x - n * LN2_HI;
    r = r - n * LN2_LO;
    float p = P0;
    p = p * r + P1;
    p = p * r + P2;
    p = p * r + P3;
    p = p * r + P4;
    p = p * r + P5;
    float y = p * (r * r) + r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &j, sizeof bits);
    bits = (bits - ROUND_BITS + 127) << 23; /* 2^n, a normal float */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

uint32_t softmax_weights_ref(float *w, const float *x, uint32_t n, float div, float sub, float threshold,
                             double *sum, float *fsum)
{
    uint32_t count = 0;
    double s = sum ? *sum : 0.0;
    float f = fsum ? *fsum : 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        int in = x[i] >= threshold;
        w[i] = in ? softmax_exp(x[i] / div - sub) : 0.0f;
        s += w[i];
        f += w[i];
        count += (uint32_t)in;
    }
    if (sum) *sum = s;
    if (fsum) *fsum = f;
    return count;
}

float softmax_max_ref(const float *x, uint32_t n)
{
    float m = -INFINITY;
    int seen = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (x[i] > m) m = x[i];
        seen |= x[i] == x[i];
    }
    return seen ? m + 0.0f : NAN; /* + 0: a zero maximum is +0, whichever zero came first */
}

uint32_t softmax_next_above_ref(const float *x, uint32_t from, uint32_t n, float bound)
{
    uint32_t i = from;
    while (i < n && !(x[i] > bound)) i++;
    return i;
}

#ifdef __wasm_simd128__

/* softmax_exp in 4 lanes: the same operations in the same order; the lanes that return
 * early there are computed anyway and replaced at the end. */
static inline v128_t exp_lanes(v128_t x)
{
    const v128_t nan = wasm_f32x4_ne(x, x), small = wasm_f32x4_lt(x, wasm_f32x4_splat(EXP_MIN));
    v128_t v = wasm_f32x4_pmin(x, wasm_f32x4_splat(0.0f)); /* 0 < x ? 0 : x */
    const v128_t j = wasm_f32x4_add(wasm_f32x4_mul(v, wasm_f32x4_splat(LOG2E)), wasm_f32x4_splat(ROUND));
    const v128_t n = wasm_f32x4_sub(j, wasm_f32x4_splat(ROUND));
    v128_t r = wasm_f32x4_sub(v, wasm_f32x4_mul(n, wasm_f32x4_splat(LN2_HI)));
    r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, wasm_f32x4_splat(LN2_LO)));
    v128_t p = wasm_f32x4_splat(P0);
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(P1));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(P2));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(P3));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(P4));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(P5));
    v128_t y = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(p, wasm_f32x4_mul(r, r)), r), wasm_f32x4_splat(1.0f));
    /* wasm integer lanes wrap: the small and NaN lanes' garbage is replaced below */
    v128_t scale = wasm_i32x4_shl(wasm_i32x4_sub(j, wasm_i32x4_splat((int32_t)(ROUND_BITS - 127))), 23);
    y = wasm_f32x4_mul(y, scale);
    y = wasm_v128_andnot(y, small);
    return wasm_v128_bitselect(x, y, nan);
}

/* softmax_weights' loop, with or without each sum (constants where it is inlined). */
static inline __attribute__((always_inline)) uint32_t weights_lanes(float *w, const float *x, uint32_t n, float div,
                                                                    float sub, float threshold, double *sum,
                                                                    float *fsum, const int with_sum,
                                                                    const int with_fsum)
{
    const v128_t d = wasm_f32x4_splat(div), s = wasm_f32x4_splat(sub), t = wasm_f32x4_splat(threshold);
    v128_t counts = wasm_i32x4_splat(0);
    double total = with_sum ? *sum : 0.0;
    float ftotal = with_fsum ? *fsum : 0.0f;
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        v128_t v = wasm_v128_load(x + i), in = wasm_f32x4_ge(v, t);
        v128_t e = wasm_v128_and(exp_lanes(wasm_f32x4_sub(wasm_f32x4_div(v, d), s)), in);
        wasm_v128_store(w + i, e);
        /* the sums in order, lane after lane: their chains of adds overlap the next lanes' e^x */
        const float e0 = wasm_f32x4_extract_lane(e, 0), e1 = wasm_f32x4_extract_lane(e, 1),
                    e2 = wasm_f32x4_extract_lane(e, 2), e3 = wasm_f32x4_extract_lane(e, 3);
        if (with_sum) {
            total += e0;
            total += e1;
            total += e2;
            total += e3;
        }
        if (with_fsum) {
            ftotal += e0;
            ftotal += e1;
            ftotal += e2;
            ftotal += e3;
        }
        counts = wasm_i32x4_sub(counts, in); /* a lane in is -1 */
    }
    if (with_sum) *sum = total;
    if (with_fsum) *fsum = ftotal;
    uint32_t count = (uint32_t)wasm_i32x4_extract_lane(counts, 0) + (uint32_t)wasm_i32x4_extract_lane(counts, 1) +
                     (uint32_t)wasm_i32x4_extract_lane(counts, 2) + (uint32_t)wasm_i32x4_extract_lane(counts, 3);
    return count + softmax_weights_ref(w + i, x + i, n - i, div, sub, threshold, sum, fsum);
}

uint32_t softmax_weights(float *w, const float *x, uint32_t n, float div, float sub, float threshold,
                         double *sum, float *fsum)
{
    if (sum && fsum) return weights_lanes(w, x, n, div, sub, threshold, sum, fsum, 1, 1);
    if (sum) return weights_lanes(w, x, n, div, sub, threshold, sum, NULL, 1, 0);
    if (fsum) return weights_lanes(w, x, n, div, sub, threshold, NULL, fsum, 0, 1);
    return weights_lanes(w, x, n, div, sub, threshold, NULL, NULL, 0, 0);
}

float softmax_max(const float *x, uint32_t n)
{
    v128_t m0 = wasm_f32x4_splat(-INFINITY), m1 = m0, seen = wasm_i32x4_splat(0);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) { /* two accumulators: each comparison waits on the last */
        v128_t a = wasm_v128_load(x + i), b = wasm_v128_load(x + i + 4);
        m0 = wasm_v128_bitselect(a, m0, wasm_f32x4_gt(a, m0));
        m1 = wasm_v128_bitselect(b, m1, wasm_f32x4_gt(b, m1));
        seen = wasm_v128_or(seen, wasm_v128_or(wasm_f32x4_eq(a, a), wasm_f32x4_eq(b, b)));
    }
    m0 = wasm_v128_bitselect(m1, m0, wasm_f32x4_gt(m1, m0));
    float lanes[4], m = -INFINITY;
    wasm_v128_store(lanes, m0);
    for (int l = 0; l < 4; l++)
        if (lanes[l] > m) m = lanes[l];
    int any = wasm_v128_any_true(seen);
    for (; i < n; i++) {
        if (x[i] > m) m = x[i];
        any |= x[i] == x[i];
    }
    return any ? m + 0.0f : NAN;
}

uint32_t softmax_next_above(const float *x, uint32_t from, uint32_t n, float bound)
{
    const v128_t b = wasm_f32x4_splat(bound);
    uint32_t i = from;
    for (; i + 16 <= n; i += 16) {
        v128_t gt = wasm_v128_or(wasm_v128_or(wasm_f32x4_gt(wasm_v128_load(x + i), b),
                                              wasm_f32x4_gt(wasm_v128_load(x + i + 4), b)),
                                 wasm_v128_or(wasm_f32x4_gt(wasm_v128_load(x + i + 8), b),
                                              wasm_f32x4_gt(wasm_v128_load(x + i + 12), b)));
        if (wasm_v128_any_true(gt)) break;
    }
    return softmax_next_above_ref(x, i, n, bound);
}

#else

uint32_t softmax_weights(float *w, const float *x, uint32_t n, float div, float sub, float threshold,
                         double *sum, float *fsum)
{
    return softmax_weights_ref(w, x, n, div, sub, threshold, sum, fsum);
}

float softmax_max(const float *x, uint32_t n)
{
    return softmax_max_ref(x, n);
}

uint32_t softmax_next_above(const float *x, uint32_t from, uint32_t n, float bound)
{
    return softmax_next_above_ref(x, from, n, bound);
}

#endif
