/* The float weights' dot products (F32, F16, BF16) as llama.cpp's CPU backend
 * computes them: ggml_vec_dot_f32 / _f16 / _bf16 of an x86-64 build with
 * AVX-512F and AVX512_BF16 (the GGML_F32_STEP 64 / GGML_F32_EPR 16 loops of
 * vec.cpp), as GCC compiles them.  The scalar pieces every path shares, so the
 * reference (matmul_ref.c), AVX2 (matmul_avx2.c) and AVX-512 (matmul_avx512.c)
 * kernels give the same bits; matmul.h's numerics paragraph says the whole.
 * Internal to the kernels. */
#ifndef REALM_MATMUL_FLOAT_H
#define REALM_MATMUL_FLOAT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fp16.h"

/* Elements per step of the vector loops (4 sums of 16 lanes; BF16: 2 x 32 pairs). */
#define REALM_FLOAT_STEP 64

/* Element k of a row, wherever the row lies (weights need not be aligned). */
static inline float realm_ld_f32(const void *p, int64_t k) {
    float v;
    memcpy(&v, (const char *)p + 4 * k, sizeof v);
    return v;
}
static inline uint16_t realm_ld_u16(const void *p, int64_t k) {
    uint16_t v;
    memcpy(&v, (const char *)p + 2 * k, sizeof v);
    return v;
}

/* _mm512_reduce_add_ps as GCC expands it: the 256-bit halves, the 128-bit halves,
 * then lanes (0 + 2) + (1 + 3). */
static inline float realm_hsum16f(const float *v) {
    float h[8], q[4];
    for (int k = 0; k < 8; k++) h[k] = v[k + 8] + v[k];
    for (int k = 0; k < 4; k++) q[k] = h[k + 4] + h[k];
    return (q[0] + q[2]) + (q[1] + q[3]);
}

/* F32: s (the reduced sums of the first np elements) plus the leftovers [np, n),
 * ggml's scalar loop `sumf += x[i]*y[i]` in float as GCC vectorizes it: the
 * products of the whole eights rounded, then added in order; the last
 * (n - np) % 8 fused. */
static inline float realm_f32_tail(float s, const void *w, const float *x, int64_t np, int64_t n) {
    const int64_t m = np + ((n - np) & ~(int64_t)7);
    int64_t k = np;
    for (; k < m; k++) {
        const float p = realm_ld_f32(w, k) * realm_ld_f32(x, k);
        s = s + p;
    }
    for (; k < n; k++) s = fmaf(realm_ld_f32(w, k), realm_ld_f32(x, k), s);
    return s;
}

/* F16: the reduced sums widened to double, plus each leftover product (exact in
 * f32: 11-bit significands) in double, rounded to f32 at the end.  x holds the
 * activations rounded to f16. */
static inline float realm_f16_tail(float s, const void *w, const float *x, int64_t np, int64_t n) {
    double d = s;
    for (int64_t k = np; k < n; k++) d += (double)(realm_half_to_f32(realm_ld_u16(w, k)) * realm_ld_f32(x, k));
    return (float)d;
}

/* A bf16 value as vdpbf16ps reads it: subnormals are zeros (DAZ). */
static inline float realm_bf16_daz(uint16_t h) { return realm_bf16_to_f32((h & 0x7f80u) ? h : (uint16_t)(h & 0x8000u)); }

/* vdpbf16ps's flush of r = fma(a, b, t) (a, b as realm_bf16_daz gives them): a
 * result tiny after rounding to 24 bits with unbounded exponent (x86's FTZ) is
 * zero of its sign.  fmaf rounds to the subnormal grid instead: the two differ
 * only when fmaf gives exactly +-2^-126, which is then recomputed scaled by 2^64.
 * (There |t| < 2^-60 and |a|, |b| < 2^67, else t + ab would be a nonzero multiple
 * of 2^-83: the scaled operands and result are normal and exact.) */
static inline float realm_dpbf16_ftz(float r, float a, float b, float t) {
    const uint32_t u = realm_f32_to_bits(r), ax = u & 0x7fffffffu;
    if (ax > 0x00800000u) return r;                                 /* normal, inf, NaN */
    if (ax < 0x00800000u) return realm_bits_to_f32(u & 0x80000000u); /* subnormal or zero */
    const float e = fmaf(a * 0x1p32f, b * 0x1p32f, t * 0x1p64f);
    return fabsf(e) < 0x1p-62f ? realm_bits_to_f32(u & 0x80000000u) : r;
}

/* One product of vdpbf16ps into lane sum t: fused, DAZ inputs, FTZ result. */
static inline float realm_dpbf16_step(float t, uint16_t a, uint16_t b) {
    const float fa = realm_bf16_daz(a), fb = realm_bf16_daz(b);
    return realm_dpbf16_ftz(fmaf(fa, fb, t), fa, fb, t);
}

/* BF16: the two reduced accumulators added into a double (from 0.0), then the
 * leftovers [np, n): each product in f32, widened and added; rounded to f32. */
static inline float realm_bf16_tail(float r1, float r2, const void *w, const uint16_t *x, int64_t np, int64_t n) {
    double d = 0.0;
    d += (double)r1;
    d += (double)r2;
    for (int64_t k = np; k < n; k++) d += (double)(realm_bf16_to_f32(realm_ld_u16(w, k)) * realm_bf16_to_f32(x[k]));
    return (float)d;
}

#endif
