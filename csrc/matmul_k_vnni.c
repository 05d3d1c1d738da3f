/* Several-rows kernels of the K-quants with AVX-512 VNNI (rows_vnni, traits.h).  Each row
 * gets exactly the float steps of its row kernel in matmul_avx2.c (matmul.h's numerics);
 * only the exact integer sums are formed by other instructions.  Q4_K's repacked order
 * takes 8 rows at once in the lanes of its accumulators (the rows share the activations'
 * loads and one reduction); the vec_dot kernels take a call's rows one by one, prefetching
 * the rows ahead (4 rows per step sharing the activations' loads measured slower: their
 * accumulators do not fit in the registers).  For many tokens, Q4_K's and Q2_K's repacked
 * order also has wide kernels (wide_vnni[1]: 16 rows in 512-bit lanes, below). */
#include "matmul.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <stddef.h>
#include <string.h>

#include "avx2_util.h"
#include "fp16.h"
#include "kernels.h"
#include "matmul_avx2.h"

/* ---- Q4_K, the repacked order: 8 rows in the lanes of one accumulator per token ----
 * A row's 16-byte head (d, dmin, the 12 bytes of scales and mins) and row i + 4's share
 * a vector.  Sub-blocks 2j and 2j + 1 are the low and high nibbles of the same 32 bytes:
 * dpbusd gives their 8 lanes of 4 products each (at most 4 * 15 * 127: int16), packs puts
 * both in one vector and dpwssd multiplies each pair of lanes by its sub-block's scale
 * and adds it to the row's lanes. */

/* Per 128-bit half of a [row i | row i + 4] head vector: bytes 0..7 the 8 scales, 8..15
 * the 8 mins (6 bits each, as k4_scales in matmul_avx2.c unpacks them). */
VNNI INLINE __m256i q4_K_scales2(__m256i head) {
    /* dwords of a half: u0 = d | dmin << 16, u1..u3 the packed bytes */
    const __m256i a = _mm256_shuffle_epi32(head, _MM_SHUFFLE(3, 2, 3, 1)); /* u1 u3 u2 u3 */
    const __m256i b = _mm256_shuffle_epi32(head, _MM_SHUFFLE(2, 2, 1, 1)); /* u1 u1 u2 u2 */
    const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(a, _mm256_setr_epi32(0, 0, 0, 4, 0, 0, 0, 4)),
                                        _mm256_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f,
                                                          0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi32(b, 2), _mm256_setr_epi32(0, 0x30303030, 0, 0x30303030, 0,
                                                                                   0x30303030, 0, 0x30303030));
    return _mm256_or_si256(lo, hi);
}

/* The 8 rows' d and dmin (dword 0 of each half of their heads) as floats, in row order. */
VNNI INLINE void q4_K_d8(const __m256i *head, __m256 *d, __m256 *dmin) {
    const __m256i p = _mm256_unpacklo_epi32(head[0], head[1]), q = _mm256_unpacklo_epi32(head[2], head[3]);
    split_halves8(_mm256_unpacklo_epi64(p, q), d, dmin); /* dword i: row i's d | dmin << 16 */
}

/* The 8 rows at blk, blk + rb, ...: sm[i] the scales and mins of rows i | i + 4 (q4_K_scales2),
 * d and dmin the rows' block scales in row order. */
VNNI INLINE void q4_K_heads8(const uint8_t *blk, int64_t rb, __m256i sm[4], __m256 *d, __m256 *dmin) {
    __m256i head[4];
    for (int i = 0; i < 4; i++) {
        head[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(blk + i * rb))),
                                          _mm_loadu_si128((const __m128i *)(blk + (i + 4) * rb)), 1);
        sm[i] = q4_K_scales2(head[i]);
    }
    q4_K_d8(head, d, dmin);
}

