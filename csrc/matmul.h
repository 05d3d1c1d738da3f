/* Quantized matrix products Y = X W^T that never expand W to f32.
 *
 * W is [n_out rows][n_in] in GGUF blocks (a row is n_in / block_size blocks),
 * X is [n_tok][n_in] f32, Y is [n_tok][n_out] f32.  As in llama.cpp, X is first
 * quantized to 8 bits per element ("activations"): blocks of 32 for the
 * 32-element formats, blocks of 256 with per-16 sums for the K-quants.  The
 * kernels then take integer dot products per block (exact) and accumulate in
 * f32.  F32 weights take the f32 activations as they are; F16 / BF16 weights
 * take them rounded to f16 / bf16, as llama.cpp does.
 *
 * Numerics: llama.cpp's.  The quantizer and the float steps are those of
 * llama.cpp's CPU kernels for x86 (ggml's quantize_row_q8_0 / _q8_1 / _q8_K,
 * ggml_vec_dot_*_q8_*, and the repacked ggml_gemv_*_8x8 for the matrices it
 * repacks), so for one token y equals llama.cpp's bit for bit (tests compare
 * with its exported kernels).  Integer sums are exact; "lane k" below is the
 * sum of values 4k..4k+3 of each 32-value group (maddubs + madd, or VNNI's
 * dpbusd), times the group's 16-value scale for the K-quants; fma is fused.
 *   Q4_1, Q5_0, Q5_1, Q8_0 (and Q4_0 matrices of other row counts), 8 lanes
 *     per token: acc_k = fma(dw_b * dx_b, lane_k, acc_k) block by block;
 *     Q4_1 / Q5_1 also summs = fma(m_b, s_b, summs) with the activations'
 *     block sum s_b (q8.c); y = hsum8(acc) (+ summs), hsum8 ggml's
 *     ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)).
 *   Q3_K, Q5_K, Q6_K (and Q2_K, Q4_K of other row counts): acc_k = fma(dx_b *
 *     dw_b, lane_k, acc_k), each lane carrying its own values' offsets (Q6_K:
 *     -32 * the 16-value sums of sub-blocks 2k, 2k+1); minimums: Q2_K lanes
 *     fma(-(dx * dmin), min lane, acc_k) before the values', Q4_K 4 lanes of
 *     fma(-(dx * dmin), ...) (32-value sub-blocks 2i, 2i+1), Q5_K one sum
 *     summs = fma(-(dx * dmin), imin, summs); y = hsum8(acc) + the minimums'.
 *   IQ4_NL, MXFP4 (values from a 16-entry code book; MXFP4's scale the E8M0
 *     one halved): as Q8_0 but even blocks into acc, odd ones into acc',
 *     y = hsum8(acc + acc'), and a last, unpaired block's whole sum added
 *     unfused: y = y + (dw * dx) * isum.
 *   IQ4_XS: lane_k = sum over its 8 sub-blocks of (ls - 32) * their lane k,
 *     acc_k = fma(dw_b * dx_b, lane_k, acc_k) per block; y = hsum8(acc).
 *   IQ2_XXS, IQ2_XS, IQ2_S: lane_k = sum over the 8 sub-blocks of (2 ls + 1) *
 *     their lane k (ls per 16 values; IQ2_XXS one per 32), acc_k = fma(dw_b * dx_b,
 *     lane_k, acc_k) per block; y = 0.125f * hsum8(acc).
 *   IQ3_XXS, IQ3_S: as IQ4_XS, the sub-blocks weighted 2 ls + 1 (values: signed grid
 *     bytes); IQ3_XXS's y = 0.25f * hsum8(acc).
 *   IQ1_S: as IQ3_S (grid values -1, 0, 1); the deltas apart: e_b = sum over
 *     sub-blocks of +-w * their two bsums, acc1 = fma(dw_b * dx_b, e_b, acc1);
 *     y = hsum8(acc) + 0.125f * acc1.  IQ1_M: weights per 16 values, the deltas'
 *     +-w * (lane k of q) lanes into acc' as the values' into acc;
 *     y = fma(0.125f, hsum8(acc'), hsum8(acc)).
 *   TQ1_0, TQ2_0: lane_k = sum of (value + 1) * q over positions 4k..4k+3 of
 *     each 32-value run, less bsums 2k and 2k+1; acc_k = fma(lane_k, dw_b *
 *     dx_b, acc_k) per block; y = hsum8(acc).
 *   Q4_0, Q4_K, Q2_K, IQ4_NL, MXFP4 matrices with a multiple of 8 rows
 *     (llama.cpp repacks them): whole-block sums, acc = fma(isum_b, dw_b *
 *     dx_b, acc) and accm = fma(imin_b, dmin_b * dx_b, accm); y = acc - accm.
 * So the scalar and AVX2 paths give the same bits, and a token's result
 * depends neither on the batch it is in, nor on the tiling, nor on the thread
 * count (llama.cpp's own batched GEMMs, tinyBLAS and the tiled and repacked
 * ones, sum in other orders: realm matches its one-token path).
 * F32, F16, BF16 weights: ggml_vec_dot_f32 / _f16 / _bf16 of an x86 build with
 * AVX-512F and AVX512_BF16, as GCC compiles them (matmul_float.h), with
 * np = n - n % 64 and x the activations (F16: rounded to f16, by vcvtps2ph;
 * BF16: rounded to bf16, by ggml's integer rounding, NaN made quiet):
 *   F32, F16: element 64 i + 16 j + l goes to sum j (of 4), lane l (of 16),
 *     acc_jl = fma(w, x, acc_jl); then v_l = (acc_0l + acc_2l) + (acc_1l + acc_3l)
 *     and s = hsum16(v), hsum16 _mm512_reduce_add_ps's tree: h_k = v_k+8 + v_k,
 *     q_k = h_k+4 + h_k, s = (q0 + q2) + (q1 + q3).  Then the leftovers
 *     [np, n): F32 in f32, s = s + w x for the first (n - np) - (n - np) % 8
 *     (GCC's vectorized loop rounds the products), s = fma(w, x, s) for the
 *     rest; F16 in double, d = s, d += (double)(w x), y = (float)d.
 *   BF16: two accumulators of 16 lanes, c1 over values 64 i .. 64 i + 31, c2
 *     over the next 32, as vdpbf16ps: lane j of a step takes the pair (2j, 2j+1),
 *     t = fma(w, x, t) for the odd one, then the even one, each input subnormal
 *     read as zero and each result tiny after rounding (x86's FTZ) flushed to
 *     zero.  d = 0.0, d += hsum16(c1), d += hsum16(c2), then the leftovers
 *     d += (double)(w x) (the product in f32), y = (float)d.
 * On every path (the AVX-512 kernels use vdpbf16ps itself; tests compare with
 * llama.cpp's exported ggml_vec_dot_f32 / _f16 / _bf16).
 *
 * Threads.  realm_matmul / realm_matmul_q / realm_quantize_act open their own
 * OpenMP parallel region.  The *_ws variants contain only work-sharing loops:
 * call them from EVERY thread of an enclosing parallel region (a whole-layer
 * forward pass keeps one region and pays one barrier per op), or from serial
 * code (then they run on the calling thread). */
