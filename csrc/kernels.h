/* Every format's kernels, named realm_<format>_<kind>_<path>: the rows of the
 * table in traits.c point at them, and nothing else calls them.
 *   to_float  row dequantizer (realm_to_float_fn): dequant_ref.c, dequant_avx2.c,
 *             dequant_neon.c (dequant_iq_*.c, declared in kernels_iq.h, for IQ/TQ/MXFP4)
 *   dot       dot product of a weight row with a group of activation rows
 *             (realm_dot_fn): matmul_ref.c, matmul_avx2.c (matmul_dot32.h for
 *             the 32-value formats, once plain AVX2 and once with AVX-512 VNNI),
 *             matmul_neon.c
 *   dot_whole the same as llama.cpp multiplies the matrices it repacks
 *   rows      several weight rows per call (realm_dot_rows_fn), AVX-512 VNNI: the 32-value
 *             formats' in matmul_dot32_rows.h, the K-quants' in matmul_k_vnni.c
 * Paths: ref (scalar, everywhere), avx2 and vnni (x86-64 only, chosen at run
 * time), neon (aarch64 only).  A path's functions exist only where its file
 * compiles them; traits.c names them under the same conditions. */
#ifndef REALM_KERNELS_H
#define REALM_KERNELS_H

#include "kernels_iq.h"    /* the IQ, TQ and MXFP4 formats' row dequantizers */
#include "kernels_iq_mm.h" /* and the IQ4_NL, IQ4_XS and MXFP4 dot kernels */
#include "matmul.h"

#define REALM_TO_FLOAT(name) void name(const void *src, float *dst, int64_t nblocks)
#define REALM_DOT(name) void name(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys)
#define REALM_DOT_ROWS(name) \
    void name(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y, int64_t ys)

/* ---- row dequantizers ---- */

REALM_TO_FLOAT(realm_f32_to_float_ref); /* a copy; no SIMD row */
REALM_TO_FLOAT(realm_f16_to_float_ref);
REALM_TO_FLOAT(realm_bf16_to_float_ref);
REALM_TO_FLOAT(realm_q4_0_to_float_ref);
REALM_TO_FLOAT(realm_q4_1_to_float_ref);
REALM_TO_FLOAT(realm_q5_0_to_float_ref);
REALM_TO_FLOAT(realm_q5_1_to_float_ref);
REALM_TO_FLOAT(realm_q8_0_to_float_ref);
REALM_TO_FLOAT(realm_q2_K_to_float_ref);
REALM_TO_FLOAT(realm_q3_K_to_float_ref);
REALM_TO_FLOAT(realm_q4_K_to_float_ref);
REALM_TO_FLOAT(realm_q5_K_to_float_ref);
REALM_TO_FLOAT(realm_q6_K_to_float_ref);
REALM_TO_FLOAT(realm_q8_K_to_float_ref);

REALM_TO_FLOAT(realm_f16_to_float_avx2);
REALM_TO_FLOAT(realm_bf16_to_float_avx2);
REALM_TO_FLOAT(realm_f32_to_float_stream_avx2); /* streaming stores (to_float_stream) */
REALM_TO_FLOAT(realm_f16_to_float_stream_avx2);
REALM_TO_FLOAT(realm_bf16_to_float_stream_avx2);
REALM_TO_FLOAT(realm_q4_0_to_float_avx2);
REALM_TO_FLOAT(realm_q4_1_to_float_avx2);
REALM_TO_FLOAT(realm_q5_0_to_float_avx2);
REALM_TO_FLOAT(realm_q5_1_to_float_avx2);
REALM_TO_FLOAT(realm_q8_0_to_float_avx2);
REALM_TO_FLOAT(realm_q2_K_to_float_avx2);
REALM_TO_FLOAT(realm_q3_K_to_float_avx2);
REALM_TO_FLOAT(realm_q4_K_to_float_avx2);
REALM_TO_FLOAT(realm_q5_K_to_float_avx2);
REALM_TO_FLOAT(realm_q6_K_to_float_avx2);
REALM_TO_FLOAT(realm_q8_K_to_float_avx2);

REALM_TO_FLOAT(realm_f16_to_float_neon);
REALM_TO_FLOAT(realm_bf16_to_float_neon);
REALM_TO_FLOAT(realm_q4_0_to_float_neon);
REALM_TO_FLOAT(realm_q4_1_to_float_neon);
REALM_TO_FLOAT(realm_q5_0_to_float_neon);
REALM_TO_FLOAT(realm_q5_1_to_float_neon);
REALM_TO_FLOAT(realm_q8_0_to_float_neon);
REALM_TO_FLOAT(realm_q2_K_to_float_neon);
REALM_TO_FLOAT(realm_q3_K_to_float_neon);
REALM_TO_FLOAT(realm_q4_K_to_float_neon);
REALM_TO_FLOAT(realm_q5_K_to_float_neon);
REALM_TO_FLOAT(realm_q6_K_to_float_neon);
REALM_TO_FLOAT(realm_q8_K_to_float_neon);

/* ---- dot products (Q8_K has none: it is an activation format) ---- */

