/* Block layouts of the GGUF (ggml) tensor formats realm understands, and
 * their type ids; the table of their traits is traits.h.  The layouts are
 * byte-for-byte those of llama.cpp's ggml-common.h; each one is pinned by a
 * _Static_assert so a padding surprise fails the build instead of corrupting
 * tensors. */
#ifndef REALM_QUANTS_H
#define REALM_QUANTS_H

#include <stddef.h>
#include <stdint.h>

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t realm_half; /* IEEE binary16 bits */
typedef uint16_t realm_bf16; /* bfloat16 bits */

typedef struct {
    realm_half d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 size");

typedef struct {
    realm_half d;
    realm_half m;
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "block_q4_1 size");

typedef struct {
    realm_half d;
    uint8_t qh[4]; /* 5th bit of each weight, little-endian u32 */
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 2 + 4 + QK5_0 / 2, "block_q5_0 size");

typedef struct {
    realm_half d;
    realm_half m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 4 + 4 + QK5_1 / 2, "block_q5_1 size");

/* The qh of Q5_0 / Q5_1 as the little-endian u32 it is, on any host. */
static inline uint32_t realm_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

typedef struct {
    realm_half d;
    int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 size");

typedef struct {
    uint8_t scales[QK_K / 16]; /* low nibble: scale, high nibble: min */
    uint8_t qs[QK_K / 4];
    realm_half d;
    realm_half dmin;
} block_q2_K;
_Static_assert(sizeof(block_q2_K) == QK_K / 16 + QK_K / 4 + 4, "block_q2_K size");

typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12]; /* sixteen 6-bit scales */
    realm_half d;
} block_q3_K;
_Static_assert(sizeof(block_q3_K) == QK_K / 8 + QK_K / 4 + 12 + 2, "block_q3_K size");

