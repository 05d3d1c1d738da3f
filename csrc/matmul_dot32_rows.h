/* The 32-value formats in llama.cpp's vec_dot order, several rows per call (rows_vnni[0],
 * traits.h); included by matmul_avx2.c once, with the VNNI DOT32_ATTR / DOT32_NAME.
 *
 * One row's kernel (dot32_k) folds block after block into one accumulator per token: at one
 * token a chain of FMAs, each waiting for the last.  Here R rows go together, each with its
 * own accumulators and the same FMAs in the same order (so the same floats), the chains
 * interleaved; the rows share the activations' loads, their scales' conversions and the
 * minimums' FMAs (one lane per row).  The integer lanes come from dpbusd on the blocks'
 * values as unsigned bytes u = w + o, without the sign trick: the offset's part, o times
 * the activations' lane sums, is kept with the activations (q8.c) and taken back exactly
 * (the lanes start from its negation). */

DOT32_ATTR INLINE int rows_offset(const int type) {
    return type == REALM_TYPE_Q4_0 ? 8 : type == REALM_TYPE_Q5_0 ? 16 : type == REALM_TYPE_Q8_0 ? 128 : 0;
}

DOT32_ATTR INLINE int rows_block_size(const int type) {
    switch (type) {
    case REALM_TYPE_Q4_0: return (int)sizeof(block_q4_0);
    case REALM_TYPE_Q4_1: return (int)sizeof(block_q4_1);
    case REALM_TYPE_Q5_0: return (int)sizeof(block_q5_0);
    case REALM_TYPE_Q5_1: return (int)sizeof(block_q5_1);
    default: return (int)sizeof(block_q8_0);
    }
}

/* nibbles16's bytes from one broadcast load and one shift: the upper half's 64-bit words
 * shifted right by 4, masked, are the high nibbles. */
DOT32_ATTR INLINE __m256i rows_nibbles(const uint8_t *qs) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(raw, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
}

/* The lanes' starting point for block values read as unsigned bytes w + off: -off times each 4
 * activations' sum, from the buffer's -128 times that (q8.c's offset sums o); exact, off being
 * 128 / 2^k. */
DOT32_ATTR INLINE __m256i rows_nbias(const realm_act_group *a, int t, int64_t b, const int off) {
    switch (off) {
    case 128: return OFFSETS(a, t, b);
    case 16: return _mm256_srai_epi32(OFFSETS(a, t, b), 3);
    case 8: return _mm256_srai_epi32(OFFSETS(a, t, b), 4);
    default: return _mm256_setzero_si256();
    }
}

/* A block's 32 values plus rows_offset as unsigned bytes: nibbles (Q4), nibbles with the
 * fifth bit (Q5), the bytes with their sign bit flipped (Q8_0). */
DOT32_ATTR INLINE __m256i rows_ubytes(const uint8_t *blk, const int type) {
    switch (type) {
    case REALM_TYPE_Q4_0: return rows_nibbles(((const block_q4_0 *)blk)->qs);
    case REALM_TYPE_Q4_1: return rows_nibbles(((const block_q4_1 *)blk)->qs);
    case REALM_TYPE_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)blk;
        return _mm256_or_si256(rows_nibbles(x->qs), _mm256_and_si256(bits32(x->qh), _mm256_set1_epi8(0x10)));
    }
    case REALM_TYPE_Q5_1: {
        const block_q5_1 *x = (const block_q5_1 *)blk;
        return _mm256_or_si256(rows_nibbles(x->qs), _mm256_and_si256(bits32(x->qh), _mm256_set1_epi8(0x10)));
    }
    default: return _mm256_xor_si256(load32(((const block_q8_0 *)blk)->qs), _mm256_set1_epi8((char)0x80));
    }
}

/* The f16 at byte off of the blocks at blk, blk + rb, ... (R <= 8 rows) as floats, row i
 * in lane i; gathered in general registers (gcc's vectorization of this gather is slower). */
