/* Scalar conversions of the 16-bit float formats.  They agree bit for bit with
 * the F16C/NEON instructions the SIMD paths use (a test checks all 65536 inputs),
 * so every path gives the same floats. */
#ifndef REALM_FP16_H
#define REALM_FP16_H

#include <stdint.h>
#include <string.h>

static inline float realm_bits_to_f32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint32_t realm_f32_to_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

static inline float realm_half_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf, or NaN made quiet as the hardware does */
        return realm_bits_to_f32(sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0));
    if (exp != 0)
        return realm_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
    /* zero or subnormal: man * 2^-24 is exact in binary32 */
    const float mag = (float)man * 0x1p-24f;
    return realm_bits_to_f32(sign | realm_f32_to_bits(mag));
}

static inline float realm_bf16_to_f32(uint16_t h) {
    return realm_bits_to_f32((uint32_t)h << 16);
}

/* f32 -> bf16 as ggml's ggml_compute_fp32_to_bf16: round to nearest even on the
 * bits (overflow to inf, subnormals kept), NaN made quiet keeping its top bits. */
static inline uint16_t realm_f32_to_bf16(float f) {
    const uint32_t u = realm_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* An E8M0 scale halved (MXFP4's code book holds doubled e2m1 values): 2^(e - 128) as
 * llama.cpp's ggml_e8m0_to_fp32_half builds it, subnormal for e < 2. */
static inline float realm_e8m0_to_f32_half(uint8_t e) {
    return realm_bits_to_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* f32 -> binary16, round to nearest even, exactly as vcvtps2ph (imm 0):
 * overflow to inf, gradual underflow, NaN made quiet keeping its top bits. */
static inline uint16_t realm_f32_to_half(float f) {
    const uint32_t x = realm_f32_to_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu);
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
    uint32_t h, rem, halfway;
    if (ax >= 0x38800000u) { /* normal half: rebias the exponent, drop 13 bits */
        h = (ax - 0x38000000u) >> 13;
        rem = ax & 0x1fffu;
        halfway = 0x1000u;
    } else { /* subnormal half (or zero): units of 2^-24 */
        if (ax < 0x33000000u) return sign; /* below half the smallest subnormal */
        const uint32_t shift = 126u - (ax >> 23), man = (ax & 0x7fffffu) | 0x800000u;
        h = man >> shift;
        rem = man & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1u);
    }
    if (rem > halfway || (rem == halfway && (h & 1u))) h++; /* a carry may step into the next exponent: right */
    return sign | (uint16_t)h;
}

#endif