#ifndef REALM_MATMUL_H
#define REALM_MATMUL_H

#include "dequant.h"

#define REALM_EINVAL (-3) /* a size or argument the kernels cannot take */
#define REALM_ENOMEM (-4) /* scratch allocation failed */

/* Tokens handled together by one kernel call: each weight block is decoded
 * once and multiplied into this many activation rows. */
#define REALM_TOK_GROUP 8

/* Layout of a quantized activation buffer for n_tok rows of n_in values
 * (opaque to callers; they size it with realm_act_size):
 *   int8  qs[n_tok][n_in]                      the quantized values, row-major
 *   int16 bsums[n_tok][n_in / 16]              (Q8_K) sums of each 16 values
 *   float s[n_groups][blocks][REALM_TOK_GROUP] (Q8) f16(d' * sum of the block's values)
 *   float d[n_groups][blocks][REALM_TOK_GROUP] block scales
 *   int32 o[n_tok][n_in / 4]                   -128 * (the sum of each 4 values)
 * with n_groups = ceil(n_tok / REALM_TOK_GROUP): a group's scalars sit token by
 * token for each block (realm_act_slot), the slots of a last, partial group's
 * missing tokens are zero.  Sections start on 64-byte boundaries.  For
 * REALM_ACT_F32 the "buffer" is the f32 rows themselves; REALM_ACT_F16 holds
 * the rows rounded to f16 as f32 values [n_tok][n_in], REALM_ACT_BF16 the rows
 * rounded to bf16 as uint16 [n_tok][n_in], then (64-byte aligned) uint8
 * tiny[n_tok], 1 where the row holds a nonzero value below 2^-50 in magnitude
 * (the AVX2 BF16 kernel's shortcut needs none: matmul_avx2.c). */

/* Activation type for weight type `wtype` (enum realm_act_type, traits.h: its
 * row's act), or REALM_EUNSUPPORTED where it has no dot kernel. */
int realm_act_type(int wtype);

/* Bytes of the activation buffer for (act, n_tok, n_in); negative
 * (REALM_EINVAL) where n_in is not a whole number of the act's blocks. */
int64_t realm_act_size(int act, int64_t n_tok, int64_t n_in);

/* Quantize x [n_tok][n_in] into buf (realm_act_size bytes).  For
 * REALM_ACT_F32 this copies x; REALM_ACT_F16 / _BF16 round each value (see
 * the layout above).  Per block, as ggml's quantize_row_q8_0 / _q8_1
 * (Q8) and quantize_row_q8_K (Q8_K), with amax = max|x| (NaNs skipped):
 *   Q8:   d' = amax / 127, d = f16(d'), q = rne(x * (127 / amax)),
 *         s = f16(d' * sum(q))  (the block sum ggml's Q8_1 keeps);
 *   Q8_K: q = rne(x * (127 / amax)), d = 1 / (127 / amax);
 * q clamped to [-127, 127] (NaN inputs give -127); a block with amax below
 * 2^-100 is stored as zeros.  (ggml's Q8_K scales by -127/max, max the signed
 * value of largest magnitude: q and d both change sign, every product the
 * kernels form is the same.) */
