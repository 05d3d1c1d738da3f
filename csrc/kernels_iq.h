/* Row dequantizers of the IQ, TQ and MXFP4 formats: a scalar reference per format
 * (dequant_iq_ref.c), and AVX2 (dequant_iq_avx2.c, defined on x86-64 only) and NEON
 * (dequant_iq_neon.c, defined on aarch64 only) rows computing the same floats, bit for
 * bit.  Each dequantizes `nblocks` whole blocks, as a realm_to_float_fn. */
#ifndef REALM_KERNELS_IQ_H
#define REALM_KERNELS_IQ_H

#include "fp16.h"
#include "quants.h"

/* ---- index and sign arithmetic shared by the three paths ---- */

/* Rows a and b of a 4-byte grid (IQ3_XXS, IQ3_S) as one 8-byte row, a's bytes first. */
static inline uint64_t realm_grid4x2(const uint32_t *grid, int a, int b) {
    return (uint64_t)grid[a] | (uint64_t)grid[b] << 32;
}

/* IQ2_S: the grid row of group l (0..3) of a 32-value sub-block: 8 bits of qs, 2 of qh. */
static inline int realm_iq2_s_index(uint8_t q, int qh, int l) {
    return q | ((qh << (8 - 2 * l)) & 0x300);
}

/* IQ3_S: the grid row of the j-th (0..7) 4-value group of a sub-block: 8 bits of qs, bit j of qh. */
static inline int realm_iq3_s_index(const uint8_t *qs, int qh, int j) {
    return qs[j] | ((qh << (8 - j)) & 256);
}

/* IQ1_S / IQ1_M's +-0.125f: `sign`'s single set bit (or none) at position `bit` moved to bit 31,
 * with integer operations only (a select would become a branch, mispredicted half the time:
 * the sign is a coin toss per group of 8 in IQ1_M). */
static inline float realm_iq1_delta(uint32_t sign, int bit) {
    return realm_bits_to_f32(0x3e000000u | (sign << (31 - bit) & 0x80000000u));
}

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