DOT32_ATTR INLINE __m256 rows_halves(const uint8_t *blk, int64_t rb, int off, const int R) {
    uint64_t q[2] = {0, 0};
    for (int i = 0; i < R; i++) {
        uint16_t h;
        memcpy(&h, blk + i * rb + off, 2);
        q[i / 4] |= (uint64_t)h << 16 * (i % 4);
        __asm__("" : "+r"(q[i / 4]));
    }
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)q[1], (long long)q[0]));
}

/* Row i's scale times token t's, of one block (dw dx, dot32_k's products), at dst[8 t + i]. */
DOT32_ATTR INLINE void rows_dtab(float *dst, const uint8_t *blk, int64_t rb, const float *dx, const int R, const int T) {
    const __m256 dw = rows_halves(blk, rb, 0, R);
    for (int t = 0; t < T; t++) _mm256_storeu_ps(dst + 8 * t, _mm256_mul_ps(dw, _mm256_set1_ps(dx[t])));
}

/* R rows, tokens [t0, t0 + T) (T <= 4, R T <= 16).  Within a block token after token: a
 * token's values and offset sums (from the buffer, q8.c) sit in two registers while they meet
 * the R rows' bytes, read once a block, so the R T accumulators and all else stay in the 32
 * registers (with all 8 tokens at once they spilled: 1.1-1.2x slower).  The products dw dx are
 * broadcast from a table filled ROWS_LEAD blocks ahead, so those loads never wait on store
 * forwarding; at one token and two rows a permute of them costs less.  Software prefetch
 * (matmul_avx2.h's pf_lead): a call's rows are read as R streams, which the hardware
 * prefetchers follow poorly, and a tile's rows start cold. */
#define ROWS_LEAD 2
DOT32_ATTR INLINE void DOT32_NAME(dot32_rows_k)(int64_t nb, const uint8_t *w, int64_t rb, const uint8_t *end,
                                                const realm_act_group *a, int t0, float *y, int64_t ys, const int R,
                                                const int T, const int type) {
    const int with_min = type == REALM_TYPE_Q4_1 || type == REALM_TYPE_Q5_1, off = rows_offset(type);
    const int bs = rows_block_size(type);
    /* acc[T i + t]; the loops over it unrolled before gcc's scalar replacement (else acc
     * lives in memory) */
    __m256 acc[16], sm[4];
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) {
        sm[t] = _mm256_setzero_ps();
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) acc[T * i + t] = _mm256_setzero_ps();
    }
    const int table = R * T > 2;
    float dtab[4][8 * 4] __attribute__((aligned(32))); /* a ring: block b at b % 4 */
    for (int64_t b = 0; table && b < ROWS_LEAD && b < nb; b++) rows_dtab(dtab[b % 4], w + b * bs, rb, a->d + realm_act_slot(t0, b), R, T);
    const uint8_t *pf = w + pf_lead(rb, R);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bs;
        if (pf + R * bs * b < end)
            for (int k = 0; k < R * bs; k += 64) _mm_prefetch((const char *)(pf + R * bs * b + k), _MM_HINT_T0);
        if (table && b + ROWS_LEAD < nb)
            rows_dtab(dtab[(b + ROWS_LEAD) % 4], blk + ROWS_LEAD * bs, rb, a->d + realm_act_slot(t0, b + ROWS_LEAD), R, T);
        if (with_min) {
            const __m256 mw = rows_halves(blk, rb, 2, R);
            for (int t = 0; t < T; t++) sm[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(a->s[realm_act_slot(t0 + t, b)]), sm[t]);
        }
        __m256i u[8];
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) u[i] = rows_ubytes(blk + i * rb, type);
        const float *dt = dtab[b % 4];
        __m256 d[2];
        if (!table) {
            const __m256 dw = rows_halves(blk, rb, 0, R);
            for (int t = 0; t < T; t++) d[t] = _mm256_mul_ps(dw, _mm256_set1_ps(a->d[realm_act_slot(t0 + t, b)]));
        }
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) {
            const __m256i x = load32(TOKEN_ROW(a, t0 + t) + 32 * b);
            const __m256i nbias = rows_nbias(a, t0 + t, b, off);
#pragma GCC unroll 16
            for (int i = 0; i < R; i++) {
                const __m256i p = _mm256_dpbusd_epi32(nbias, u[i], x);
                const __m256 di = table ? _mm256_set1_ps(dt[8 * t + i]) : _mm256_permutexvar_ps(_mm256_set1_epi32(i), d[t]);
                acc[T * i + t] = _mm256_fmadd_ps(di, _mm256_cvtepi32_ps(p), acc[T * i + t]);
            }
        }
    }