VNNI INLINE void q4_K_rows8_k(int64_t nb, const uint8_t *w, int64_t rb, const realm_act_group *a,
                              float *y, int64_t ys, const int T) {
    const int bs = (int)sizeof(block_q4_K), qoff = (int)offsetof(block_q4_K, qs);
    const __m256i m4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256 acc[G], accm[G];
    for (int t = 0; t < T; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * bs;
        __m256i sm[4];
        __m256 dw, dmw;
        q4_K_heads8(blk, rb, sm, &dw, &dmw);
        /* row by row: a row's values and scales decoded once for all the tokens */
        __m256i s[G][8];
        for (int r = 0; r < 8; r++) {
            /* row r's scales in both halves, as int16 words [s_2j x4, s_2j+1 x4] per half */
            const __m256i sr = r < 4 ? _mm256_permute2x128_si256(sm[r], sm[r], 0x00)
                                     : _mm256_permute2x128_si256(sm[r - 4], sm[r - 4], 0x11);
            const uint8_t *q = blk + r * rb + qoff;
            __m256i lo[4], hi[4], sc[4];
            for (int j = 0; j < 4; j++) {
                const __m256i v = load32(q + 32 * j);
                lo[j] = _mm256_and_si256(v, m4);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                const char e = (char)(2 * j), o = (char)(2 * j + 1), z = (char)0x80;
                sc[j] = _mm256_shuffle_epi8(sr, _mm256_setr_epi8(e, z, e, z, e, z, e, z, o, z, o, z, o, z, o, z,
                                                                 e, z, e, z, e, z, e, z, o, z, o, z, o, z, o, z));
            }
            for (int t = 0; t < T; t++) {
                const int8_t *xt = TOKEN_ROW(a, t) + QK_K * b;
                s[t][r] = zero;
                for (int j = 0; j < 4; j++) {
                    const __m256i l = _mm256_dpbusd_epi32(zero, lo[j], load32(xt + 64 * j));
                    const __m256i h = _mm256_dpbusd_epi32(zero, hi[j], load32(xt + 64 * j + 32));
                    s[t][r] = _mm256_dpwssd_epi32(s[t][r], _mm256_packs_epi32(l, h), sc[j]);
                }
            }
        }
        /* mins of rows i | i + 4 as int16, times the 16-value sums in pairs (one per sub-block) */
        __m256i mins[4];
        const __m256i mctrl = _mm256_setr_epi8(8, -128, 9, -128, 10, -128, 11, -128, 12, -128, 13, -128, 14, -128, 15,
                                               -128, 8, -128, 9, -128, 10, -128, 11, -128, 12, -128, 13, -128, 14,
                                               -128, 15, -128);
        for (int i = 0; i < 4; i++) mins[i] = _mm256_shuffle_epi8(sm[i], mctrl);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            const __m256i pb = _mm256_madd_epi16(BSUMS(a, t, b), _mm256_set1_epi16(1));
            const __m256i pb2 = _mm256_permute4x64_epi64(_mm256_packs_epi32(pb, pb), _MM_SHUFFLE(2, 0, 2, 0));
            __m256i mm[4];
            for (int i = 0; i < 4; i++) mm[i] = _mm256_madd_epi16(mins[i], pb2);
            const __m256 dxt = _mm256_set1_ps(dx[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum8x8(s[t])), _mm256_mul_ps(dw, dxt), acc[t]);
            accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows_hsum(mm)), _mm256_mul_ps(dmw, dxt), accm[t]);
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ys, _mm256_sub_ps(acc[t], accm[t]));
}

/* A call prefetches the start of its rows only: prefetching the rows ahead at each block, as
 * the other rows kernels do, made a 16384 x 4096 matrix streamed from memory at one token
 * 0.78x the speed of the row-by-row kernel (0.90x without; 1.55x where it is cache-resident). */
VNNI void realm_q4_K_rows_whole_vnni(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok,
                                     float *y, int64_t ys) {
    const int64_t rb = nb * (int64_t)sizeof(block_q4_K);
    const uint8_t *wb = w, *end = wb + nrows * rb;
    prefetch_start(wb, end, pf_lead(rb, 8));
    int64_t r = 0;
    for (; r + 8 <= nrows; r += 8) DISPATCH_T(ntok, q4_K_rows8_k(nb, wb + r * rb, rb, a, y + r, ys, T_));
    for (; r < nrows; r++) realm_q4_K_dot_whole_avx2(nb, wb + r * rb, a, ntok, y + r, ys);
}

/* ---- Q4_K, the repacked order, many tokens: 16 rows in the lanes of 512-bit registers ----
 * As matmul_dot32_rows.h's wide kernels: lane j of a register belongs to row j of a 16-row
 * group, whose blocks are transposed once into a buffer (L1-resident for rows of up to 2,048
 * values) that every token reads.  Register 8i + k of a block holds each row's bytes
 * 32i + 4k .. +3: values 4k .. 4k+3 of sub-blocks 2i (low nibbles) and 2i + 1 (high).  dpbusd
 * against a token's 4 values of a sub-block gives 4 products a row; 8 in a chain are the
 * sub-block's sum, times its scale (vpmulld) into the block's whole sum isum; dpwssd takes the
 * minimums' sum imin in pairs of sub-blocks.  Then q4_K_rows8_k's floats row by row:
 * acc = fma(isum, dw dx, acc), accm = fma(imin, dmin dx, accm), y = acc - accm.  Against the
 * 8-rows kernel, 3x fewer instructions a row and token, for a transposition each 16 rows. */
