/* The 32-value formats in llama.cpp's vec_dot order, several rows per call (rows_vnni[0],
 * traits.h), and their wide kernels for many tokens (wide_vnni, below: the vec_dot order, and
 * the repacked order of Q4_0, IQ4_NL and MXFP4); included by matmul_avx2.c once, with the
 * VNNI DOT32_ATTR / DOT32_NAME.
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
    switch (type) {
    case REALM_TYPE_Q4_0: return 8;
    case REALM_TYPE_Q5_0: return 16;
    case REALM_TYPE_Q8_0: case REALM_TYPE_IQ4_NL: case REALM_TYPE_MXFP4: return 128;
    default: return 0;
    }
}

DOT32_ATTR INLINE int rows_block_size(const int type) {
    switch (type) {
    case REALM_TYPE_Q4_0: return (int)sizeof(block_q4_0);
    case REALM_TYPE_Q4_1: return (int)sizeof(block_q4_1);
    case REALM_TYPE_Q5_0: return (int)sizeof(block_q5_0);
    case REALM_TYPE_Q5_1: return (int)sizeof(block_q5_1);
    case REALM_TYPE_IQ4_NL: return (int)sizeof(block_iq4_nl);
    case REALM_TYPE_MXFP4: return (int)sizeof(block_mxfp4);
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

/* A code book's 16 levels plus 128 as unsigned bytes, in both 128-bit lanes (for vpshufb). */
DOT32_ATTR INLINE __m256i rows_book(const int8_t *book) {
    return _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)book)),
                            _mm256_set1_epi8((char)0x80));
}

/* A block's 32 values plus rows_offset as unsigned bytes: nibbles (Q4), nibbles with the
 * fifth bit (Q5), the bytes with their sign bit flipped (Q8_0), the code book's levels at the
 * nibbles (IQ4_NL, MXFP4). */
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
    case REALM_TYPE_IQ4_NL:
        return _mm256_shuffle_epi8(rows_book(realm_kvalues_iq4nl), rows_nibbles(((const block_iq4_nl *)blk)->qs));
    case REALM_TYPE_MXFP4:
        return _mm256_shuffle_epi8(rows_book(realm_kvalues_mxfp4), rows_nibbles(((const block_mxfp4 *)blk)->qs));
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

/* The block scales of rows blk, blk + rb, ... (8 rows) as floats, row i in lane i: the f16
 * d at byte 0, or MXFP4's e8m0 exponent (its half, as the code book is doubled). */
