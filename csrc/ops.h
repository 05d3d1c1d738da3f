/* The transformer's other operations, in f32: RMSNorm, RoPE, attention over
 * a KV cache, gated activations, softmax, residual add, f32 -> f16.
 *
 * Numerics.  Each op performs the float steps of llama.cpp's CPU backend
 * (ggml-cpu as compiled for an x86 CPU with AVX-512, the reference these
 * were measured against), so that realm's forward pass gives llama.cpp's
 * bits: the same roundings, the same fused multiply-adds, the same summation
 * orders, the same exp polynomial, the same f16 GELU table.  Scalar code is
 * the reference; the AVX2 versions (chosen at run time) perform exactly the
 * same steps, so every op gives the same bits on both paths.  A token's result
 * never depends on the batch it is in or on the thread count.  Return 0 or a
 * negative REALM_E*. */
#ifndef REALM_OPS_H
#define REALM_OPS_H

#include "matmul.h"

#include <math.h>

/* y = x / sqrt(mean(x^2) + eps) * w for each of `rows` rows of n values (w
 * may be NULL: no weight; y may be x).  As ggml: squares summed in double,
 * scale = 1 / sqrtf(mean + eps), then (x * scale) * w.  Gemma's GGUF norm
 * weights already hold the +1. */
int realm_rmsnorm(const float *x, const float *w, int64_t rows, int64_t n, float eps, float *y);

/* RoPE, as ggml's rope cache: per token t, theta starts at pos[t] and is
 * multiplied by theta_scale = powf(base, -2 / n_rot) after each pair (in
 * float); pair i gets cos/sin of freq_scale * theta_i (cosf, sinf), or with
 * freq_factors (llama3's rope_freqs, n_rot / 2 divisors) of
 * freq_scale * (theta_i / freq_factors[i]):
 * cs[t * n_rot + 2i] = cos, cs[t * n_rot + 2i + 1] = sin.  One table serves
 * every layer with the same base.  apply rotates, in x[n_tok][n_head][head_dim],
 * the first n_rot values of each head: pairs (2i, 2i+1) (normal, llama) or
 * (i, i + n_rot/2) (neox, gemma3 / qwen):
 *     a' = fma(a, cos, -(b sin)),  b' = fma(a, sin, b cos). */
#define REALM_MAX_ROT 1024
int realm_rope_table(const int32_t *pos, int64_t n_tok, int n_rot, float base, float freq_scale,
                     const float *freq_factors, float *cs);
int realm_rope_apply(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs, int neox, int isa);

/* Causal attention with grouped-query heads over a KV cache whose row j holds
 * position j.  Query t (at position pos[t] < n_kv) of head h reads kv head
 * h / (n_head / n_kv_head) and keys j with pos[t] - window < j <= pos[t]
 * (window <= 0: all j <= pos[t]).  out = softmax(scale * q k^T) v.
 * Element (j, kv head g, d) of K is k[j * kv_pos_stride + g * kv_head_stride + d]
 * (likewise V), stored as f32 or f16 (kv_type = REALM_TYPE_F32 / F16).
 * q and out are [n_tok][n_head * head_dim].
 *
 * The steps are llama.cpp's for one decoded token without flash attention
 * (ggml_vec_dot_f16, ggml_soft_max_f32), over a KV cache whose cells are the
 * positions, padded as llama.cpp pads them (a multiple of 64 cells):
 *   with an f16 cache q is rounded to f16; s_j = dot(k_j, q) * scale, where a
 *   dot of n values sums products with FMA into 4 x 16 lanes (value i into
 *   lane i % 16 of accumulator (i / 16) % 4, in order), adds the accumulators
 *   (0 + 2) + (1 + 3), reduces the 16 lanes pairwise (8 + 8, 4 + 4, then
 *   (0 + 2) + (1 + 3)) and, past the last multiple of 64 values, adds the
 *   products in double (f16 cache) or with FMA (f32 cache);
 *   e_j = exp(s_j - max s); their sum in double, 16 keys (aligned on key 0) at
 *   a time, each 16 reduced as above; p_j = e_j * (float)(1 / sum), rounded to
 *   f16 with an f16 cache; out = the dot over keys of p with each V column
 *   (key j in lane j % 16 of accumulator (j / 16) % 4).
 * realm_attention_ws needs `scratch`: realm_attn_scratch(p, n_kv) floats for
 * each thread of the enclosing region. */