typedef struct {
    __m512i q[32];   /* q[8i + k], lane j: row j's bytes 32i + 4k .. +3 of qs */
    __m512i sc[8];   /* sub-block j's scale (int32) */
    __m512i mins[4]; /* the minimums of sub-blocks 2i, 2i + 1: the int16 pair of a dword */
    __m512 d, dmin;
} wide_q4_K;
_Static_assert(sizeof(wide_q4_K) == REALM_WIDE_Q4_K_BYTES, "REALM_WIDE_Q4_K_BYTES sizes the buffer of wide_q4_K");

/* The 32 bytes at src, src + rb, ... (8 rows) transposed by dword into half h of dst[0..8):
 * lane j of dst[k]'s half is row j's dword k. */
VNNI INLINE void wide_dwords8(const uint8_t *src, int64_t rb, __m512i *dst, int h) {
    __m256i r[8];
    for (int j = 0; j < 8; j++) r[j] = load32(src + j * rb);
    wide_transpose8(r);
    for (int k = 0; k < 8; k++) _mm256_store_si256((__m256i *)&dst[k] + h, r[k]);
}

/* Rows [r, r + 16)'s nb blocks into buf, 8 rows (a half of each register) at a time. */
VNNI INLINE void wide_q4_K_pack(int64_t nb, const uint8_t *w, int64_t rb, wide_q4_K *buf) {
    const int bs = (int)sizeof(block_q4_K), qoff = (int)offsetof(block_q4_K, qs);
    for (int64_t b = 0; b < nb; b++)
        for (int h = 0; h < 2; h++) {
            const uint8_t *blk = w + 8 * h * rb + b * bs;
            for (int i = 0; i < 4; i++) wide_dwords8(blk + qoff + 32 * i, rb, &buf[b].q[8 * i], h);
            __m256i sm[4], sc[8], mn[8];
            __m256 d, dmin;
            q4_K_heads8(blk, rb, sm, &d, &dmin);
            _mm256_store_ps((float *)&buf[b].d + 8 * h, d);
            _mm256_store_ps((float *)&buf[b].dmin + 8 * h, dmin);
            for (int r = 0; r < 8; r++) { /* row r's 8 scales and 8 minimums as int32 */
                const __m128i v = r < 4 ? _mm256_castsi256_si128(sm[r]) : _mm256_extracti128_si256(sm[r - 4], 1);
                sc[r] = _mm256_cvtepu8_epi32(v);
                mn[r] = _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8));
            }
            wide_transpose8(sc);
            wide_transpose8(mn);
            for (int j = 0; j < 8; j++) _mm256_store_si256((__m256i *)&buf[b].sc[j] + h, sc[j]);
            for (int i = 0; i < 4; i++)
                _mm256_store_si256((__m256i *)&buf[b].mins[i] + h,
                                   _mm256_or_si256(mn[2 * i], _mm256_slli_epi32(mn[2 * i + 1], 16)));
        }
}

/* A block's whole sums into 16 rows' accumulators, q4_K_rows8_k's floats:
 * acc = fma(isum, dw dx, acc), accm = fma(imin, dmin dx, accm) (Q4_K, Q2_K). */
VNNI INLINE void wide_fold_k(__m512 *acc, __m512 *accm, __m512i isum, __m512i imin, __m512 d, __m512 dmin, float dx) {
    const __m512 vdx = _mm512_set1_ps(dx);
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, vdx), *acc);
    *accm = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dmin, vdx), *accm);
}

/* Tokens tg .. tg + T - 1 (T <= 2) of group a with a packed 16-row group into y[i * ys + j];
 * on the way, `lines` lines a block of [*pf, pf_end) fetched ahead. */