DOT32_ATTR INLINE __m256 rows_scales8(const uint8_t *blk, int64_t rb, const int type) {
    if (type != REALM_TYPE_MXFP4) return rows_halves(blk, rb, 0, 8);
    float d[8];
    for (int i = 0; i < 8; i++) d[i] = realm_e8m0_to_f32_half(((const block_mxfp4 *)(blk + i * rb))->e);
    return _mm256_loadu_ps(d);
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

/* ---- Many tokens: 16 rows in the lanes of 512-bit registers ----
 *
 * From a format's wide_min tokens on (traits.c) the kernels above spend most of their
 * instructions on one row-token at a time: a broadcast of its scale product and an FMA into
 * its own 8 lanes, per block.  Here lane j of a register belongs to row j of 16: lane-group k
 * of every row (its values 4k .. 4k+3, row kernel's lane k) sits in register k of the block,
 * so one dpbusd against token t's 4 values 4k .. 4k+3 (broadcast) gives lane k of 16 rows, and
 * one FMA folds them with the rows' 16 scale products: acc_k = fma(dw dx, lane_k, acc_k), row
 * by row the row kernel's chain, the rows' 8 accumulators then summed in hsum8's order.  The
 * same floats, in about 0.7x the cycles at 16 tokens (one thread).  A 16-row group's blocks are
 * transposed once into a buffer (REALM_WIDE_DOT32_BYTES, traits.h: L1- or L2-resident) that every
 * token reads. */

/* One block of a 16-row group in the buffer: the values' lane-groups, the scales, the minimums. */
typedef struct {
    __m512i u[8];
    __m512 d, m;
} wide_block;
_Static_assert(sizeof(wide_block) == REALM_WIDE_DOT32_BYTES, "REALM_WIDE_DOT32_BYTES sizes the buffer of wide_block");

/* Rows [r, r + 16)'s nb blocks into buf. */
DOT32_ATTR INLINE void wide_pack(int64_t nb, const uint8_t *w, int64_t rb, wide_block *buf, const int type) {
    const int with_min = type == REALM_TYPE_Q4_1 || type == REALM_TYPE_Q5_1, bs = rows_block_size(type);
    for (int64_t b = 0; b < nb; b++)
        for (int h = 0; h < 2; h++) {
            const uint8_t *blk = w + 8 * h * rb + b * bs;
            __m256i r[8];
            for (int j = 0; j < 8; j++) r[j] = rows_ubytes(blk + j * rb, type);
            wide_transpose8(r);
            for (int k = 0; k < 8; k++) _mm256_store_si256((__m256i *)&buf[b].u[k] + h, r[k]);
            if (with_min) {
                __m256 d, m;
                halves_pair8(blk, rb, 0, &d, &m); /* one load a row for both */
                _mm256_store_ps((float *)&buf[b].d + 8 * h, d);
                _mm256_store_ps((float *)&buf[b].m + 8 * h, m);
            } else {
                _mm256_store_ps((float *)&buf[b].d + 8 * h, rows_scales8(blk, rb, type));
            }
        }
}

/* Tokens t .. t + T - 1 (T <= 2, in one group: t even) of a packed 16-row group into
 * y[(t + i) * ys + j]; on the way, `lines` lines a block of [*pf, pf_end) fetched ahead.
 * whole: the order of llama.cpp's repacked matrices (Q4_0, IQ4_NL, MXFP4), each block's
 * integer sum whole, acc = fma(dw dx, isum, acc). */
DOT32_ATTR INLINE void wide_tokens(int64_t nb, const wide_block *buf, const realm_act_group *a, int tg, float *y,
                                   int64_t ys, const uint8_t **pf, const uint8_t *pf_end, int lines, const int T,
                                   const int type, const int whole) {
    const int with_min = type == REALM_TYPE_Q4_1 || type == REALM_TYPE_Q5_1, off = rows_offset(type);
    const int shift = off == 128 ? 0 : off == 16 ? 3 : 4; /* -off times the 4-value sums, from -128 times them */
    __m512 acc[2][8], sm[2];
#pragma GCC unroll 2
    for (int i = 0; i < T; i++) {
        sm[i] = _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) acc[i][k] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const wide_block *blk = &buf[b];
        prefetch_lines(pf, pf_end, lines);
        __m512 d[2];
        __m512i isum[2];
        const int32_t *x[2], *o[2];
#pragma GCC unroll 2
        for (int i = 0; i < T; i++) {
            d[i] = _mm512_mul_ps(blk->d, _mm512_set1_ps(a->d[realm_act_slot(tg + i, b)]));
            if (with_min) sm[i] = _mm512_fmadd_ps(blk->m, _mm512_set1_ps(a->s[realm_act_slot(tg + i, b)]), sm[i]);
            x[i] = (const int32_t *)(const void *)(TOKEN_ROW(a, tg + i) + 32 * b);
            o[i] = OFFSET_SUMS(a, tg + i, b);
            if (whole) { /* the block's -off times its activations' sum: exact, off being 128 / 2^shift */
                int32_t os = 0;
                for (int k = 0; k < 8; k++) os += o[i][k];
                isum[i] = _mm512_set1_epi32(os >> shift);
            }
        }
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            const __m512i u = _mm512_load_si512(&blk->u[k]);
#pragma GCC unroll 2
            for (int i = 0; i < T; i++) {
                int32_t xk;
                memcpy(&xk, x[i] + k, 4);
                if (whole) {
                    isum[i] = _mm512_dpbusd_epi32(isum[i], u, _mm512_set1_epi32(xk));
                    continue;
                }
                __m512i start = _mm512_setzero_si512();
                if (off == 128) start = _mm512_set1_epi32(o[i][k]);
                else if (off) start = _mm512_srai_epi32(_mm512_set1_epi32(o[i][k]), shift);
                const __m512i p = _mm512_dpbusd_epi32(start, u, _mm512_set1_epi32(xk));
                acc[i][k] = _mm512_fmadd_ps(d[i], _mm512_cvtepi32_ps(p), acc[i][k]);
            }
        }
#pragma GCC unroll 2
        for (int i = 0; whole && i < T; i++) acc[i][0] = _mm512_fmadd_ps(d[i], _mm512_cvtepi32_ps(isum[i]), acc[i][0]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < T; i++) {
        const __m512 *v = acc[i]; /* hsum8's order: ((v4 + v0) + (v6 + v2)) + ((v5 + v1) + (v7 + v3)) */
        __m512 s = whole ? v[0]
                         : _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(v[4], v[0]), _mm512_add_ps(v[6], v[2])),
                                         _mm512_add_ps(_mm512_add_ps(v[5], v[1]), _mm512_add_ps(v[7], v[3])));
        if (with_min) s = _mm512_add_ps(s, sm[i]);
        _mm512_storeu_ps(y + i * ys, s);
    }
}