typedef struct {
    int n_head, n_kv_head, head_dim;
    int kv_type;
    int64_t kv_pos_stride, kv_head_stride; /* in elements */
    float scale;                           /* usually 1 / sqrt(head_dim) */
    int32_t window;
} realm_attn_params;

int64_t realm_attn_scratch(const realm_attn_params *p, int64_t n_kv);
int realm_attention(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                    const void *v, int64_t n_kv, float *out, int nthreads, int isa);
int realm_attention_ws(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                       const void *v, int64_t n_kv, float *out, float *scratch, int isa);
/* realm_attention_ws for rows of many sequences: row t is a query of the sequence whose
 * cache holds n_kv[t] positions at k[t], v[t] (all with p's layout); scratch as
 * realm_attn_scratch(p, n_kv_max) per thread.  Each row's result is the bits
 * realm_attention_ws gives it alone. */
int realm_attention_rows_ws(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos,
                            const void *const *k, const void *const *v, const int64_t *n_kv, int64_t n_kv_max,
                            float *out, float *scratch, int isa);

/* out = silu(gate) * up, silu(x) = x / (1 + exp(0 - x)) (ggml_v_silu; ggml
 * takes the C library's expf for the last n % 16 values of a row instead); and
 * out = gelu(gate) * up with ggml's f16 table (GGML_GELU_FP16): gelu(x) is
 * the f16 rounding of the tanh form 0.5 x (1 + tanhf(sqrt(2/pi) x
 * fma(0.044715 x, x, 1))) at x rounded to f16; x <= -10 gives 0, x >= 10
 * gives x * up.  out may alias gate or up. */
int realm_swiglu(const float *gate, const float *up, float *out, int64_t n, int isa);
int realm_geglu(const float *gate, const float *up, float *out, int64_t n, int isa);

/* In place, each of `rows` rows of n: e = exp(x - max); sum of e in double,
 * 16 values at a time (each 16 reduced as attention's lanes), the last n % 16
 * one by one with the C library's expf; x = e * (float)(1 / sum). */
int realm_softmax(float *x, int64_t rows, int64_t n, int isa);

/* y += x */
void realm_add(float *y, const float *x, int64_t n);

/* IEEE binary16, round to nearest even, as vcvtps2ph (NaNs made quiet). */
int realm_f32_to_f16(const float *x, uint16_t *y, int64_t n, int isa);

/* The exp the ops use (exposed for tests). */
int realm_exp(const float *x, float *y, int64_t n, int isa);

/* ---- internal to ops*.c ---- */

/* Heads [h0, h1) (one kv head) of one query row q at keys [lo, hi]; out is
 * that token's output row; scratch as realm_attn_scratch. */
typedef void (*realm_attn_fn)(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                              int64_t hi, int h0, int h1, float *out, float *scratch);
void realm_attn_heads_ref(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                          int64_t hi, int h0, int h1, float *out, float *scratch);
void realm_attn_heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                           int64_t hi, int h0, int h1, float *out, float *scratch);

#define REALM_ATTN_HEADS 8 /* query heads handled together (one kv head) */

/* The first key j >= lo with j % 16 == l (V's dot over the keys walks the
 * keys of one lane at a time). */
static inline int64_t realm_first_key(int64_t lo, int l) { return lo + ((l - lo) & 15); }

void realm_swiglu_avx2(const float *gate, const float *up, float *out, int64_t n);
void realm_geglu_avx2(const float *gate, const float *up, float *out, int64_t n);
void realm_exp_avx2(const float *x, float *y, int64_t n);
void realm_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n);
void realm_rope_apply_avx2(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs, int neox);

