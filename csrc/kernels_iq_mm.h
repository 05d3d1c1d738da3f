/* Dot-product kernels of the IQ, TQ and MXFP4 weights (realm_dot_fn, matmul.h): scalar
 * references (matmul_iq_ref.c: IQ4_NL, IQ4_XS, MXFP4; matmul_iq2_ref.c: IQ2_XXS,
 * IQ2_XS, IQ2_S; matmul_iq3_ref.c: IQ3_XXS, IQ3_S;
 * matmul_iq1_ref.c: IQ1_S, IQ1_M; matmul_tq_ref.c: TQ1_0, TQ2_0)
 * and AVX2 kernels (the *_avx2.c beside them, defined on x86-64 only) and NEON ones of
 * IQ4_NL, IQ4_XS and MXFP4 (matmul_neon.c, aarch64 only) computing the same floats, bit
 * for bit.  The *_whole kernels multiply as llama.cpp multiplies the
 * matrices it repacks (realm_whole_blocks). */
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

/* NEON (matmul_neon.c, aarch64 only) */
void realm_iq4_nl_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq4_nl_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq4_xs_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_mxfp4_dot_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_mxfp4_dot_whole_neon(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

/* The IQ2 formats against Q8_K (matmul_iq2_ref.c, matmul_iq2_avx2.c). */
void realm_iq2_xxs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq2_xs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq2_s_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

void realm_iq2_xxs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq2_xs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq2_s_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

/* IQ3_XXS and IQ3_S against Q8_K: matmul_iq3_ref.c, matmul_iq3_avx2.c. */
void realm_iq3_xxs_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq3_s_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq3_xxs_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq3_s_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

/* IQ1_S and IQ1_M against Q8_K: matmul_iq1_ref.c, matmul_iq1_avx2.c. */
void realm_iq1_s_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq1_m_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq1_s_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_iq1_m_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

/* TQ1_0 and TQ2_0 against Q8_K: matmul_tq_ref.c, matmul_tq_avx2.c. */
void realm_tq1_0_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_tq2_0_dot_ref(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_tq1_0_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);
void realm_tq2_0_dot_avx2(int64_t nb, const void *w, const realm_act_group *a, int ntok, float *y, int64_t ys);

/* Several rows per call (realm_dot_rows_fn), with AVX-512 VNNI: the floats of the row kernels. */
void realm_iq4_nl_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                                  int64_t ys);
void realm_iq4_xs_rows_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                            int64_t ys);
void realm_mxfp4_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                                 int64_t ys);
void realm_q4_0_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,
                                int64_t ys);

#endif
