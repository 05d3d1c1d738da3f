/* Pieces shared by the AVX2 paths (dequant_avx2.c, matmul_avx2.c, ops_avx2.c,
 * q8.c).  Include only inside an x86-64 #if: the functions are compiled for
 * AVX2/FMA/F16C by attribute and chosen at run time, never by -m flags. */
#ifndef REALM_AVX2_UTIL_H
#define REALM_AVX2_UTIL_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* 32 bytes: the low nibbles of 16 bytes, then their high nibbles (the order of Q4/Q5 blocks). */
AVX2 INLINE __m256i nibbles16(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
}

/* 32 bytes, byte j = 0xff where bit j of the little-endian u32 at qh is set, else 0. */
AVX2 INLINE __m256i bits32(const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

#endif
