/* Quantization of f32 activation rows to 8 bits, the input side of the
 * quantized matrix products (see matmul.h for the buffer layout).  The steps
 * are ggml's (quantize_row_q8_0 / _q8_1 for blocks of 32, quantize_row_q8_K
 * for blocks of 256), so the integers and scales equal llama.cpp's:
 *     amax = max |x|   (NaNs skipped)
 *     blocks of 32:  d' = amax / 127, stored d = f16(d'), id = 127 / amax,
 *                    s = f16(d' * sum(q))
 *     blocks of 256: id = 127 / amax, d = 1 / id
 *     q    = round-to-nearest-even(x * id), clamped to [-127, 127]; NaN -> -127
 * (d, s, id all 0 when amax < 2^-100).  Both keep o, -128 times each 4 values'
 * sum: the lanes' starting point when a kernel takes a weight's values as
 * unsigned bytes w + 128 / 2^k (matmul_dot32_rows.h; Q3_K's w + 4 in
 * matmul_k_vnni.c).  The scalar and AVX2 rows
 * perform the same float operations, and the scalar code spells out what
 * cvtps2dq + packs do at the edges, so the two are bit-identical on every
 * input, NaN and infinity included.  The float weights' activations are the
 * rows rounded to f16 / bf16 (realm_round_rows_*), as llama.cpp's from_float
 * does. */
#include "matmul.h"
#include "fp16.h"

#include <math.h>
#include <string.h>

static int64_t align64(int64_t n) { return (n + 63) & ~(int64_t)63; }

realm_act_layout realm_act_layout_of(int act, int64_t n_tok, int64_t n_in) {
    realm_act_layout l = {0, 0, 0, 0, 0, 0};
    if (act == REALM_ACT_F32 || act == REALM_ACT_F16) {
        l.total = n_tok * n_in * 4;
        return l;
    }
    if (act == REALM_ACT_BF16) {
        l.tiny = align64(n_tok * n_in * 2);
        l.total = l.tiny + n_tok;
        return l;
    }
    const int64_t groups = (n_tok + REALM_TOK_GROUP - 1) / REALM_TOK_GROUP;
    const int64_t table = groups * realm_act_blocks(act, n_in) * REALM_TOK_GROUP * 4; /* bytes */
    int64_t off = align64(n_tok * n_in);
    if (act == REALM_ACT_Q8_K) {
        l.bsums = off;
        off = align64(off + n_tok * (n_in / 16) * 2);
    } else {
        l.s = off;
        off = align64(off + table);
    }
    l.d = off;
    off = align64(off + table);
    l.o = off;
    off = align64(off + n_tok * n_in); /* n_in / 4 int32 a row */
    l.total = off;
    return l;
}

realm_act_group realm_act_view(int act, const void *buf, int64_t n_tok, int64_t n_in, int64_t g) {
    realm_act_group v;
    memset(&v, 0, sizeof v);
    v.n_in = n_in;
    const char *p = buf;
    const int64_t first = g * REALM_TOK_GROUP;
    if (act == REALM_ACT_F32 || act == REALM_ACT_F16) {
        v.xf = (const float *)buf + first * n_in;
        return v;
    }
    if (act == REALM_ACT_BF16) {
        v.xh = (const uint16_t *)buf + first * n_in;
        v.xtiny = (const uint8_t *)buf + realm_act_layout_of(act, n_tok, n_in).tiny + first;
        return v;
    }
    const realm_act_layout l = realm_act_layout_of(act, n_tok, n_in);
    const int64_t table = realm_act_blocks(act, n_in) * REALM_TOK_GROUP;
    v.qs = (const int8_t *)p + first * n_in;
    if (act == REALM_ACT_Q8_K) v.bsums = (const int16_t *)(p + l.bsums) + first * (n_in / 16);
    else v.s = (const float *)(p + l.s) + g * table;
    v.o = (const int32_t *)(p + l.o) + first * (n_in / 4);
    v.d = (const float *)(p + l.d) + g * table;
    return v;
}

/* Where row t's values and per-block scalars go. */
typedef struct {
    int8_t *qs;
    int16_t *bsums;
    float *s; /* the group's tables; (t, b) at realm_act_slot(tg, b) */
    float *d;
    int32_t *o;
    int tg;
} row_out;