VNNI INLINE void wide_q4_K_tokens(int64_t nb, const wide_q4_K *buf, const realm_act_group *a, int tg, float *y,
                                  int64_t ys, const uint8_t **pf, const uint8_t *pf_end, int lines, const int T) {
    const __m512i m4 = _mm512_set1_epi32(0x0f0f0f0f), zero = _mm512_setzero_si512();
    __m512 acc[2], accm[2];
    for (int i = 0; i < T; i++) acc[i] = accm[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const wide_q4_K *blk = &buf[b];
        prefetch_lines(pf, pf_end, lines);
        __m512i isum[2], imin[2];
        const int8_t *x[2];
        for (int i = 0; i < T; i++) {
            x[i] = TOKEN_ROW(a, tg + i) + QK_K * b;
            /* the 32-value sums in int16 pairs (sub-blocks 2p, 2p + 1; at most 32 * 128) */
            int32_t pair[4];
            _mm_storeu_si128((__m128i *)pair, _mm256_cvtepi32_epi16(_mm256_madd_epi16(BSUMS(a, tg + i, b),
                                                                                      _mm256_set1_epi16(1))));
            imin[i] = zero;
            for (int p = 0; p < 4; p++) imin[i] = _mm512_dpwssd_epi32(imin[i], blk->mins[p], _mm512_set1_epi32(pair[p]));
            isum[i] = zero;
        }
        for (int s = 0; s < 4; s++) { /* sub-blocks 2s, 2s + 1 */
            __m512i lo[2], hi[2];
            for (int i = 0; i < T; i++) lo[i] = hi[i] = zero;
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                const __m512i v = _mm512_load_si512(&blk->q[8 * s + k]);
                const __m512i vl = _mm512_and_si512(v, m4), vh = _mm512_and_si512(_mm512_srli_epi32(v, 4), m4);
                for (int i = 0; i < T; i++) {
                    int32_t xl, xh;
                    memcpy(&xl, x[i] + 64 * s + 4 * k, 4);
                    memcpy(&xh, x[i] + 64 * s + 32 + 4 * k, 4);
                    lo[i] = _mm512_dpbusd_epi32(lo[i], vl, _mm512_set1_epi32(xl));
                    hi[i] = _mm512_dpbusd_epi32(hi[i], vh, _mm512_set1_epi32(xh));
                }
            }
            for (int i = 0; i < T; i++)
                isum[i] = _mm512_add_epi32(isum[i], _mm512_add_epi32(_mm512_mullo_epi32(lo[i], blk->sc[2 * s]),
                                                                     _mm512_mullo_epi32(hi[i], blk->sc[2 * s + 1])));
        }
        for (int i = 0; i < T; i++)
            wide_fold_k(&acc[i], &accm[i], isum[i], imin[i], blk->d, blk->dmin, a->d[realm_act_slot(tg + i, b)]);
    }
    for (int i = 0; i < T; i++) _mm512_storeu_ps(y + i * ys, _mm512_sub_ps(acc[i], accm[i]));
}

/* ---- Q2_K, the repacked order, many tokens: as Q4_K's wide kernel ----
 * Register 8h + k of a block holds each row's bytes 32h + 4k .. +3 of qs: at bits 2s, values
 * 4k .. 4k+3 of group 4h + s (32 values), which are sub-block 2(4h + s) for k < 4, the next one
 * for k >= 4.  Chains of 4 dpbusd give a sub-block's sum (of 16), times its 4-bit scale (vpmulld)
 * into the block's whole sum; dpwssd takes the minimums against the 16-value sums in pairs. */
typedef struct {
    __m512i q[16];   /* q[8h + k], lane j: row j's bytes 32h + 4k .. +3 of qs */
    __m512i sc[16];  /* sub-block j's scale (int32) */
    __m512i mins[8]; /* the minimums of sub-blocks 2p, 2p + 1: the int16 pair of a dword */
    __m512 d, dmin;
} wide_q2_K;
_Static_assert(sizeof(wide_q2_K) == REALM_WIDE_Q2_K_BYTES, "REALM_WIDE_Q2_K_BYTES sizes the buffer of wide_q2_K");