/* realm_rope_apply's loop, shared by both paths: inlined into the AVX2 one,
 * fmaf becomes the FMA instruction instead of a libm call (the same bits). */
static inline __attribute__((always_inline)) void realm_rope_rows(float *x, int64_t n_tok, int n_head, int head_dim,
                                                                  int n_rot, const float *cs, int neox) {
    const int half = n_rot / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        const float *c = cs + t * n_rot;
        for (int h = 0; h < n_head; h++) {
            float *v = x + (t * n_head + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float *pa = neox ? v + i : v + 2 * i;
                float *pb = neox ? v + i + half : v + 2 * i + 1;
                const float a = *pa, b = *pb, co = c[2 * i], si = c[2 * i + 1];
                *pa = fmaf(a, co, -(b * si));
                *pb = fmaf(a, si, b * co);
            }
        }
    }
}

/* ggml's f16 GELU table, entry h = gelu(x) for the f16 x of bits h, as the
 * f32 value of its f16 result (65536 entries, built on first use). */
const float *realm_gelu_table(void);

/* ggml's 16-lane reduction (GCC's _mm512_reduce_add_ps): 8 + 8, 4 + 4,
 * then (0 + 2) + (1 + 3). */
static inline float realm_reduce16(const float *x) {
    float t8[8], t4[4];
    for (int i = 0; i < 8; i++) t8[i] = x[8 + i] + x[i];
    for (int i = 0; i < 4; i++) t4[i] = t8[4 + i] + t8[i];
    return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}

/* exp(x) as ggml's AVX-512 ggml_v_expf: n = round(x log2 e) by the 1.5 * 2^23
 * trick, b = x - n ln 2 in two fused steps, a degree-5 polynomial in fused
 * multiply-adds, scaled by 2^n (as vscalefps: one rounding, gradual
 * underflow); |n| > 192 gives 0 or +inf.  Written with fmaf, so the AVX2
 * copy gives the same bits. */
#define REALM_EXP_SHIFT 0x1.8p23f
#define REALM_EXP_LOG2E 0x1.715476p+0f
#define REALM_EXP_LN2_HI 0x1.62e4p-1f
#define REALM_EXP_LN2_LO 0x1.7f7d1cp-20f
#define REALM_EXP_C5 0x1.0e4020p-7f
#define REALM_EXP_C4 0x1.573e2ep-5f
#define REALM_EXP_C3 0x1.555e66p-3f
#define REALM_EXP_C2 0x1.fffdb6p-2f
#define REALM_EXP_C1 0x1.ffffecp-1f

static inline float realm_pow2i(int e) { /* 2^e for -126 <= e <= 127 */
    const uint32_t bits = (uint32_t)(e + 127) << 23;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
}

static inline float realm_expf(float x) {
    const float z = __builtin_fmaf(x, REALM_EXP_LOG2E, REALM_EXP_SHIFT);
    const float n = z - REALM_EXP_SHIFT;
    const float b = __builtin_fmaf(-n, REALM_EXP_LN2_LO, __builtin_fmaf(-n, REALM_EXP_LN2_HI, x));
    const float u = b * b;
    const float j = __builtin_fmaf(__builtin_fmaf(__builtin_fmaf(REALM_EXP_C5, b, REALM_EXP_C4), u,
                                                  __builtin_fmaf(REALM_EXP_C3, b, REALM_EXP_C2)),
                                   u, __builtin_fmaf(REALM_EXP_C1, b, 1.0f));
    if (__builtin_fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : __builtin_inff();
    if (n != n) return n;
    /* j * 2^n in two exact-or-final steps: 2^a, 2^(n - a) both normal */
    const float a = __builtin_floorf(n * 0.5f);
    return (j * realm_pow2i((int)a)) * realm_pow2i((int)(n - a));
}

#endif
