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

#endif
