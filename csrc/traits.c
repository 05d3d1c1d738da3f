/* The table of formats (traits.h): one row per type, indexed by enum
 * realm_type.  A kernel of a path this build has no code for is NULL (the
 * same conditions as the #if of its file), so the table builds everywhere and
 * such a path takes the row's next kernel down (see traits.h). */
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define X86(fn) fn /* dequant_avx2.c, matmul_avx2.c, matmul_avx512.c */
#else
#define X86(fn) NULL
#endif

#if defined(__aarch64__)
#define ARM(fn) fn /* dequant_neon.c, matmul_neon.c */
#else
#define ARM(fn) NULL
#endif

#define BLOCK(NAME, BS, T) .name = NAME, .block_size = BS, .type_size = sizeof(T), .align = _Alignof(T)

const realm_type_traits realm_traits[REALM_TYPE_COUNT] = {
    /* ---- float weights: activations as f32, or rounded to f16 / bf16 (llama.cpp's vec_dot_type) ---- */
    [REALM_TYPE_F32] = {
        BLOCK("F32", 1, float), .act = REALM_ACT_F32,
        .to_float_ref = realm_f32_to_float_ref, /* a copy: every path takes it */
        .to_float_stream = X86(realm_f32_to_float_stream_avx2),
        .dot_ref = {realm_f32_dot_ref},
        .dot_avx2 = {X86(realm_f32_dot_avx2)},
        .dot_neon = {ARM(realm_f32_dot_neon)},
    },
    [REALM_TYPE_F16] = {
        BLOCK("F16", 1, realm_half), .act = REALM_ACT_F16,
        .to_float_ref = realm_f16_to_float_ref,
        .to_float_avx2 = X86(realm_f16_to_float_avx2),
        .to_float_neon = ARM(realm_f16_to_float_neon),
        .to_float_stream = X86(realm_f16_to_float_stream_avx2),
        .dot_ref = {realm_f16_dot_ref},
        .dot_avx2 = {X86(realm_f16_dot_avx2)},
        .dot_neon = {ARM(realm_f16_dot_neon)},
        .dot_avx512 = {X86(realm_f16_dot_avx512)},
    },
    [REALM_TYPE_BF16] = {
        BLOCK("BF16", 1, realm_bf16), .act = REALM_ACT_BF16,
        .to_float_ref = realm_bf16_to_float_ref,
        .to_float_avx2 = X86(realm_bf16_to_float_avx2),
        .to_float_neon = ARM(realm_bf16_to_float_neon),
        .to_float_stream = X86(realm_bf16_to_float_stream_avx2),
        .dot_ref = {realm_bf16_dot_ref},
        .dot_avx2 = {X86(realm_bf16_dot_avx2)},
        .dot_avx512 = {X86(realm_bf16_dot_avx512)},
    },

    /* ---- blocks of 32: Q8 activations ---- */
    [REALM_TYPE_Q4_0] = {
        BLOCK("Q4_0", QK4_0, block_q4_0), .act = REALM_ACT_Q8, .repacked = 1,
        .to_float_ref = realm_q4_0_to_float_ref,
        .to_float_avx2 = X86(realm_q4_0_to_float_avx2),
        .to_float_neon = ARM(realm_q4_0_to_float_neon),
        .dot_ref = {realm_q4_0_dot_ref, realm_q4_0_dot_whole_ref},
        .dot_avx2 = {X86(realm_q4_0_dot_avx2), X86(realm_q4_0_dot_whole_avx2)},
        .dot_neon = {ARM(realm_q4_0_dot_neon), ARM(realm_q4_0_dot_whole_neon)},
        .dot_vnni = {X86(realm_q4_0_dot_vnni), X86(realm_q4_0_dot_whole_vnni)},
        /* [1]: matmul_iq_avx2.c's IQ4_NL kernel, Q4_0 being IQ4_NL with the code book -8..7 */
        .rows_vnni = {X86(realm_q4_0_rows_vnni), X86(realm_q4_0_rows_whole_vnni)},
        .wide_vnni = {X86(realm_q4_0_wide_vnni), X86(realm_q4_0_wide_whole_vnni)},
        .wide_min = 8, .wide_bytes = REALM_WIDE_DOT32_BYTES,
    },
    [REALM_TYPE_Q4_1] = {
        BLOCK("Q4_1", QK4_1, block_q4_1), .act = REALM_ACT_Q8,
        .to_float_ref = realm_q4_1_to_float_ref,
        .to_float_avx2 = X86(realm_q4_1_to_float_avx2),
        .to_float_neon = ARM(realm_q4_1_to_float_neon),
        .dot_ref = {realm_q4_1_dot_ref},
        .dot_avx2 = {X86(realm_q4_1_dot_avx2)},
        .dot_neon = {ARM(realm_q4_1_dot_neon)},
        .dot_vnni = {X86(realm_q4_1_dot_vnni)},
        .rows_vnni = {X86(realm_q4_1_rows_vnni)},
        .wide_vnni = {X86(realm_q4_1_wide_vnni)}, .wide_min = 8, .wide_bytes = REALM_WIDE_DOT32_BYTES,
    },
    [REALM_TYPE_Q5_0] = {
        BLOCK("Q5_0", QK5_0, block_q5_0), .act = REALM_ACT_Q8,
        .to_float_ref = realm_q5_0_to_float_ref,
        .to_float_avx2 = X86(realm_q5_0_to_float_avx2),
        .to_float_neon = ARM(realm_q5_0_to_float_neon),
        .dot_ref = {realm_q5_0_dot_ref},
        .dot_avx2 = {X86(realm_q5_0_dot_avx2)},
        .dot_neon = {ARM(realm_q5_0_dot_neon)},
        .dot_vnni = {X86(realm_q5_0_dot_vnni)},
        .rows_vnni = {X86(realm_q5_0_rows_vnni)},
        .wide_vnni = {X86(realm_q5_0_wide_vnni)}, .wide_min = 8, .wide_bytes = REALM_WIDE_DOT32_BYTES,
    },
    [REALM_TYPE_Q5_1] = {
        BLOCK("Q5_1", QK5_1, block_q5_1), .act = REALM_ACT_Q8,
        .to_float_ref = realm_q5_1_to_float_ref,
        .to_float_avx2 = X86(realm_q5_1_to_float_avx2),
        .to_float_neon = ARM(realm_q5_1_to_float_neon),
        .dot_ref = {realm_q5_1_dot_ref},
        .dot_avx2 = {X86(realm_q5_1_dot_avx2)},
        .dot_neon = {ARM(realm_q5_1_dot_neon)},
        .dot_vnni = {X86(realm_q5_1_dot_vnni)},
        .rows_vnni = {X86(realm_q5_1_rows_vnni)},
        .wide_vnni = {X86(realm_q5_1_wide_vnni)}, .wide_min = 8, .wide_bytes = REALM_WIDE_DOT32_BYTES,
    },
    [REALM_TYPE_Q8_0] = {
        BLOCK("Q8_0", QK8_0, block_q8_0), .act = REALM_ACT_Q8,
        .to_float_ref = realm_q8_0_to_float_ref,
        .to_float_avx2 = X86(realm_q8_0_to_float_avx2),
        .to_float_neon = ARM(realm_q8_0_to_float_neon),
        .dot_ref = {realm_q8_0_dot_ref},
        .dot_avx2 = {X86(realm_q8_0_dot_avx2)},
        .dot_neon = {ARM(realm_q8_0_dot_neon)},
        .dot_vnni = {X86(realm_q8_0_dot_vnni)},
        .rows_vnni = {X86(realm_q8_0_rows_vnni)},
        .wide_vnni = {X86(realm_q8_0_wide_vnni)}, .wide_min = 8, .wide_bytes = REALM_WIDE_DOT32_BYTES,
    },

    /* ---- K-quants, blocks of 256: Q8_K activations ---- */
    [REALM_TYPE_Q2_K] = {
        BLOCK("Q2_K", QK_K, block_q2_K), .act = REALM_ACT_Q8_K, .repacked = 1,
        .to_float_ref = realm_q2_K_to_float_ref,
        .to_float_avx2 = X86(realm_q2_K_to_float_avx2),
        .to_float_neon = ARM(realm_q2_K_to_float_neon),
        .dot_ref = {realm_q2_K_dot_ref, realm_q2_K_dot_whole_ref},
        .dot_avx2 = {X86(realm_q2_K_dot_avx2), X86(realm_q2_K_dot_whole_avx2)},
        .dot_neon = {ARM(realm_q2_K_dot_neon), ARM(realm_q2_K_dot_whole_neon)},
        .wide_vnni = {NULL, X86(realm_q2_K_wide_whole_vnni)}, /* matmul_k_vnni.c */
        .wide_min = 2, .wide_bytes = REALM_WIDE_Q2_K_BYTES,
    },
    [REALM_TYPE_Q3_K] = {
        BLOCK("Q3_K", QK_K, block_q3_K), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_q3_K_to_float_ref,
        .to_float_avx2 = X86(realm_q3_K_to_float_avx2),
        .to_float_neon = ARM(realm_q3_K_to_float_neon),
        .dot_ref = {realm_q3_K_dot_ref},
        .dot_avx2 = {X86(realm_q3_K_dot_avx2)},
        .dot_neon = {ARM(realm_q3_K_dot_neon)},
        .rows_vnni = {X86(realm_q3_K_rows_vnni)},
    },
    [REALM_TYPE_Q4_K] = {
        BLOCK("Q4_K", QK_K, block_q4_K), .act = REALM_ACT_Q8_K, .repacked = 1,
        .to_float_ref = realm_q4_K_to_float_ref,
        .to_float_avx2 = X86(realm_q4_K_to_float_avx2),
        .to_float_neon = ARM(realm_q4_K_to_float_neon),
        .dot_ref = {realm_q4_K_dot_ref, realm_q4_K_dot_whole_ref},
        .dot_avx2 = {X86(realm_q4_K_dot_avx2), X86(realm_q4_K_dot_whole_avx2)},
        .dot_neon = {ARM(realm_q4_K_dot_neon), ARM(realm_q4_K_dot_whole_neon)},
        .rows_vnni = {NULL, X86(realm_q4_K_rows_whole_vnni)}, /* matmul_k_vnni.c */
        .wide_vnni = {NULL, X86(realm_q4_K_wide_whole_vnni)}, .wide_min = 6, .wide_bytes = REALM_WIDE_Q4_K_BYTES,
    },
    [REALM_TYPE_Q5_K] = {
        BLOCK("Q5_K", QK_K, block_q5_K), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_q5_K_to_float_ref,
        .to_float_avx2 = X86(realm_q5_K_to_float_avx2),
        .to_float_neon = ARM(realm_q5_K_to_float_neon),
        .dot_ref = {realm_q5_K_dot_ref},
        .dot_avx2 = {X86(realm_q5_K_dot_avx2)},
        .dot_neon = {ARM(realm_q5_K_dot_neon)},
        .rows_vnni = {X86(realm_q5_K_rows_vnni)},
    },
    [REALM_TYPE_Q6_K] = {
        BLOCK("Q6_K", QK_K, block_q6_K), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_q6_K_to_float_ref,
        .to_float_avx2 = X86(realm_q6_K_to_float_avx2),
        .to_float_neon = ARM(realm_q6_K_to_float_neon),
        .dot_ref = {realm_q6_K_dot_ref},
        .dot_avx2 = {X86(realm_q6_K_dot_avx2)},
        .dot_neon = {ARM(realm_q6_K_dot_neon)},
        .rows_vnni = {X86(realm_q6_K_rows_vnni)},
    },
    /* the K-quants' activation format: dequantized, never multiplied as weights */
    [REALM_TYPE_Q8_K] = {
        BLOCK("Q8_K", QK_K, block_q8_K), .act = REALM_ACT_NONE,
        .to_float_ref = realm_q8_K_to_float_ref,
        .to_float_avx2 = X86(realm_q8_K_to_float_avx2),
        .to_float_neon = ARM(realm_q8_K_to_float_neon),
    },

    /* ---- IQ, TQ and MXFP4 (csrc/dequant_iq_*.c, csrc/matmul_iq*_*.c, csrc/matmul_tq_*.c).
     * IQ4_NL and MXFP4 take Q8 activations and are repacked on AVX2 like Q4_0; the others
     * take Q8_K. ---- */
    [REALM_TYPE_IQ4_NL] = {
        BLOCK("IQ4_NL", QK4_NL, block_iq4_nl), .act = REALM_ACT_Q8, .repacked = 1,
        .to_float_ref = realm_iq4_nl_to_float_ref,
        .to_float_avx2 = X86(realm_iq4_nl_to_float_avx2),
        .to_float_neon = ARM(realm_iq4_nl_to_float_neon),
        .dot_ref = {realm_iq4_nl_dot_ref, realm_iq4_nl_dot_whole_ref},
        .dot_avx2 = {X86(realm_iq4_nl_dot_avx2), X86(realm_iq4_nl_dot_whole_avx2)},
        .dot_neon = {ARM(realm_iq4_nl_dot_neon), ARM(realm_iq4_nl_dot_whole_neon)},
        .rows_vnni = {NULL, X86(realm_iq4_nl_rows_whole_vnni)},
        .wide_vnni = {NULL, X86(realm_iq4_nl_wide_whole_vnni)}, .wide_min = 8, .wide_bytes = REALM_WIDE_DOT32_BYTES,
    },
    [REALM_TYPE_IQ4_XS] = {
        BLOCK("IQ4_XS", QK_K, block_iq4_xs), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq4_xs_to_float_ref,
        .to_float_avx2 = X86(realm_iq4_xs_to_float_avx2),
        .to_float_neon = ARM(realm_iq4_xs_to_float_neon),
        .dot_ref = {realm_iq4_xs_dot_ref},
        .dot_avx2 = {X86(realm_iq4_xs_dot_avx2)},
        .dot_neon = {ARM(realm_iq4_xs_dot_neon)},
        .rows_vnni = {X86(realm_iq4_xs_rows_vnni)},
    },
    [REALM_TYPE_MXFP4] = {
        BLOCK("MXFP4", QK_MXFP4, block_mxfp4), .act = REALM_ACT_Q8, .repacked = 1,
        .to_float_ref = realm_mxfp4_to_float_ref,
        .to_float_avx2 = X86(realm_mxfp4_to_float_avx2),
        .to_float_neon = ARM(realm_mxfp4_to_float_neon),
        .dot_ref = {realm_mxfp4_dot_ref, realm_mxfp4_dot_whole_ref},
        .dot_avx2 = {X86(realm_mxfp4_dot_avx2), X86(realm_mxfp4_dot_whole_avx2)},
        .dot_neon = {ARM(realm_mxfp4_dot_neon), ARM(realm_mxfp4_dot_whole_neon)},
        .rows_vnni = {NULL, X86(realm_mxfp4_rows_whole_vnni)},
        .wide_vnni = {NULL, X86(realm_mxfp4_wide_whole_vnni)}, .wide_min = 16, .wide_bytes = REALM_WIDE_DOT32_BYTES,
    },
    [REALM_TYPE_TQ1_0] = {
        BLOCK("TQ1_0", QK_K, block_tq1_0), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_tq1_0_to_float_ref,
        .to_float_avx2 = X86(realm_tq1_0_to_float_avx2),
        .to_float_neon = ARM(realm_tq1_0_to_float_neon),
        .dot_ref = {realm_tq1_0_dot_ref},
        .dot_avx2 = {X86(realm_tq1_0_dot_avx2)},
    },
    [REALM_TYPE_TQ2_0] = {
        BLOCK("TQ2_0", QK_K, block_tq2_0), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_tq2_0_to_float_ref,
        .to_float_avx2 = X86(realm_tq2_0_to_float_avx2),
        .to_float_neon = ARM(realm_tq2_0_to_float_neon),
        .dot_ref = {realm_tq2_0_dot_ref},
        .dot_avx2 = {X86(realm_tq2_0_dot_avx2)},
    },
    [REALM_TYPE_IQ2_XXS] = {
        BLOCK("IQ2_XXS", QK_K, block_iq2_xxs), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq2_xxs_to_float_ref,
        .to_float_avx2 = X86(realm_iq2_xxs_to_float_avx2),
        .to_float_neon = ARM(realm_iq2_xxs_to_float_neon),
        .dot_ref = {realm_iq2_xxs_dot_ref},
        .dot_avx2 = {X86(realm_iq2_xxs_dot_avx2)},
    },
    [REALM_TYPE_IQ2_XS] = {
        BLOCK("IQ2_XS", QK_K, block_iq2_xs), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq2_xs_to_float_ref,
        .to_float_avx2 = X86(realm_iq2_xs_to_float_avx2),
        .to_float_neon = ARM(realm_iq2_xs_to_float_neon),
        .dot_ref = {realm_iq2_xs_dot_ref},
        .dot_avx2 = {X86(realm_iq2_xs_dot_avx2)},
    },
    [REALM_TYPE_IQ2_S] = {
        BLOCK("IQ2_S", QK_K, block_iq2_s), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq2_s_to_float_ref,
        .to_float_avx2 = X86(realm_iq2_s_to_float_avx2),
        .to_float_neon = ARM(realm_iq2_s_to_float_neon),
        .dot_ref = {realm_iq2_s_dot_ref},
        .dot_avx2 = {X86(realm_iq2_s_dot_avx2)},
    },
    [REALM_TYPE_IQ3_XXS] = {
        BLOCK("IQ3_XXS", QK_K, block_iq3_xxs), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq3_xxs_to_float_ref,
        .to_float_avx2 = X86(realm_iq3_xxs_to_float_avx2),
        .to_float_neon = ARM(realm_iq3_xxs_to_float_neon),
        .dot_ref = {realm_iq3_xxs_dot_ref},
        .dot_avx2 = {X86(realm_iq3_xxs_dot_avx2)},
    },
    [REALM_TYPE_IQ3_S] = {
        BLOCK("IQ3_S", QK_K, block_iq3_s), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq3_s_to_float_ref,
        .to_float_avx2 = X86(realm_iq3_s_to_float_avx2),
        .to_float_neon = ARM(realm_iq3_s_to_float_neon),
        .dot_ref = {realm_iq3_s_dot_ref},
        .dot_avx2 = {X86(realm_iq3_s_dot_avx2)},
    },
    [REALM_TYPE_IQ1_S] = {
        BLOCK("IQ1_S", QK_K, block_iq1_s), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq1_s_to_float_ref,
        .to_float_avx2 = X86(realm_iq1_s_to_float_avx2),
        .to_float_neon = ARM(realm_iq1_s_to_float_neon),
        .dot_ref = {realm_iq1_s_dot_ref},
        .dot_avx2 = {X86(realm_iq1_s_dot_avx2)},
    },
    [REALM_TYPE_IQ1_M] = {
        BLOCK("IQ1_M", QK_K, block_iq1_m), .act = REALM_ACT_Q8_K,
        .to_float_ref = realm_iq1_m_to_float_ref,
        .to_float_avx2 = X86(realm_iq1_m_to_float_avx2),
        .to_float_neon = ARM(realm_iq1_m_to_float_neon),
        .dot_ref = {realm_iq1_m_dot_ref},
        .dot_avx2 = {X86(realm_iq1_m_dot_avx2)},
    },
};
