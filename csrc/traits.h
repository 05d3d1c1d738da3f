/* The table of formats, in the manner of ggml's type_traits: one row per
 * GGUF tensor type realm has kernels for, holding its block geometry, what
 * its dot products multiply against, and its kernels for every path (scalar
 * reference, AVX2, NEON, AVX-512 VNNI, AVX-512).  Every dispatch on a type reads its
 * row (csrc/traits.c); nothing else switches on a format.
 *
 * Where a format lives: its block struct in quants.h, its row dequantizers in
 * dequant_ref.c / dequant_avx2.c / dequant_neon.c, its dot kernels in
 * matmul_ref.c / matmul_avx2.c (matmul_dot32.h), their declarations in
 * kernels.h, and its one row in traits.c. */
#ifndef REALM_TRAITS_H
#define REALM_TRAITS_H

#include "quants.h"

/* What a weight type's dot products multiply against (llama.cpp's vec_dot_type). */
enum realm_act_type {
    REALM_ACT_NONE = -1, /* no dot kernel: the matmuls refuse the type (REALM_EUNSUPPORTED) */
    REALM_ACT_F32 = 0,   /* f32 rows as given (F32 weights) */
    REALM_ACT_Q8 = 1,    /* int8 blocks of 32, one f32 scale each (Q4_0 .. Q8_0) */
    REALM_ACT_Q8_K = 2,  /* int8 blocks of 256 with sums per 16 (the K-quants) */
    REALM_ACT_F16 = 3,   /* the rows rounded to f16, kept as f32 (F16 weights) */
    REALM_ACT_BF16 = 4,  /* the rows rounded to bf16, 16 bits a value (BF16 weights) */
    REALM_ACT_COUNT = 5
};

/* Dequantize `nblocks` whole blocks from `src` into `dst`. */
typedef void (*realm_to_float_fn)(const void *src, float *dst, int64_t nblocks);

/* Dot products of one weight row (nb blocks at w) with the first ntok
 * (1..REALM_TOK_GROUP) rows of a group of activations (matmul.h):
 * y[t * ys] for t < ntok. */
struct realm_act_group;
typedef void (*realm_dot_fn)(int64_t nb, const void *w, const struct realm_act_group *a, int ntok, float *y,
                             int64_t ys);

/* The same products for nrows consecutive weight rows (row i at w + i * nb * type_size):
 * y[t * ys + i], the floats the row's dot kernel gives row by row. */
typedef void (*realm_dot_rows_fn)(int64_t nb, const void *w, int64_t nrows, const struct realm_act_group *a, int ntok,
                                  float *y, int64_t ys);

/* The same products for nrows (a multiple of 16) rows and n_tok tokens of every group
 * (group g at a[g]): y[t * ys + i]; scratch: nb times the format's wide_bytes, 64-byte aligned. */
typedef void (*realm_dot_wide_fn)(int64_t nb, const void *w, int64_t nrows, const struct realm_act_group *a,
                                  int64_t n_tok, float *y, int64_t ys, void *scratch);
/* Bytes of one block of 16 rows in a wide kernel's buffer (the sizes of their structs, asserted
 * beside them). */
#define REALM_WIDE_DOT32_BYTES 640  /* matmul_dot32_rows.h's wide_block */
#define REALM_WIDE_Q4_K_BYTES 2944 /* matmul_k_vnni.c's wide_q4_K */
#define REALM_WIDE_Q2_K_BYTES 2688 /* matmul_k_vnni.c's wide_q2_K */

typedef struct {
    const char *name;   /* NULL: realm has no kernels for this type id */
    int block_size;     /* elements per block */
    int type_size;      /* bytes per block */
    int align;          /* the alignment the block struct needs in memory */
    int act;            /* enum realm_act_type: REALM_ACT_NONE where there is no dot kernel */
    int repacked;       /* llama.cpp repacks its matrices of 8k rows (see realm_whole_blocks) */
    /* Row dequantizers; a path without its own (NULL) takes to_float_ref. */
    realm_to_float_fn to_float_ref; /* scalar reference */
    realm_to_float_fn to_float_avx2;
    realm_to_float_fn to_float_neon;
    /* The AVX2 row with streaming (non-temporal) stores, for outputs of REALM_STREAM_MIN_BYTES
     * or more (dequant.h); NULL: the plain one. */
    realm_to_float_fn to_float_stream;
    /* Dot kernels indexed [whole]: [0] llama.cpp's vec_dot order, [1] the order of
     * its repacked matrices (repacked formats only).  A path without its own
     * kernel (NULL) takes the next one: avx512 -> vnni -> avx2 -> ref, neon -> ref. */
    realm_dot_fn dot_ref[2];
    realm_dot_fn dot_avx2[2];
    realm_dot_fn dot_neon[2];
    realm_dot_fn dot_vnni[2];   /* the AVX2 kernels with AVX-512 VNNI's dpbusd (realm_matmul_vnni) */
    realm_dot_fn dot_avx512[2]; /* AVX-512 kernels (F, BW, VL, BF16: realm_matmul_avx512); the same bits */
    /* Optional kernels of several rows per call, where sharing the activations' loads and
     * reductions across rows pays (NULL: dot_vnni row by row); VNNI path only. */
    realm_dot_rows_fn rows_vnni[2];
    /* Optional kernels of 16 rows in 512-bit lanes for many tokens, indexed [whole] as the dot
     * kernels (NULL: rows_vnni, or the dot kernels), from wide_min tokens on: with fewer,
     * their transposition of each block costs more than it saves (streaming Gemma 3's LM head,
     * 262,144 x 640 Q8_0, at 4 tokens: 9.7 ms against rows_vnni's 5.9); VNNI path only.
     * wide_bytes: their buffer's bytes per block of 16 rows. */
    realm_dot_wide_fn wide_vnni[2];
    int wide_min;
    int wide_bytes;
} realm_type_traits;

/* Indexed by enum realm_type; entries realm does not support have name == NULL. */
extern const realm_type_traits realm_traits[REALM_TYPE_COUNT];

static inline const realm_type_traits *realm_get_traits(int type) {
    if (type < 0 || type >= REALM_TYPE_COUNT || realm_traits[type].name == NULL) return NULL;
    return &realm_traits[type];
}

#endif