typedef struct {
    realm_half d;
    realm_half dmin;
    uint8_t scales[K_SCALE_SIZE]; /* eight 6-bit scales and mins */
    uint8_t qs[QK_K / 2];
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K size");

typedef struct {
    realm_half d;
    realm_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K size");

typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    realm_half d;
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;
_Static_assert(sizeof(block_q8_K) == 4 + QK_K + QK_K / 8, "block_q8_K size");

/* The IQ ("importance") formats, the ternary TQ formats and MXFP4 (ggml-common.h). */
#define QK4_NL 32
#define QK_MXFP4 32

typedef struct {
    realm_half d;
    uint8_t qs[QK4_NL / 2]; /* indices into kvalues_iq4nl */
} block_iq4_nl;
_Static_assert(sizeof(block_iq4_nl) == 2 + QK4_NL / 2, "block_iq4_nl size");

typedef struct {
    realm_half d;
    uint16_t scales_h;          /* the 2 high bits of eight 6-bit scales */
    uint8_t scales_l[QK_K / 64]; /* their 4 low bits, two per byte */
    uint8_t qs[QK_K / 2];
} block_iq4_xs;
_Static_assert(sizeof(block_iq4_xs) == 4 + QK_K / 64 + QK_K / 2, "block_iq4_xs size");

typedef struct {
    uint8_t e; /* E8M0 scale */
    uint8_t qs[QK_MXFP4 / 2];
} block_mxfp4;
_Static_assert(sizeof(block_mxfp4) == 1 + QK_MXFP4 / 2, "block_mxfp4 size");

typedef struct {
    uint8_t qs[(QK_K - 4 * QK_K / 64) / 5]; /* 5 ternary digits per byte */
    uint8_t qh[QK_K / 64];                  /* 4 per byte */
    realm_half d;
} block_tq1_0;
_Static_assert(sizeof(block_tq1_0) == (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2, "block_tq1_0 size");

typedef struct {
    uint8_t qs[QK_K / 4]; /* 2 bits per element */
    realm_half d;
} block_tq2_0;
_Static_assert(sizeof(block_tq2_0) == QK_K / 4 + 2, "block_tq2_0 size");

typedef struct {
    realm_half d;
    uint16_t qs[QK_K / 8]; /* per 32: four grid indices (bytes), then 4x7 sign bits and a 4-bit scale */
} block_iq2_xxs;
_Static_assert(sizeof(block_iq2_xxs) == 2 + QK_K / 4, "block_iq2_xxs size");

typedef struct {
    realm_half d;
    uint16_t qs[QK_K / 8]; /* 9-bit grid index | 7-bit sign index << 9 */
    uint8_t scales[QK_K / 32];
} block_iq2_xs;
_Static_assert(sizeof(block_iq2_xs) == 2 + QK_K / 4 + QK_K / 32, "block_iq2_xs size");

typedef struct {
    realm_half d;
    uint8_t qs[QK_K / 4]; /* low 8 bits of the grid indices, then the sign bytes */
    uint8_t qh[QK_K / 32];
    uint8_t scales[QK_K / 32];
} block_iq2_s;
_Static_assert(sizeof(block_iq2_s) == 2 + QK_K / 4 + QK_K / 16, "block_iq2_s size");

typedef struct {
    realm_half d;
    uint8_t qs[3 * QK_K / 8]; /* grid indices, then per 32 a u32 of 4x7 sign bits and a scale */
} block_iq3_xxs;
_Static_assert(sizeof(block_iq3_xxs) == 2 + 3 * QK_K / 8, "block_iq3_xxs size");

#define IQ3S_N_SCALE (QK_K / 64)
typedef struct {
    realm_half d;
    uint8_t qs[QK_K / 4];
    uint8_t qh[QK_K / 32];
    uint8_t signs[QK_K / 8];
    uint8_t scales[IQ3S_N_SCALE];
} block_iq3_s;
_Static_assert(sizeof(block_iq3_s) == 2 + 13 * (QK_K / 32) + IQ3S_N_SCALE, "block_iq3_s size");

typedef struct {
    realm_half d;
    uint8_t qs[QK_K / 8];
    uint16_t qh[QK_K / 32]; /* 4x3 high index bits, a 3-bit scale and the delta's sign */
} block_iq1_s;
_Static_assert(sizeof(block_iq1_s) == 2 + QK_K / 8 + QK_K / 16, "block_iq1_s size");

typedef struct {
    uint8_t qs[QK_K / 8];
    uint8_t qh[QK_K / 16];
    uint8_t scales[QK_K / 32]; /* 3-bit scales; the f16 block scale in the top nibbles of its 4 u16 */
} block_iq1_m;
_Static_assert(sizeof(block_iq1_m) == QK_K / 8 + QK_K / 16 + QK_K / 32, "block_iq1_m size");

/* The little-endian u16 at p. */
static inline uint16_t realm_u16le(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

/* ggml_type values as stored in GGUF files. */
enum realm_type {
    REALM_TYPE_F32 = 0,
    REALM_TYPE_F16 = 1,
    REALM_TYPE_Q4_0 = 2,
    REALM_TYPE_Q4_1 = 3,
    REALM_TYPE_Q5_0 = 6,
    REALM_TYPE_Q5_1 = 7,
    REALM_TYPE_Q8_0 = 8,
    REALM_TYPE_Q2_K = 10,
    REALM_TYPE_Q3_K = 11,
    REALM_TYPE_Q4_K = 12,
    REALM_TYPE_Q5_K = 13,
    REALM_TYPE_Q6_K = 14,
    REALM_TYPE_Q8_K = 15,
    REALM_TYPE_IQ2_XXS = 16,
    REALM_TYPE_IQ2_XS = 17,
    REALM_TYPE_IQ3_XXS = 18,
    REALM_TYPE_IQ1_S = 19,
    REALM_TYPE_IQ4_NL = 20,
    REALM_TYPE_IQ3_S = 21,
    REALM_TYPE_IQ2_S = 22,
    REALM_TYPE_IQ4_XS = 23,
    REALM_TYPE_IQ1_M = 29,
    REALM_TYPE_BF16 = 30,
    REALM_TYPE_TQ1_0 = 34,
    REALM_TYPE_TQ2_0 = 35,
    REALM_TYPE_MXFP4 = 39,
    REALM_TYPE_COUNT = 40 /* upper bound of ggml type ids known to realm */
};

#endif
