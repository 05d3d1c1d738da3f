/* Row dequantizers of the IQ, TQ and MXFP4 formats: a scalar reference per format
 * (dequant_iq_ref.c), and AVX2 (dequant_iq_avx2.c, defined on x86-64 only) and NEON
 * (dequant_iq_neon.c, defined on aarch64 only) rows computing the same floats, bit for
 * bit.  Each dequantizes `nblocks` whole blocks, as a realm_to_float_fn. */
#ifndef REALM_KERNELS_IQ_H
#define REALM_KERNELS_IQ_H

#include "quants.h"

void realm_iq4_nl_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq4_nl_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq4_nl_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq4_xs_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq4_xs_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq4_xs_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_mxfp4_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_mxfp4_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_mxfp4_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_tq1_0_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_tq1_0_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_tq1_0_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_tq2_0_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_tq2_0_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_tq2_0_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq2_xxs_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq2_xxs_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq2_xxs_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq2_xs_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq2_xs_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq2_xs_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq2_s_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq2_s_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq2_s_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq3_xxs_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq3_xxs_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq3_xxs_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq3_s_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq3_s_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq3_s_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq1_s_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq1_s_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq1_s_to_float_neon(const void *src, float *dst, int64_t nblocks);

void realm_iq1_m_to_float_ref(const void *src, float *dst, int64_t nblocks);
void realm_iq1_m_to_float_avx2(const void *src, float *dst, int64_t nblocks);
void realm_iq1_m_to_float_neon(const void *src, float *dst, int64_t nblocks);
#endif