int realm_quantize_act(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int nthreads, int isa);
int realm_quantize_act_ws(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int isa);

/* y = x W^T from activations already in `act_buf` (made by realm_quantize_act
 * with act == realm_act_type(wtype), or the f32 rows for REALM_ACT_F32).
 * Several weights that share an input (Q/K/V, gate/up) share one buffer. */
int realm_matmul_q(int wtype, const void *w, int64_t n_out, int64_t n_in, const void *act_buf, int64_t n_tok,
                   float *y, int nthreads, int isa);
int realm_matmul_q_ws(int wtype, const void *w, int64_t n_out, int64_t n_in, const void *act_buf,
                      int64_t n_tok, float *y, int isa);

/* y = x W^T from f32 x; quantizes x into a scratch buffer it allocates
 * (size bounded by x's own size).  Returns 0 or a negative REALM_E* code. */
int realm_matmul(int wtype, const void *w, int64_t n_out, int64_t n_in, const float *x, int64_t n_tok, float *y,
                 int nthreads, int isa);

/* ---- internal to the kernels (matmul*.c, q8.c) ---- */

/* One group of up to REALM_TOK_GROUP activation rows, as a kernel sees them. */
typedef struct realm_act_group {
    const int8_t *qs;     /* row 0 of the group; row t at qs + t * n_in */
    const int16_t *bsums; /* Q8_K: row 0; row t at bsums + t * (n_in / 16) */
    const float *s;       /* Q8: the group's block sums (see realm_act_slot) */
    const float *d;       /* the group's block scales */
    const int32_t *o;     /* row 0's offset sums; row t at o + t * (n_in / 4) */
    const float *xf;      /* F32, F16: row 0; row t at xf + t * n_in */
    const uint16_t *xh;   /* BF16: row 0; row t at xh + t * n_in */
    const uint8_t *xtiny; /* BF16: row t's tiny flag at xtiny[t] */
    int64_t n_in;
} realm_act_group;

/* The dot kernels (realm_dot_fn, traits.h) are the rows' dot_ref / dot_avx2 /
 * dot_vnni, indexed [whole]: whole = 1 multiplies as llama.cpp multiplies the
 * matrices it repacks (see the numerics paragraph above), which is
 * realm_whole_blocks(wtype, n_out): the row is repacked and n_out % 8 == 0. */
int realm_whole_blocks(int wtype, int64_t n_out);

/* Whether the AVX2 kernels of the 32-value formats use AVX-512 VNNI's dpbusd
 * (the same bits; where the CPU has it).  enable: 1 use it where available,
 * 0 do not (tests of the plain AVX2 kernels), -1 only ask. */
int realm_matmul_vnni(int enable);

/* Whether the F16 and BF16 weights use the AVX-512 kernels (the same
 * bits; where the CPU has AVX-512 F, BW, VL and BF16).  enable as for
 * realm_matmul_vnni. */
int realm_matmul_avx512(int enable);

/* Row quantizers: n_tok rows into the buffer layout above, rows [t0, t1).
 * realm_round_rows_*: REALM_ACT_F16 / _BF16. */
void realm_q8_rows_ref(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1);
void realm_q8_rows_avx2(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1);
void realm_round_rows_ref(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1);
void realm_round_rows_avx2(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1);

/* The group view of rows [G g, G g + G) of an activation buffer (G = REALM_TOK_GROUP). */
realm_act_group realm_act_view(int act, const void *buf, int64_t n_tok, int64_t n_in, int64_t g);

/* Blocks of the act's type in a row of n_in. */
static inline int64_t realm_act_blocks(int act, int64_t n_in) { return n_in / (act == REALM_ACT_Q8 ? 32 : 256); }
/* Position of (token t % REALM_TOK_GROUP = tg, block b) in a group's scalars. */
static inline int64_t realm_act_slot(int tg, int64_t b) { return b * REALM_TOK_GROUP + tg; }

/* Section offsets of an activation buffer (bytes from its start). */
typedef struct {
    int64_t bsums, s, d, o, tiny, total;
} realm_act_layout;
realm_act_layout realm_act_layout_of(int act, int64_t n_tok, int64_t n_in);

/* ggml's hsum_float_8 on 8 floats (the scalar kernels): the two halves, then pairs,
 * then the last two. */
static inline float realm_hsum8f(const float *a) {
    float t[4];
    for (int k = 0; k < 4; k++) t[k] = a[k + 4] + a[k];
    return (t[0] + t[2]) + (t[1] + t[3]);
}

/* max|x| below this: the block is stored as zeros (1/d would overflow). */
#define REALM_Q8_TINY 0x1p-100f

#endif
