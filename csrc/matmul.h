/* Quantized matrix products Y = X W^T that never expand W to f32.
 *
 * W is [n_out rows][n_in] in GGUF blocks (a row is n_in / block_size blocks),
 * X is [n_tok][n_in] f32, Y is [n_tok][n_out] f32.  As in llama.cpp, X is first
 * quantized to 8 bits per element ("activations"): blocks of 32 for the
 * 32-element formats, blocks of 256 with per-16 sums for the K-quants.  The
 * kernels then take integer dot products per block (exact) and accumulate in
 * f32; F32/F16/BF16 weights take the f32 activations as they are.
 *
 * Numerics.  Each block's integer dot product (weight values x activation
 * bytes) is exact.  The float steps are fixed, so the scalar and AVX2 paths
 * give the same bits, and a token's result depends neither on the batch it
 * is in, nor on the tiling, nor on the thread count:
 *   32-value formats: block b adds (dw_b * dx_b) * (float)isum_b to partial sum
 *     b % 4 (blocks padded with zero terms to a multiple of 4; formats with a
 *     block minimum keep a second set, adding (m_b * dx_b) * (float)xsum_b);
 *     y = (s0 + s1) + (s2 + s3), where s_k = acc_k (+ accm_k).
 *   K-quants: in block order, acc = acc + (d * dx) * (float)isum and
 *     accm = accm + (dmin * dx) * (float)imin; y = acc - accm.
 *   Products are rounded separately (no fused multiply-add).
 * F32/F16/BF16 weights multiply the f32 activations with FMA in four partial
 * sums of 8 lanes per token; the scalar reference sums sequentially, so those
 * agree to rounding, not bit for bit.
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

/* What a weight type multiplies against. */
enum realm_act_type {
    REALM_ACT_F32 = 0,  /* f32 rows as given (F32, F16, BF16 weights) */
    REALM_ACT_Q8 = 1,   /* int8 blocks of 32, one f32 scale each (Q4_0 .. Q8_0) */
    REALM_ACT_Q8_K = 2, /* int8 blocks of 256 with sums per 16 (the K-quants) */
};

/* Tokens handled together by one kernel call: each weight block is decoded
 * once and multiplied into this many activation rows. */
#define REALM_TOK_GROUP 8

/* Layout of a quantized activation buffer for n_tok rows of n_in values
 * (opaque to callers; they size it with realm_act_size):
 *   int8  qs[n_tok][n_in]                      the quantized values, row-major
 *   int16 bsums[n_tok][n_in / 16]              (Q8_K) sums of each 16 values
 *   int32 sums[n_groups][table]                (Q8) sum of each block's values
 *   float d[n_groups][table]                   block scales
 * with n_groups = ceil(n_tok / 4).  A group's table holds (token t of the
 * group, block b) at realm_act_slot(): for Q8 in 4x4 tiles [b / 4][t][b % 4]
 * (4 consecutive blocks of a token side by side, as the kernels reduce them),
 * for Q8_K as [b][t].  Slots of padding blocks (up to a multiple of 4) and of
 * a last, partial group's missing tokens are zero.  Sections start on 64-byte
 * boundaries.  For REALM_ACT_F32 the "buffer" is the f32 rows themselves. */

/* Activation type for weight type `wtype`, or REALM_EUNSUPPORTED. */
int realm_act_type(int wtype);

/* Bytes of the activation buffer for (act, n_tok, n_in); negative
 * (REALM_EINVAL) where n_in is not a whole number of the act's blocks. */
int64_t realm_act_size(int act, int64_t n_tok, int64_t n_in);

/* Quantize x [n_tok][n_in] into buf (realm_act_size bytes).  For
 * REALM_ACT_F32 this copies x.  Per block: d = max|x| / 127 (NaNs skipped),
 * q = round-to-nearest-even(x * (1/d)) clamped to [-127, 127]; NaN inputs
 * give -127; a block with max|x| below 2^-100 is stored as zeros. */
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
typedef struct {
    const int8_t *qs;     /* row 0 of the group; row t at qs + t * n_in */
    const int16_t *bsums; /* Q8_K: row 0; row t at bsums + t * (n_in / 16) */
    const int32_t *sums;  /* Q8: the group's table (see realm_act_slot) */
    const float *d;       /* the group's table of scales */
    const float *xf;      /* F32: row 0; row t at xf + t * n_in */
    int64_t n_in;
} realm_act_group;

/* Dot products of one weight row (nb blocks at w) with the first ntok
 * (1..REALM_TOK_GROUP) rows of a group: y[t * ys] for t < ntok. */
typedef void (*realm_dot_fn)(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

realm_dot_fn realm_dot_ref(int wtype);
realm_dot_fn realm_dot_avx2(int wtype);

/* Row quantizers: n_tok rows into the buffer layout above, rows [t0, t1). */
void realm_q8_rows_ref(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1);
void realm_q8_rows_avx2(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1);

/* The group view of rows [4g, 4g + 4) of an activation buffer. */
realm_act_group realm_act_view(int act, const void *buf, int64_t n_tok, int64_t n_in, int64_t g);

/* Blocks of the act's type in a row of n_in, and the padded count a group's
 * table has room for. */
static inline int64_t realm_act_blocks(int act, int64_t n_in) { return n_in / (act == REALM_ACT_Q8 ? 32 : 256); }
static inline int64_t realm_act_padded(int act, int64_t n_in) {
    const int64_t nb = realm_act_blocks(act, n_in);
    return act == REALM_ACT_Q8 ? (nb + 3) & ~(int64_t)3 : nb;
}
/* Position of (token t % 4 = t4, block b) in a group's table. */
static inline int64_t realm_act_slot(int act, int t4, int64_t b) {
    return act == REALM_ACT_Q8 ? (b >> 2) * (4 * REALM_TOK_GROUP) + t4 * 4 + (b & 3) : b * REALM_TOK_GROUP + t4;
}

/* Section offsets of an activation buffer (bytes from its start). */
typedef struct {
    int64_t bsums, sums, d, total;
} realm_act_layout;
realm_act_layout realm_act_layout_of(int act, int64_t n_tok, int64_t n_in);

/* max|x| below this: the block is stored as zeros (1/d would overflow). */
#define REALM_Q8_TINY 0x1p-100f

#endif