VNNI INLINE void wide_q2_K_pack(int64_t nb, const uint8_t *w, int64_t rb, wide_q2_K *buf) {
    const int bs = (int)sizeof(block_q2_K);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; b++)
        for (int h = 0; h < 2; h++) {
            const uint8_t *blk = w + 8 * h * rb + b * bs;
            for (int i = 0; i < 2; i++) wide_dwords8(blk + offsetof(block_q2_K, qs) + 32 * i, rb, &buf[b].q[8 * i], h);
            __m256 d, dmin;
            halves_pair8(blk, rb, offsetof(block_q2_K, d), &d, &dmin); /* dmin follows d */
            _mm256_store_ps((float *)&buf[b].d + 8 * h, d);
            _mm256_store_ps((float *)&buf[b].dmin + 8 * h, dmin);
            /* sc[i][r], mn[i][r]: row r's scales and minimums of sub-blocks 8i .. 8i + 7, as int32 */
            __m256i sc[2][8], mn[2][8];
            for (int r = 0; r < 8; r++) {
                const __m128i v = _mm_loadu_si128((const __m128i *)(blk + r * rb + offsetof(block_q2_K, scales)));
                const __m128i lo = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
                sc[0][r] = _mm256_cvtepu8_epi32(lo);
                sc[1][r] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
                mn[0][r] = _mm256_cvtepu8_epi32(hi);
                mn[1][r] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
            }
            for (int i = 0; i < 2; i++) {
                wide_transpose8(sc[i]);
                wide_transpose8(mn[i]);
                for (int j = 0; j < 8; j++) _mm256_store_si256((__m256i *)&buf[b].sc[8 * i + j] + h, sc[i][j]);
                for (int p = 0; p < 4; p++)
                    _mm256_store_si256((__m256i *)&buf[b].mins[4 * i + p] + h,
                                       _mm256_or_si256(mn[i][2 * p], _mm256_slli_epi32(mn[i][2 * p + 1], 16)));
            }
        }
}

VNNI INLINE void wide_q2_K_tokens(int64_t nb, const wide_q2_K *buf, const realm_act_group *a, int tg, float *y,
                                  int64_t ys, const uint8_t **pf, const uint8_t *pf_end, int lines, const int T) {
    const __m512i m2 = _mm512_set1_epi32(0x03030303), zero = _mm512_setzero_si512();
    __m512 acc[2], accm[2];
    for (int i = 0; i < T; i++) acc[i] = accm[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const wide_q2_K *blk = &buf[b];
        prefetch_lines(pf, pf_end, lines);
        __m512i isum[2], imin[2];
        const int8_t *x[2];
        for (int i = 0; i < T; i++) {
            x[i] = TOKEN_ROW(a, tg + i) + QK_K * b;
            const int16_t *bsum = a->bsums + (int64_t)(tg + i) * (a->n_in / 16) + 16 * b;
            imin[i] = zero;
            for (int p = 0; p < 8; p++) {
                int32_t pair; /* the 16-value sums of sub-blocks 2p, 2p + 1 */
                memcpy(&pair, bsum + 2 * p, 4);
                imin[i] = _mm512_dpwssd_epi32(imin[i], blk->mins[p], _mm512_set1_epi32(pair));
            }
            isum[i] = zero;
        }
        for (int g = 0; g < 8; g++) { /* sub-blocks 2g, 2g + 1 */
            __m512i lo[2], hi[2];
            for (int i = 0; i < T; i++) lo[i] = hi[i] = zero;
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                const __m512i u = _mm512_and_si512(_mm512_srli_epi32(_mm512_load_si512(&blk->q[8 * (g / 4) + k]),
                                                                     2 * (g % 4)), m2);
                for (int i = 0; i < T; i++) {
                    int32_t xk;
                    memcpy(&xk, x[i] + 32 * g + 4 * k, 4);
                    if (k < 4) lo[i] = _mm512_dpbusd_epi32(lo[i], u, _mm512_set1_epi32(xk));
                    else hi[i] = _mm512_dpbusd_epi32(hi[i], u, _mm512_set1_epi32(xk));
                }
            }
            for (int i = 0; i < T; i++)
                isum[i] = _mm512_add_epi32(isum[i], _mm512_add_epi32(_mm512_mullo_epi32(lo[i], blk->sc[2 * g]),
                                                                     _mm512_mullo_epi32(hi[i], blk->sc[2 * g + 1])));
        }
        for (int i = 0; i < T; i++)
            wide_fold_k(&acc[i], &accm[i], isum[i], imin[i], blk->d, blk->dmin, a->d[realm_act_slot(tg + i, b)]);
    }
    for (int i = 0; i < T; i++) _mm512_storeu_ps(y + i * ys, _mm512_sub_ps(acc[i], accm[i]));
}