REALM_DOT(realm_f32_dot_ref);
REALM_DOT(realm_f16_dot_ref);
REALM_DOT(realm_bf16_dot_ref);
REALM_DOT(realm_q4_0_dot_ref);
REALM_DOT(realm_q4_0_dot_whole_ref);
REALM_DOT(realm_q4_1_dot_ref);
REALM_DOT(realm_q5_0_dot_ref);
REALM_DOT(realm_q5_1_dot_ref);
REALM_DOT(realm_q8_0_dot_ref);
REALM_DOT(realm_q2_K_dot_ref);
REALM_DOT(realm_q2_K_dot_whole_ref);
REALM_DOT(realm_q3_K_dot_ref);
REALM_DOT(realm_q4_K_dot_ref);
REALM_DOT(realm_q4_K_dot_whole_ref);
REALM_DOT(realm_q5_K_dot_ref);
REALM_DOT(realm_q6_K_dot_ref);

REALM_DOT(realm_f32_dot_avx2);
REALM_DOT(realm_f16_dot_avx2);
REALM_DOT(realm_bf16_dot_avx2);
REALM_DOT(realm_q4_0_dot_avx2);
REALM_DOT(realm_q4_0_dot_whole_avx2);
REALM_DOT(realm_q4_1_dot_avx2);
REALM_DOT(realm_q5_0_dot_avx2);
REALM_DOT(realm_q5_1_dot_avx2);
REALM_DOT(realm_q8_0_dot_avx2);
REALM_DOT(realm_q2_K_dot_avx2);
REALM_DOT(realm_q2_K_dot_whole_avx2);
REALM_DOT(realm_q3_K_dot_avx2);
REALM_DOT(realm_q4_K_dot_avx2);
REALM_DOT(realm_q4_K_dot_whole_avx2);
REALM_DOT(realm_q5_K_dot_avx2);
REALM_DOT(realm_q6_K_dot_avx2);

/* NEON (matmul_neon.c) */
REALM_DOT(realm_f32_dot_neon);
REALM_DOT(realm_f16_dot_neon);
REALM_DOT(realm_q4_0_dot_neon);
REALM_DOT(realm_q4_0_dot_whole_neon);
REALM_DOT(realm_q4_1_dot_neon);
REALM_DOT(realm_q5_0_dot_neon);
REALM_DOT(realm_q5_1_dot_neon);
REALM_DOT(realm_q8_0_dot_neon);
REALM_DOT(realm_q2_K_dot_neon);
REALM_DOT(realm_q2_K_dot_whole_neon);
REALM_DOT(realm_q3_K_dot_neon);
REALM_DOT(realm_q4_K_dot_neon);
REALM_DOT(realm_q4_K_dot_whole_neon);
REALM_DOT(realm_q5_K_dot_neon);
REALM_DOT(realm_q6_K_dot_neon);

/* AVX-512 VNNI row kernels: the 32-value formats (the K-quants' are rows kernels, below). */
REALM_DOT(realm_q4_0_dot_vnni);
REALM_DOT(realm_q4_0_dot_whole_vnni);
REALM_DOT(realm_q4_1_dot_vnni);
REALM_DOT(realm_q5_0_dot_vnni);
REALM_DOT(realm_q5_1_dot_vnni);
REALM_DOT(realm_q8_0_dot_vnni);
/* the same products, several rows per call (realm_dot_rows_fn) */
REALM_DOT_ROWS(realm_q4_0_rows_vnni);
REALM_DOT_ROWS(realm_q4_1_rows_vnni);
REALM_DOT_ROWS(realm_q5_0_rows_vnni);
REALM_DOT_ROWS(realm_q5_1_rows_vnni);
REALM_DOT_ROWS(realm_q8_0_rows_vnni);
/* ... 16 rows in the lanes of 512-bit registers, for many tokens (realm_dot_wide_fn) */
void realm_q4_0_wide_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok, float *y,
                          int64_t ys, void *scratch);
void realm_q4_0_wide_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok,
                                float *y, int64_t ys, void *scratch);
void realm_iq4_nl_wide_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok,
                                  float *y, int64_t ys, void *scratch);
void realm_mxfp4_wide_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok,
                                 float *y, int64_t ys, void *scratch);
void realm_q4_1_wide_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok, float *y,
                          int64_t ys, void *scratch);
void realm_q5_0_wide_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok, float *y,
                          int64_t ys, void *scratch);
void realm_q5_1_wide_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok, float *y,
                          int64_t ys, void *scratch);
void realm_q8_0_wide_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok, float *y,
                          int64_t ys, void *scratch);

/* Several rows per call with AVX-512 VNNI (realm_dot_rows_fn; matmul_k_vnni.c): the floats
 * of the rows' AVX2 kernels. */
REALM_DOT_ROWS(realm_q3_K_rows_vnni);
REALM_DOT_ROWS(realm_q4_K_rows_whole_vnni);
void realm_q2_K_wide_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok,
                                float *y, int64_t ys, void *scratch);
void realm_q4_K_wide_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok,
                                float *y, int64_t ys, void *scratch);
REALM_DOT_ROWS(realm_q5_K_rows_vnni);
REALM_DOT_ROWS(realm_q6_K_rows_vnni);

/* AVX-512 F, BW, VL, BF16 (matmul_avx512.c): the F16 and BF16 weights. */
REALM_DOT(realm_f16_dot_avx512);
REALM_DOT(realm_bf16_dot_avx512);

#undef REALM_TO_FLOAT
#undef REALM_DOT
#undef REALM_DOT_ROWS

#endif
