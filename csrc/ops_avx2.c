/* AVX2 versions of the exp-based element-wise ops, f16 conversion and the
 * attention inner loop.  exp8 performs realm_expf's float steps lane by lane,
 * so the element-wise results equal the scalar ones bit for bit. */
#include "ops.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "fp16.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

AVX2 INLINE __m256 exp8(__m256 x) {
    /* clamp keeping NaNs (max/min return their second operand on NaN) */
    const __m256 xc = _mm256_min_ps(_mm256_set1_ps(REALM_EXP_HI), _mm256_max_ps(_mm256_set1_ps(REALM_EXP_LO), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(REALM_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(REALM_LN2_HI)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(REALM_LN2_LO)));
    __m256 p = _mm256_set1_ps(REALM_EXP_P0);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(REALM_EXP_P1));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(REALM_EXP_P2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(REALM_EXP_P3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(REALM_EXP_P4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(REALM_EXP_P5));
    p = _mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    const __m256 a = _mm256_floor_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)));
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256i ea = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(a), bias), 23);
    const __m256i eb = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_sub_ps(n, a)), bias), 23);
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(ea)), _mm256_castsi256_ps(eb));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(REALM_EXP_LO), _CMP_LT_OQ));
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(REALM_EXP_HI), _CMP_GT_OQ));
}

AVX2 INLINE __m256 silu8(__m256 x) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

AVX2 INLINE __m256 gelu8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 t = _mm256_add_ps(one, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x), x));
    const __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.797884560802865355f), x), t);
    __m256 y = _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u))));
    y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, _mm256_set1_ps(10.0f), _CMP_GE_OQ));
    return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-10.0f), _CMP_LE_OQ));
}

/* Runs op8 over whole vectors and finishes the tail through a padded vector,
 * so every element takes the same (vector) steps. */
#define ELEMENTWISE(NAME, EXPR)                                                              \
    AVX2 void NAME(const float *gate, const float *up, float *out, int64_t n) {               \
        int64_t i = 0;                                                                        \
        for (; i + 8 <= n; i += 8) {                                                          \
            const __m256 g = _mm256_loadu_ps(gate + i), u = _mm256_loadu_ps(up + i);          \
            _mm256_storeu_ps(out + i, EXPR);                                                  \
        }                                                                                     \
        if (i < n) {                                                                          \
            float gb[8] = {0}, ub[8] = {0}, ob[8];                                            \
            memcpy(gb, gate + i, (size_t)(n - i) * sizeof(float));                            \
            memcpy(ub, up + i, (size_t)(n - i) * sizeof(float));                              \
            const __m256 g = _mm256_loadu_ps(gb), u = _mm256_loadu_ps(ub);                   \
            _mm256_storeu_ps(ob, EXPR);                                                       \
            memcpy(out + i, ob, (size_t)(n - i) * sizeof(float));                             \
        }                                                                                     \
    }

ELEMENTWISE(realm_swiglu_avx2, _mm256_mul_ps(silu8(g), u))
ELEMENTWISE(realm_geglu_avx2, _mm256_mul_ps(gelu8(g), u))

AVX2 void realm_exp_avx2(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float b[8] = {0};
        memcpy(b, x + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(b, exp8(_mm256_loadu_ps(b)));
        memcpy(y + i, b, (size_t)(n - i) * sizeof(float));
    }
}

AVX2 void realm_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = realm_f32_to_half(x[i]);
}

/* ---- attention ---- */

AVX2 INLINE __m256 kv8(const void *base, int kv_type, int64_t idx) {
    if (kv_type == REALM_TYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + idx)));
    return _mm256_loadu_ps((const float *)base + idx);
}

AVX2 INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The same online softmax as realm_attn_heads_ref; needs head_dim % 8 == 0
 * (the dispatcher sends other sizes to the reference). */