/* nrows (a multiple of 16) rows with the n_tok tokens of the groups a[0..): y[t * ys + i]
 * (realm_dot_wide_fn), the walk of matmul_dot32_rows.h's dot32_wide: each 16 rows packed, then
 * their tokens two at a time, the next 16 rows fetched ahead a line a block on the way. */
#define WIDE_K(NAME, BLOCK, BUF, PACK, TOKENS)                                                                      \
    VNNI void NAME(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int64_t n_tok, float *y,   \
                   int64_t ys, void *scratch) {                                                                  \
        const int64_t rb = nb * (int64_t)sizeof(BLOCK), passes = (n_tok + 1) / 2;                                \
        const int lines = (int)((16 * (int64_t)sizeof(BLOCK) + 64 * passes - 1) / (64 * passes));                \
        BUF *buf = scratch;                                                                                      \
        const uint8_t *wb = w;                                                                                   \
        for (int64_t r = 0; r < nrows; r += 16) {                                                                \
            PACK(nb, wb + r * rb, rb, buf);                                                                      \
            const uint8_t *pf = wb + (r + 16) * rb, *pf_end = r + 16 < nrows ? wb + (r + 32) * rb : pf;          \
            for (int64_t t = 0; t < n_tok; t += 2) {                                                             \
                const realm_act_group *g = &a[t / REALM_TOK_GROUP];                                              \
                const int tg = (int)(t % REALM_TOK_GROUP);                                                       \
                if (t + 1 < n_tok) TOKENS(nb, buf, g, tg, y + t * ys + r, ys, &pf, pf_end, lines, 2);            \
                else TOKENS(nb, buf, g, tg, y + t * ys + r, ys, &pf, pf_end, lines, 1);                          \
            }                                                                                                    \
        }                                                                                                        \
    }

WIDE_K(realm_q2_K_wide_whole_vnni, block_q2_K, wide_q2_K, wide_q2_K_pack, wide_q2_K_tokens)
WIDE_K(realm_q4_K_wide_whole_vnni, block_q4_K, wide_q4_K, wide_q4_K_pack, wide_q4_K_tokens)
#undef WIDE_K

/* ---- the vec_dot order: each row its own 8 lanes per token, as its row kernel ----
 * dpbusd gives the 8 lanes of a 32-value group (4 products each, within int16 for these
 * formats); two groups' lanes go into one vector as int16 pairs, and dpwssd multiplies
 * each by its scale and adds both to the row's lanes (exact: any order). */

/* s + lane k of l0 times the low word of sp's dword k + lane k of l1 times the high word. */
VNNI INLINE __m256i scale_pair(__m256i s, __m256i l0, __m256i l1, __m256i sp) {
    return _mm256_dpwssd_epi32(s, _mm256_blend_epi16(l0, _mm256_slli_epi32(l1, 16), 0xaa), sp);
}

/* Dword k of the result: lane k's scales in groups 2p and 2p + 1 (of 32 values each) of a
 * block with a scale per 16 values (Q3_K, Q6_K): lanes 0..3 take the group's first 16. */
VNNI INLINE __m256i pair_scales16(const scales16 *sc, const int p) {
    const int e = 8 * (p & 1);
    const __m256i ctrl = _mm256_setr_epi8(e, e + 1, e + 4, e + 5, e, e + 1, e + 4, e + 5, e, e + 1, e + 4, e + 5, e, e + 1,
                                          e + 4, e + 5, e + 2, e + 3, e + 6, e + 7, e + 2, e + 3, e + 6, e + 7, e + 2, e + 3,
                                          e + 6, e + 7, e + 2, e + 3, e + 6, e + 7);
    return _mm256_shuffle_epi8(p < 2 ? sc->lo : sc->hi, ctrl);
}

/* Bit i of each byte of bytes, at bit s. */
VNNI INLINE __m256i bit_at(__m256i bytes, const int i, const int s) {
    return _mm256_and_si256(i <= s ? _mm256_slli_epi16(bytes, s - i) : _mm256_srli_epi16(bytes, i - s),
                            _mm256_set1_epi8((char)(1 << s)));
}

/* The block of `size` bytes at `lead` bytes past blk, unless that is past the matrix's end:
 * the row kernels below fetch the rows ahead at their pace. */
VNNI INLINE void prefetch_ahead(const void *blk, int64_t lead, const uint8_t *end, const int size) {
    const uint8_t *pf = (const uint8_t *)blk + lead;
    if (pf < end)
        for (int k = 0; k < size; k += 64) _mm_prefetch((const char *)(pf + k), _MM_HINT_T0);
}