static row_out row_at(int act, void *buf, int64_t n_tok, int64_t n_in, int64_t t) {
    const realm_act_layout l = realm_act_layout_of(act, n_tok, n_in);
    const int64_t table = (t / REALM_TOK_GROUP) * realm_act_blocks(act, n_in) * REALM_TOK_GROUP;
    char *p = buf;
    row_out r;
    r.qs = (int8_t *)p + t * n_in;
    r.bsums = act == REALM_ACT_Q8_K ? (int16_t *)(p + l.bsums) + t * (n_in / 16) : NULL;
    r.s = act == REALM_ACT_Q8 ? (float *)(p + l.s) + table : NULL;
    r.d = (float *)(p + l.d) + table;
    r.o = (int32_t *)(p + l.o) + t * (n_in / 4);
    r.tg = (int)(t % REALM_TOK_GROUP);
    return r;
}

/* After the last row: zero the slots of the tokens missing from its group. */
static void zero_missing(int act, void *buf, int64_t n_tok, int64_t n_in, int64_t t) {
    if (t != n_tok - 1) return;
    const row_out last = row_at(act, buf, n_tok, n_in, t);
    for (int tg = last.tg + 1; tg < REALM_TOK_GROUP; tg++) {
        for (int64_t b = 0; b < realm_act_blocks(act, n_in); b++) {
            last.d[realm_act_slot(tg, b)] = 0.0f;
            if (last.s) last.s[realm_act_slot(tg, b)] = 0.0f;
        }
    }
}

/* round-to-nearest-even, then what cvtps2dq (NaN/overflow -> INT_MIN), the
 * saturating packs to int8 and the clamp to -127 make of it.  -128 never
 * appears: the kernels negate activation bytes (sign trick) and -(-128)
 * does not fit. */
static int8_t q8_of(float v) {
    const float r = nearbyintf(v);
    if (!(r >= -2147483648.0f && r < 2147483648.0f)) return -127;
    if (r > 127.0f) return 127;
    if (r < -127.0f) return -127;
    return (int8_t)r;
}

/* The block's scalars from amax: *id the multiplier, *d the stored scale,
 * *dq (blocks of 32) the unrounded scale s is made with. */
static void scales_of(int act, float amax, float *id, float *d, float *dq) {
    if (!(amax >= REALM_Q8_TINY)) {
        *id = *d = *dq = 0.0f;
        return;
    }
    *id = 127.0f / amax;
    if (act == REALM_ACT_Q8) {
        *dq = amax / 127.0f;
        *d = realm_half_to_f32(realm_f32_to_half(*dq));
    } else {
        *dq = 0.0f;
        *d = 1.0f / *id;
    }
}

static void q8_row_ref(int act, const float *x, int64_t n_in, row_out r) {
    const int k = act == REALM_ACT_Q8 ? 32 : QK_K;
    for (int64_t b = 0; b < n_in / k; b++, x += k) {
        float amax = 0.0f;
        for (int j = 0; j < k; j++) {
            const float a = fabsf(x[j]);
            amax = a > amax ? a : amax; /* a NaN never wins */
        }
        float id, d, dq;
        scales_of(act, amax, &id, &d, &dq);
        int8_t *q = r.qs + b * k;
        for (int j = 0; j < k; j++) q[j] = q8_of(x[j] * id);
        r.d[realm_act_slot(r.tg, b)] = d;
        if (act == REALM_ACT_Q8) {
            int32_t sum = 0;
            for (int j = 0; j < k; j++) sum += q[j];
            r.s[realm_act_slot(r.tg, b)] = realm_half_to_f32(realm_f32_to_half(dq * (float)sum));
        } else {
            for (int g = 0; g < k / 16; g++) {
                int sum = 0;
                for (int j = 0; j < 16; j++) sum += q[16 * g + j];
                r.bsums[b * (k / 16) + g] = (int16_t)sum;
            }
        }
        for (int l = 0; l < k / 4; l++) r.o[b * (k / 4) + l] = -128 * (q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]);
    }
}

void realm_q8_rows_ref(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
        q8_row_ref(act, x + t * n_in, n_in, row_at(act, buf, n_tok, n_in, t));
        zero_missing(act, buf, n_tok, n_in, t);
    }
}

/* F16 / BF16 activations: each value rounded as llama.cpp's from_float for the
 * weight's vec_dot_type does (ggml_cpu_fp32_to_fp16: vcvtps2ph, nearest even;
 * ggml_cpu_fp32_to_bf16: ggml_compute_fp32_to_bf16). */