#pragma GCC unroll 16
    for (int t = 0; t < T; t++) {
        float summs[8];
        _mm256_storeu_ps(summs, sm[t]);
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) y[t * ys + i] = with_min ? hsum8(acc[T * i + t]) + summs[i] : hsum8(acc[T * i + t]);
    }
}

/* One pass over the rows, R a step: 8 at one or two tokens, 4 beyond.  Q8_0 at
 * one token takes 2 rows a step: streaming a matrix bigger than the caches (16384 x 4096, 2
 * threads), 8 rows' streams of its heavier blocks ran at 0.66x of one row at a time, 4 at
 * 0.79x, 2 at 1.0x (and still 1.4-1.5x where the matrix is cache-resident). */
DOT32_ATTR INLINE void DOT32_NAME(dot32_rows_pass)(int64_t nb, const uint8_t *wb, int64_t nrows, const uint8_t *end,
                                                   int64_t rb, const realm_act_group *a, int t0, const int T, float *y,
                                                   int64_t ys, const int type) {
    const int R = type == REALM_TYPE_Q8_0 && T == 1 ? 2 : T <= 2 ? 8 : 4;
    prefetch_start(wb, end, pf_lead(rb, R));
    for (int64_t r = 0; r < nrows; r += R) DOT32_NAME(dot32_rows_k)(nb, wb + r * rb, rb, end, a, t0, y + t0 * ys + r, ys, R, T, type);
}

/* The rows up to a multiple of 8 (of every pass's R) in passes of up to 4 tokens, the rest (the
 * matrix's last rows) one at a time. */
DOT32_ATTR INLINE void DOT32_NAME(dot32_rows)(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a,
                                              const int T, float *y, int64_t ys, const int type) {
    const int64_t rb = nb * rows_block_size(type), nr = nrows & ~(int64_t)7;
    const uint8_t *wb = w, *end = wb + nrows * rb;
    DOT32_NAME(dot32_rows_pass)(nb, wb, nr, end, rb, a, 0, T < 4 ? T : 4, y, ys, type);
    switch (T - 4) { /* tokens 4 .. T - 1 */
    case 1: DOT32_NAME(dot32_rows_pass)(nb, wb, nr, end, rb, a, 4, 1, y, ys, type); break;
    case 2: DOT32_NAME(dot32_rows_pass)(nb, wb, nr, end, rb, a, 4, 2, y, ys, type); break;
    case 3: DOT32_NAME(dot32_rows_pass)(nb, wb, nr, end, rb, a, 4, 3, y, ys, type); break;
    case 4: DOT32_NAME(dot32_rows_pass)(nb, wb, nr, end, rb, a, 4, 4, y, ys, type); break;
    }
    for (int64_t r = nr; r < nrows; r++) DOT32_NAME(dot32_k)(nb, wb + r * rb, a, y + r, ys, T, type);
}

#define DOT32_ROWS(NAME, WTYPE)                                                                                   \
    DOT32_ATTR void DOT32_NAME(NAME)(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, \
                                     float *y, int64_t ys) {                                                      \
        DISPATCH_T(ntok, DOT32_NAME(dot32_rows)(nb, w, nrows, a, T_, y, ys, WTYPE));                              \
    }

DOT32_ROWS(realm_q4_0_rows, REALM_TYPE_Q4_0)
DOT32_ROWS(realm_q4_1_rows, REALM_TYPE_Q4_1)
DOT32_ROWS(realm_q5_0_rows, REALM_TYPE_Q5_0)
DOT32_ROWS(realm_q5_1_rows, REALM_TYPE_Q5_1)
DOT32_ROWS(realm_q8_0_rows, REALM_TYPE_Q8_0)
#undef DOT32_ROWS
