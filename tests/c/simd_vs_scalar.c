/* Compares the best SIMD path of this CPU with the scalar reference for every
 * format, on pseudo-random blocks: the row dequantizers, and the matrix
 * products (the activations quantized, then the dot kernels) of every format
 * that has them.  Built and run by tests/test_simd_cross.py, natively and
 * cross-compiled for aarch64 under qemu, so the NEON kernels are checked on an
 * x86 machine too.  Exit status 0: all identical. */
#include "dequant.h"
#include "fp16.h"
#include "matmul.h"

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

/* A float of many magnitudes: 8 random bits times 2^-14 .. 2^-3. */
static float random_float(void) {
    const int8_t mant = (int8_t)next_byte();
    return ldexpf((float)mant, (int)(next_byte() % 12) - 14);
}

/* W [n_out][n_in] of random blocks (of finite values for the float formats)
 * times x [n_tok][n_in] (random floats of many magnitudes) on both paths, at
 * token counts that fill one group, part of one and part of a second, for
 * n_out = 24 (a repacked format sums whole blocks, as llama.cpp does with rows
 * by 8) and 20 (it does not), n_in = 512 and, for blocks of 32, 480 (an odd
 * number of blocks); 1 if any output differs. */
static int matmul_differs(int type, const realm_type_traits *tt, int best) {
    enum { N_OUT = 24, N_IN = 512, MAX_TOK = 11 };
    const size_t nbytes = (size_t)N_OUT * (N_IN / tt->block_size) * tt->type_size;
    uint8_t *w = aligned_alloc(64, (nbytes + 63) / 64 * 64);
    float *x = malloc(sizeof(float) * MAX_TOK * N_IN);
    float *ref = malloc(sizeof(float) * MAX_TOK * N_OUT), *simd = malloc(sizeof(float) * MAX_TOK * N_OUT);
    if (!w || !x || !ref || !simd) exit(2);
    for (int i = 0; i < MAX_TOK * N_IN; i++) x[i] = random_float();
    if (tt->block_size == 1) /* float weights: finite values (random bytes would be NaN in most rows) */
        for (size_t i = 0; i < nbytes / tt->type_size; i++) {
            const float f = random_float();
            if (type == REALM_TYPE_F32) {
                memcpy(w + 4 * i, &f, 4);
            } else { /* F16, or BF16: f's top half (f has at most 8 significant bits) */
                const uint16_t h =
                    type == REALM_TYPE_F16 ? realm_f32_to_half(f) : (uint16_t)(realm_f32_to_bits(f) >> 16);
                memcpy(w + 2 * i, &h, 2);
            }
        }
    else
        for (size_t i = 0; i < nbytes; i++) w[i] = next_byte();
    static const int ntoks[] = {1, 3, 8, 11}, n_outs[] = {N_OUT, N_OUT - 4}, n_ins[] = {N_IN, N_IN - 32};
    int bad = 0;
    for (size_t k = 0; k < sizeof ntoks / sizeof ntoks[0]; k++)
        for (size_t r = 0; r < sizeof n_outs / sizeof n_outs[0]; r++)
            for (size_t c = 0; c < sizeof n_ins / sizeof n_ins[0]; c++) {
                const int n_tok = ntoks[k], n_out = n_outs[r], n_in = n_ins[c];
                if (n_in % tt->block_size) continue;
                if (realm_matmul(type, w, n_out, n_in, x, n_tok, ref, 1, REALM_ISA_SCALAR) ||
                    realm_matmul(type, w, n_out, n_in, x, n_tok, simd, 1, best))
                    exit(3);
                for (int i = 0; i < n_tok * n_out; i++) bad |= !same(ref[i], simd[i]);
            }
    free(w);
    free(x);
    free(ref);
    free(simd);
    return bad;
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
        if (tt->act >= 0) {
            const int differs = matmul_differs(type, tt, best);
            printf("%-5s matmul %s\n", tt->name, differs ? "DIFFERS" : "same");
            failures += differs;
        }
        free(src);
        free(ref);
        free(simd);
    }
    return failures ? 1 : 0;
}