/* Q3_K, one row at a time as Q6_K.  A value is u - 4, u = its 2 low bits + 4 * its hmask bit
 * (0..7, dpbusd's unsigned side); each lane starts from -4 times its 4 activations' sum (the
 * buffer's offset sums o, which are -128 times it), so the lanes are q3_K_k's exactly. */
VNNI INLINE void q3_K_row_k(int64_t nb, const block_q3_K *x, const uint8_t *end, const realm_act_group *a, float *y,
                            int64_t ys, const int T) {
    const __m256i m3 = _mm256_set1_epi8(3), zero = _mm256_setzero_si256();
    const int64_t lead = pf_lead(nb * (int64_t)sizeof(block_q3_K), 1);
    __m256 acc[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        prefetch_ahead(x + b, lead, end, (int)sizeof(block_q3_K));
        const scales16 sc = split16(q3_scales(x[b].scales));
        const __m256i hm = load32(x[b].hmask);
        __m256i u[8], sp[4];
        for (int g = 0; g < 8; g++) /* (a & c) | b: the crumb, and the hmask bit as 4 */
            u[g] = _mm256_ternarylogic_epi32(_mm256_srli_epi16(load32(x[b].qs + 32 * (g / 4)), 2 * (g % 4)),
                                             bit_at(hm, g, 2), m3, 0xEC);
        for (int p = 0; p < 4; p++) sp[p] = pair_scales16(&sc, p);
        const float dw = _cvtsh_ss(x[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            __m256i s = zero;
            for (int g = 0; g < 8; g += 2)
                s = scale_pair(s,
                               _mm256_dpbusd_epi32(_mm256_srai_epi32(OFFSETS(a, t, 8 * b + g), 5), u[g],
                                                   XROW(a, t, b, 32 * g)),
                               _mm256_dpbusd_epi32(_mm256_srai_epi32(OFFSETS(a, t, 8 * b + g + 1), 5), u[g + 1],
                                                   XROW(a, t, b, 32 * g + 32)),
                               sp[g / 2]);
            acc[t] = fold8(acc[t], dx[t] * dw, s);
        }
    }
    store_hsum8(y, ys, acc, T);
}

/* Q6_K, one row at a time (its block decoded once for the token group), the rows ahead
 * prefetched at their pace. */
VNNI INLINE void q6_K_row_k(int64_t nb, const block_q6_K *x, const uint8_t *end, const realm_act_group *a, float *y,
                            int64_t ys, const int T) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), zero = _mm256_setzero_si256();
    const int64_t lead = pf_lead(nb * (int64_t)sizeof(block_q6_K), 1);
    __m256 acc[G];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        prefetch_ahead(x + b, lead, end, (int)sizeof(block_q6_K));
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[b].scales));
        const scales16 sc = split16(sc16);
        const __m256i nsc16 = _mm256_mullo_epi16(sc16, _mm256_set1_epi16(-32)); /* |sc| <= 128: int16 */
        __m256i u[8];
        for (int n = 0; n < 2; n++) {
            const __m256i ql0 = load32(x[b].ql + 64 * n), ql1 = load32(x[b].ql + 64 * n + 32);
            const __m256i qh = load32(x[b].qh + 32 * n);
            /* group 4n + k: 4 bits of ql, and bits 2k, 2k + 1 of qh as bits 4, 5 (0xEC: (a & c) | b) */
            const __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30);
            const __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30);
            const __m256i h3 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30);
            u[4 * n] = _mm256_ternarylogic_epi32(ql0, h0, m4, 0xEC);
            u[4 * n + 1] = _mm256_ternarylogic_epi32(ql1, h1, m4, 0xEC);
            u[4 * n + 2] = _mm256_ternarylogic_epi32(_mm256_srli_epi16(ql0, 4), _mm256_and_si256(qh, m30), m4, 0xEC);
            u[4 * n + 3] = _mm256_ternarylogic_epi32(_mm256_srli_epi16(ql1, 4), h3, m4, 0xEC);
        }
        __m256i sp[4];
        for (int p = 0; p < 4; p++) sp[p] = pair_scales16(&sc, p);
        const float dw = _cvtsh_ss(x[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        for (int t = 0; t < T; t++) {
            /* the values' offset -32 per lane, from the 16-value sums times -32 sc (as q6_K_k) */
            __m256i s = _mm256_madd_epi16(BSUMS(a, t, b), nsc16);
            for (int g = 0; g < 8; g += 2)
                s = scale_pair(s, _mm256_dpbusd_epi32(zero, u[g], XROW(a, t, b, 32 * g)),
                               _mm256_dpbusd_epi32(zero, u[g + 1], XROW(a, t, b, 32 * g + 32)), sp[g / 2]);
            acc[t] = fold8(acc[t], dx[t] * dw, s);
        }
    }
    store_hsum8(y, ys, acc, T);
}