void realm_round_rows_ref(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1) {
    if (act == REALM_ACT_F16) {
        for (int64_t i = t0 * n_in; i < t1 * n_in; i++) ((float *)buf)[i] = realm_half_to_f32(realm_f32_to_half(x[i]));
        return;
    }
    uint8_t *tiny = (uint8_t *)buf + realm_act_layout_of(act, n_tok, n_in).tiny;
    for (int64_t t = t0; t < t1; t++) {
        uint16_t *h = (uint16_t *)buf + t * n_in;
        unsigned small = 0;
        for (int64_t i = 0; i < n_in; i++) {
            h[i] = realm_f32_to_bf16(x[t * n_in + i]);
            small |= (uint16_t)((h[i] & 0x7fffu) - 1u) < 0x267fu; /* 0 < |h| < 2^-50 */
        }
        tiny[t] = (uint8_t)small;
    }
}

#if defined(__x86_64__) || defined(_M_X64)
#include "avx2_util.h"

/* max(|v|, m) lane-wise; a NaN in v leaves m (maxps returns its second operand). */
AVX2 static inline __m256 absmax(__m256 v, __m256 m) {
    return _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), m);
}

/* 32 values * id -> 32 int8 in order (round-to-nearest-even, clamped to +-127). */
AVX2 static inline __m256i q8_32(const float *x, __m256 id) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i b = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i c = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i e = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    /* packs work per 128-bit lane; the permute puts the 8 groups of 4 back in order */
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, e));
    const __m256i v = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    return _mm256_max_epi8(v, _mm256_set1_epi8(-127));
}

AVX2 static inline float hmax(__m256 m) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 int32 sums of 4 adjacent int8 values, in order. */
AVX2 static inline __m256i sums4_i8(__m256i q) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
}

AVX2 static inline int32_t hsum_i32(__m256i w) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

AVX2 static void q8_row_avx2(int act, const float *x, int64_t n_in, row_out r) {
    const int k = act == REALM_ACT_Q8 ? 32 : QK_K;
    for (int64_t b = 0; b < n_in / k; b++, x += k) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < k; j += 8) m = absmax(_mm256_loadu_ps(x + j), m);
        float id, d, dq;
        scales_of(act, hmax(m), &id, &d, &dq);
        r.d[realm_act_slot(r.tg, b)] = d;
        int8_t *q = r.qs + b * k;
        for (int j = 0; j < k; j += 32) {
            const __m256i v = q8_32(x + j, _mm256_set1_ps(id));
            _mm256_storeu_si256((__m256i *)(q + j), v);
            const __m256i w = sums4_i8(v);
            _mm256_storeu_si256((__m256i *)(r.o + b * (k / 4) + j / 4), _mm256_mullo_epi32(w, _mm256_set1_epi32(-128)));
            if (act == REALM_ACT_Q8) {
                r.s[realm_act_slot(r.tg, b)] = _cvtsh_ss(_cvtss_sh(dq * (float)hsum_i32(w), 0));
            } else {
                /* two sums of 16: add the sums of 4 within each half */
                __m256i h = _mm256_hadd_epi32(w, w);
                h = _mm256_hadd_epi32(h, h);
                r.bsums[b * (k / 16) + j / 16] = (int16_t)_mm256_extract_epi32(h, 0);
                r.bsums[b * (k / 16) + j / 16 + 1] = (int16_t)_mm256_extract_epi32(h, 4);
            }
        }
    }
}

void realm_q8_rows_avx2(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
        q8_row_avx2(act, x + t * n_in, n_in, row_at(act, buf, n_tok, n_in, t));
        zero_missing(act, buf, n_tok, n_in, t);
    }
}

/* F16 through F16C (the scalar conversions are its twins); BF16's integer
 * rounding is the scalar one. */
AVX2 static void f16_round_avx2(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++) y[i] = realm_half_to_f32(realm_f32_to_half(x[i]));
}

void realm_round_rows_avx2(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1) {
    if (act == REALM_ACT_F16) f16_round_avx2(x + t0 * n_in, (float *)buf + t0 * n_in, (t1 - t0) * n_in);
    else realm_round_rows_ref(act, x, n_tok, n_in, buf, t0, t1);
}

#else

void realm_round_rows_avx2(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1) {
    realm_round_rows_ref(act, x, n_tok, n_in, buf, t0, t1);
}

void realm_q8_rows_avx2(int act, const float *x, int64_t n_tok, int64_t n_in, void *buf, int64_t t0, int64_t t1) {
    realm_q8_rows_ref(act, x, n_tok, n_in, buf, t0, t1);
}

#endif
