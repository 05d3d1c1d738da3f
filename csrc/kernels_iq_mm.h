/* Dot-product kernels of IQ4_NL, IQ4_XS and MXFP4 weights (realm_dot_fn, matmul.h):
 * scalar references (matmul_iq_ref.c) and AVX2 kernels (matmul_iq_avx2.c, defined on
 * x86-64 only) computing the same floats, bit for bit.  The *_whole kernels multiply
 * as llama.cpp multiplies the matrices it repacks (realm_whole_blocks). */
#ifndef REALM_KERNELS_IQ_MM_H
#define REALM_KERNELS_IQ_MM_H

#include "matmul.h"

/* The last, unpaired block of the IQ4_NL / MXFP4 vec_dot kernels: s + d * isum, two
 * roundings (llama.cpp's scalar tail, compiled without contraction). */
#define REALM_IQ_TAIL(d, isum, s) ((s) + (d) * (isum))

void realm_iq4_nl_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq4_nl_dot_whole_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq4_xs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_mxfp4_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_mxfp4_dot_whole_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

void realm_iq4_nl_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq4_nl_dot_whole_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq4_xs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_mxfp4_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_mxfp4_dot_whole_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

/* Several rows per call (realm_dot_rows_fn), with AVX-512 VNNI: the floats of the row kernels. */
void realm_iq4_nl_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                                  int64_t ys);
void realm_iq4_xs_rows_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                            int64_t ys);
void realm_mxfp4_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                                 int64_t ys);

#endif
