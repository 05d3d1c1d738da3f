/* Compares the best SIMD path of this CPU with the scalar reference for every
 * format, on pseudo-random blocks.  Built and run by tests/test_simd_cross.py,
 * natively and cross-compiled for aarch64 under qemu, so the NEON kernels are
 * checked on an x86 machine too.  Exit status 0: all identical. */
#include "dequant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint8_t next_byte(void) { /* xorshift64 */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint8_t)(rng_state >> 32);
}

static int same(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return x == y;
}

int main(void) {
    const int best = realm_best_isa();
    printf("best isa: %s\n", realm_isa_name(best));
    if (best == REALM_ISA_SCALAR) return 0;
    int failures = 0;
    enum { NBLOCKS = 257 }; /* odd, so the 16-element tails of F16/BF16 run */
    for (int type = 0; type < REALM_TYPE_COUNT; type++) {
        const realm_type_traits *tt = realm_get_traits(type);
        if (!tt) continue;
        const size_t nbytes = (size_t)NBLOCKS * tt->type_size, n = (size_t)NBLOCKS * tt->block_size;
        uint8_t *src = aligned_alloc(64, (nbytes + 63) / 64 * 64);
        float *ref = malloc(n * sizeof(float)), *simd = malloc(n * sizeof(float));
        if (!src || !ref || !simd) return 2;
        for (size_t i = 0; i < nbytes; i++) src[i] = next_byte();
        if (realm_dequantize(type, src, NBLOCKS, ref, 1, REALM_ISA_SCALAR) ||
            realm_dequantize(type, src, NBLOCKS, simd, 1, best))
            return 3;
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += !same(ref[i], simd[i]);
        printf("%-5s %s\n", tt->name, bad ? "DIFFERS" : "ok");
        failures += bad != 0;
        free(src);
        free(ref);
        free(simd);
    }
    return failures ? 1 : 0;
}
