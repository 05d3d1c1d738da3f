/* The transformer's other operations, in f32: RMSNorm, RoPE, attention over
 * a KV cache, gated activations, softmax, residual add, f32 -> f16.
 * Scalar code is the reference; AVX2 versions are chosen at run time where
 * they pay (exp-based ops, attention, f16 conversion).  Element-wise ops and
 * softmax give bit-identical results on both paths (the same float steps,
 * the same exp approximation); attention's dot products are summed in a
 * different order and agree to rounding.  Return 0 or a negative REALM_E*. */
#ifndef REALM_OPS_H
#define REALM_OPS_H

#include "matmul.h"

/* y = x / sqrt(mean(x^2) + eps) * w for each of `rows` rows of n values (w
 * may be NULL: no weight; y may be x).  As llama.cpp: squares summed in double,
 * then (x * scale) * w.  Gemma's GGUF norm weights already hold the +1. */
int realm_rmsnorm(const float *x, const float *w, int64_t rows, int64_t n, float eps, float *y);

/* RoPE.  The table holds, per token t and pair i < n_rot/2, cos and sin of
 * theta = pos[t] * freq_scale * base^(-2i / n_rot) (computed in double):
 * cs[t * n_rot + 2i] = cos, cs[t * n_rot + 2i + 1] = sin.  One table serves
 * every layer with the same base.  apply rotates, in x[n_tok][n_head][head_dim],
 * the first n_rot values of each head: pairs (2i, 2i+1) (normal, llama) or
 * (i, i + n_rot/2) (neox, gemma3 / qwen): a' = a cos - b sin, b' = a sin + b cos. */
#define REALM_MAX_ROT 1024
int realm_rope_table(const int32_t *pos, int64_t n_tok, int n_rot, float base, float freq_scale, float *cs);
int realm_rope_apply(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs, int neox);

/* Causal attention with grouped-query heads over a KV cache whose row j holds
 * position j.  Query t (at position pos[t] < n_kv) of head h reads kv head
 * h / (n_head / n_kv_head) and keys j with pos[t] - window < j <= pos[t]
 * (window <= 0: all j <= pos[t]).  out = softmax(scale * q k^T) v.
 * Element (j, kv head g, d) of K is k[j * kv_pos_stride + g * kv_head_stride + d]
 * (likewise V), stored as f32 or f16 (kv_type = REALM_TYPE_F32 / F16).
 * q and out are [n_tok][n_head * head_dim]. */
typedef struct {
    int n_head, n_kv_head, head_dim;
    int kv_type;
    int64_t kv_pos_stride, kv_head_stride; /* in elements */
    float scale;                           /* usually 1 / sqrt(head_dim) */
    int32_t window;
} realm_attn_params;

int realm_attention(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                    const void *v, int64_t n_kv, float *out, int nthreads, int isa);
int realm_attention_ws(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                       const void *v, int64_t n_kv, float *out, int isa);

/* out = silu(gate) * up and out = gelu(gate) * up, gelu the tanh form
 * (0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))), computed as
 * x / (1 + exp(-2u)); x >= 10 gives x and x <= -10 gives 0, as ggml).
 * out may alias gate or up. */
int realm_swiglu(const float *gate, const float *up, float *out, int64_t n, int isa);
int realm_geglu(const float *gate, const float *up, float *out, int64_t n, int isa);

/* In place, each of `rows` rows of n: exp(x - max) / sum (sum in double). */
int realm_softmax(float *x, int64_t rows, int64_t n, int isa);

/* y += x */
void realm_add(float *y, const float *x, int64_t n);

/* IEEE binary16, round to nearest even, as vcvtps2ph (NaNs made quiet). */
int realm_f32_to_f16(const float *x, uint16_t *y, int64_t n, int isa);

/* The exp the ops use (exposed for tests). */
int realm_exp(const float *x, float *y, int64_t n, int isa);

/* ---- internal to ops*.c ---- */

#define REALM_ATTN_CHUNK 64 /* keys scored per step of the online softmax */
#define REALM_ATTN_HEADS 8  /* query heads handled together (one kv head) */

/* Heads [h0, h1) (one kv head) of one query row q at keys [lo, hi]; out is
 * that token's output row. */
typedef void (*realm_attn_fn)(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                              int64_t hi, int h0, int h1, float *out);
void realm_attn_heads_ref(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                          int64_t hi, int h0, int h1, float *out);
void realm_attn_heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                           int64_t hi, int h0, int h1, float *out);

void realm_swiglu_avx2(const float *gate, const float *up, float *out, int64_t n);
void realm_geglu_avx2(const float *gate, const float *up, float *out, int64_t n);
void realm_exp_avx2(const float *x, float *y, int64_t n);
void realm_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n);

/* exp(x) with ~1 ulp error: Cody-Waite reduction by ln 2 and a degree-7
 * polynomial, in plain float steps (no fused multiply-add) so the AVX2 copy
 * gives the same bits.  Below ln(2^-150): 0; above ln(FLT_MAX): +inf. */
#define REALM_EXP_LO (-103.972076f)
#define REALM_EXP_HI 88.7228391f
#define REALM_LOG2E 1.44269504088896341f
#define REALM_LN2_HI 0.693359375f
#define REALM_LN2_LO (-2.12194440e-4f)
#define REALM_EXP_P0 1.9875691500e-4f
#define REALM_EXP_P1 1.3981999507e-3f
#define REALM_EXP_P2 8.3334519073e-3f
#define REALM_EXP_P3 4.1665795894e-2f
#define REALM_EXP_P4 1.6666665459e-1f
#define REALM_EXP_P5 5.0000001201e-1f

static inline float realm_expf(float x) {
    if (x != x) return x;
    if (x < REALM_EXP_LO) return 0.0f;
    if (x > REALM_EXP_HI) return __builtin_inff();
    const float n = __builtin_nearbyintf(x * REALM_LOG2E);
    float r = x - n * REALM_LN2_HI;
    r = r - n * REALM_LN2_LO;
    float p = REALM_EXP_P0;
    p = p * r + REALM_EXP_P1;
    p = p * r + REALM_EXP_P2;
    p = p * r + REALM_EXP_P3;
    p = p * r + REALM_EXP_P4;
    p = p * r + REALM_EXP_P5;
    p = p * (r * r) + r;
    p = p + 1.0f;
    /* 2^n as 2^a * 2^b, both normal, so n down to -150 scales without overflow */
    const float a = __builtin_floorf(n * 0.5f);
    const uint32_t ea = (uint32_t)((int32_t)a + 127) << 23, eb = (uint32_t)((int32_t)(n - a) + 127) << 23;
    float sa, sb;
    __builtin_memcpy(&sa, &ea, 4);
    __builtin_memcpy(&sb, &eb, 4);
    return (p * sa) * sb;
}

#endif