/* nrows (a multiple of 16) rows with the n_tok tokens of the groups a[0..): y[t * ys + i]. */
DOT32_ATTR INLINE void DOT32_NAME(dot32_wide)(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a,
                                              int64_t n_tok, float *y, int64_t ys, void *scratch, const int type,
                                              const int whole) {
    const int64_t rb = nb * rows_block_size(type);
    wide_block *buf = scratch;
    const uint8_t *wb = w;
    const int64_t passes = (n_tok + 1) / 2; /* spread over every block of every pass */
    const int lines = (int)((16 * rows_block_size(type) + 64 * passes - 1) / (64 * passes));
    for (int64_t r = 0; r < nrows; r += 16) {
        wide_pack(nb, wb + r * rb, rb, buf, type);
        /* the next group's 16 row streams (its lines in order), a line a block while the
         * tokens run on this one: the hardware prefetchers follow so many streams poorly */
        const uint8_t *pf = wb + (r + 16) * rb, *pf_end = r + 16 < nrows ? wb + (r + 32) * rb : pf;
        for (int64_t t = 0; t < n_tok; t += 2) {
            const realm_act_group *g = &a[t / REALM_TOK_GROUP];
            const int tg = (int)(t % REALM_TOK_GROUP);
            if (t + 1 < n_tok) wide_tokens(nb, buf, g, tg, y + t * ys + r, ys, &pf, pf_end, lines, 2, type, whole);
            else wide_tokens(nb, buf, g, tg, y + t * ys + r, ys, &pf, pf_end, lines, 1, type, whole);
        }
    }
}

#define DOT32_WIDE(NAME, WTYPE, WHOLE)                                                                              \
    DOT32_ATTR void DOT32_NAME(NAME)(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a,          \
                                     int64_t n_tok, float *y, int64_t ys, void *scratch) {                        \
        DOT32_NAME(dot32_wide)(nb, w, nrows, a, n_tok, y, ys, scratch, WTYPE, WHOLE);                              \
    }

DOT32_WIDE(realm_q4_0_wide, REALM_TYPE_Q4_0, 0)
DOT32_WIDE(realm_q4_0_wide_whole, REALM_TYPE_Q4_0, 1)
DOT32_WIDE(realm_q4_1_wide, REALM_TYPE_Q4_1, 0)
DOT32_WIDE(realm_q5_0_wide, REALM_TYPE_Q5_0, 0)
DOT32_WIDE(realm_q5_1_wide, REALM_TYPE_Q5_1, 0)
DOT32_WIDE(realm_q8_0_wide, REALM_TYPE_Q8_0, 0)
DOT32_WIDE(realm_iq4_nl_wide_whole, REALM_TYPE_IQ4_NL, 1)
DOT32_WIDE(realm_mxfp4_wide_whole, REALM_TYPE_MXFP4, 1)
#undef DOT32_WIDE