/* Q5_K, one row at a time as Q6_K: the 8 scales one per 32-value group; the minimums' sums
 * (q5_K_k's summs) for all the group's tokens at once, token t in lane t. */
VNNI INLINE void q5_K_row_k(int64_t nb, const block_q5_K *x, const uint8_t *end, const realm_act_group *a, float *y,
                            int64_t ys, const int T) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const int64_t lead = pf_lead(nb * (int64_t)sizeof(block_q5_K), 1);
    __m256 acc[G], summs = _mm256_setzero_ps();
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        prefetch_ahead(x + b, lead, end, (int)sizeof(block_q5_K));
        __m256i sc, mins;
        k4_scales(x[b].scales, &sc, &mins);
        const __m256i qh = load32(x[b].qh);
        __m256i lo[4], hi[4], sp[4];
        for (int j = 0; j < 4; j++) {
            const __m256i q = load32(x[b].qs + 32 * j);
            lo[j] = _mm256_ternarylogic_epi32(q, bit_at(qh, 2 * j, 4), m4, 0xEC); /* (a & c) | b */
            hi[j] = _mm256_ternarylogic_epi32(_mm256_srli_epi16(q, 4), bit_at(qh, 2 * j + 1, 4), m4, 0xEC);
            /* the scales of groups 2j, 2j + 1 in every dword (dword j of sc) */
            sp[j] = _mm256_shuffle_epi8(sc, _mm256_set1_epi32(0x03020100 + 0x04040404 * j));
        }
        const float dw = _cvtsh_ss(x[b].d);
        const float *dx = a->d + realm_act_slot(0, b);
        __m256i mm[G];
        for (int t = 0; t < G; t++) mm[t] = t < T ? _mm256_madd_epi16(BSUMS(a, t, b), mins) : zero;
        for (int t = 0; t < T; t++) {
            __m256i s = zero;
            for (int j = 0; j < 4; j++)
                s = scale_pair(s, _mm256_dpbusd_epi32(zero, lo[j], XROW(a, t, b, 64 * j)),
                               _mm256_dpbusd_epi32(zero, hi[j], XROW(a, t, b, 64 * j + 32)), sp[j]);
            acc[t] = fold8(acc[t], dx[t] * dw, s);
        }
        /* lane t: fma(-(dx_t * dmin), the minimums' sum, summs_t) */
        const __m256 ndm = _mm256_xor_ps(_mm256_mul_ps(_mm256_loadu_ps(dx), _mm256_set1_ps(_cvtsh_ss(x[b].dmin))),
                                         _mm256_set1_ps(-0.0f));
        summs = _mm256_fmadd_ps(ndm, _mm256_cvtepi32_ps(hsum8x8(mm)), summs);
    }
    float sm[G];
    _mm256_storeu_ps(sm, summs);
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]) + sm[t];
}

/* The row kernel BODY over a call's rows, the start of its rows prefetched. */
#define ROWS_VNNI(NAME, BODY, BLOCK)                                                                              \
    VNNI void NAME(int64_t nb, const void *w, int64_t nrows, const realm_act_group *a, int ntok, float *y,          \
                   int64_t ys) {                                                                                 \
        const BLOCK *x = w;                                                                                      \
        const uint8_t *end = (const uint8_t *)(x + nrows * nb);                                                  \
        prefetch_start(w, end, pf_lead(nb * (int64_t)sizeof(BLOCK), 1));                                        \
        for (int64_t r = 0; r < nrows; r++) DISPATCH_T(ntok, BODY(nb, x + r * nb, end, a, y + r, ys, T_));       \
    }

ROWS_VNNI(realm_q3_K_rows_vnni, q3_K_row_k, block_q3_K)
ROWS_VNNI(realm_q5_K_rows_vnni, q5_K_row_k, block_q5_K)
ROWS_VNNI(realm_q6_K_rows_vnni, q6_K_row_k, block_q6_K)
#undef ROWS_VNNI

#endif