AVX2 static void heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                            int64_t hi, int h0, int h1, float *out, const int kv_type) {
    const int D = p->head_dim, g = h0 / (p->n_head / p->n_kv_head), nh = h1 - h0;
    const int64_t head_off = g * p->kv_head_stride;
    float s[REALM_ATTN_HEADS][REALM_ATTN_CHUNK], m[REALM_ATTN_HEADS], l[REALM_ATTN_HEADS];
    const float *qh[REALM_ATTN_HEADS];
    float *oh[REALM_ATTN_HEADS];
    for (int h = 0; h < nh; h++) {
        qh[h] = q + (int64_t)(h0 + h) * D;
        oh[h] = out + (int64_t)(h0 + h) * D;
        m[h] = -INFINITY;
        l[h] = 0.0f;
        memset(oh[h], 0, (size_t)D * sizeof(float));
    }
    for (int64_t c = lo; c <= hi; c += REALM_ATTN_CHUNK) {
        const int n = hi + 1 - c < REALM_ATTN_CHUNK ? (int)(hi + 1 - c) : REALM_ATTN_CHUNK;
        for (int j = 0; j < n; j++) {
            const int64_t row = (c + j) * p->kv_pos_stride + head_off;
            __m256 acc[REALM_ATTN_HEADS];
            for (int h = 0; h < nh; h++) acc[h] = _mm256_setzero_ps();
            for (int d = 0; d < D; d += 8) {
                const __m256 kk = kv8(k, kv_type, row + d);
                for (int h = 0; h < nh; h++) acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qh[h] + d), kk, acc[h]);
            }
            for (int h = 0; h < nh; h++) s[h][j] = hsum8(acc[h]) * p->scale;
        }
        for (int h = 0; h < nh; h++) {
            float mx = m[h];
            for (int j = 0; j < n; j++) mx = s[h][j] > mx ? s[h][j] : mx;
            const float alpha = realm_expf(m[h] - mx);
            m[h] = mx;
            if (alpha != 1.0f) {
                l[h] = l[h] * alpha;
                const __m256 va = _mm256_set1_ps(alpha);
                for (int d = 0; d < D; d += 8) _mm256_storeu_ps(oh[h] + d, _mm256_mul_ps(_mm256_loadu_ps(oh[h] + d), va));
            }
            const __m256 vmx = _mm256_set1_ps(mx);
            int j = 0;
            for (; j + 8 <= n; j += 8) _mm256_storeu_ps(s[h] + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(s[h] + j), vmx)));
            for (; j < n; j++) s[h][j] = realm_expf(s[h][j] - mx);
            for (j = 0; j < n; j++) l[h] = l[h] + s[h][j];
        }
        for (int j = 0; j < n; j++) {
            const int64_t row = (c + j) * p->kv_pos_stride + head_off;
            __m256 w[REALM_ATTN_HEADS];
            for (int h = 0; h < nh; h++) w[h] = _mm256_set1_ps(s[h][j]);
            for (int d = 0; d < D; d += 8) {
                const __m256 vv = kv8(v, kv_type, row + d);
                for (int h = 0; h < nh; h++)
                    _mm256_storeu_ps(oh[h] + d, _mm256_fmadd_ps(w[h], vv, _mm256_loadu_ps(oh[h] + d)));
            }
        }
    }
    for (int h = 0; h < nh; h++) {
        const __m256 inv = _mm256_set1_ps(1.0f / l[h]);
        for (int d = 0; d < D; d += 8) _mm256_storeu_ps(oh[h] + d, _mm256_mul_ps(_mm256_loadu_ps(oh[h] + d), inv));
    }
}

AVX2 void realm_attn_heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                                int64_t hi, int h0, int h1, float *out) {
    if (p->head_dim % 8) {
        realm_attn_heads_ref(p, q, k, v, lo, hi, h0, h1, out);
    } else if (p->kv_type == REALM_TYPE_F16) {
        heads_avx2(p, q, k, v, lo, hi, h0, h1, out, REALM_TYPE_F16);
    } else {
        heads_avx2(p, q, k, v, lo, hi, h0, h1, out, REALM_TYPE_F32);
    }
}

#else

void realm_swiglu_avx2(const float *gate, const float *up, float *out, int64_t n) {
    realm_swiglu(gate, up, out, n, REALM_ISA_SCALAR);
}
void realm_geglu_avx2(const float *gate, const float *up, float *out, int64_t n) {
    realm_geglu(gate, up, out, n, REALM_ISA_SCALAR);
}
void realm_exp_avx2(const float *x, float *y, int64_t n) { realm_exp(x, y, n, REALM_ISA_SCALAR); }
void realm_f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n) { realm_f32_to_f16(x, y, n, REALM_ISA_SCALAR); }
void realm_attn_heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                           int64_t hi, int h0, int h1, float *out) {
    realm_attn_heads_ref(p, q, k, v, lo, hi, h0, h1, out);
}

#endif
