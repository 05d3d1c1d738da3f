/* AVX2 versions of the exp-based element-wise ops, GELU, f16 conversion and
 * attention.  Each performs the scalar reference's float steps (ops.c, ops.h)
 * lane by lane, fused multiply-adds where it has fmaf, so the results equal
 * the scalar ones bit for bit. */
#include "ops.h"

#if defined(__x86_64__) || defined(_M_X64)

#include "avx2_util.h"
#include "fp16.h"
#include <math.h>

/* realm_expf, 8 lanes. */
AVX2 INLINE __m256 exp8(__m256 x) {
    const __m256 shift = _mm256_set1_ps(REALM_EXP_SHIFT);
    const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(REALM_EXP_LOG2E), shift), shift);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(REALM_EXP_LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(REALM_EXP_LN2_HI), x));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(REALM_EXP_C5), b, _mm256_set1_ps(REALM_EXP_C4)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(REALM_EXP_C3), b, _mm256_set1_ps(REALM_EXP_C2))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(REALM_EXP_C1), b, _mm256_set1_ps(1.0f)));
    /* j * 2^a * 2^(n - a), a = floor(n / 2); lanes with |n| > 192 are replaced below */
    const __m256 a = _mm256_floor_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)));
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256i ea = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(a), bias), 23);
    const __m256i eb = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_sub_ps(n, a)), bias), 23);
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(j, _mm256_castsi256_ps(ea)), _mm256_castsi256_ps(eb));
    const __m256 big = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), n), _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 alt = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), _mm256_setzero_ps(), _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ));
    return _mm256_blendv_ps(y, alt, big);
}

AVX2 INLINE __m256 silu8(__m256 x) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* The table's value at f16(g) times u; g <= -10 gives 0, g >= 10 gives g * u. */
AVX2 INLINE __m256 gelu8(__m256 g, __m256 u, const float *table) {
    const __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(g, _MM_FROUND_TO_NEAREST_INT));
    __m256 y = _mm256_mul_ps(_mm256_i32gather_ps(table, idx, 4), u);
    y = _mm256_blendv_ps(y, _mm256_mul_ps(g, u), _mm256_cmp_ps(g, _mm256_set1_ps(10.0f), _CMP_GE_OQ));
    return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(g, _mm256_set1_ps(-10.0f), _CMP_LE_OQ));
}

/* Runs op8 over whole vectors and finishes the tail through a padded vector,
 * so every element takes the same (vector) steps. */
#define ELEMENTWISE(NAME, SETUP, EXPR)                                                       \
    AVX2 void NAME(const float *gate, const float *up, float *out, int64_t n) {               \
        SETUP;                                                                                \
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

ELEMENTWISE(realm_swiglu_avx2, (void)0, _mm256_mul_ps(silu8(g), u))
ELEMENTWISE(realm_geglu_avx2, const float *table = realm_gelu_table(), gelu8(g, u, table))

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

AVX2 void realm_rope_apply_avx2(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs, int neox) {
    realm_rope_rows(x, n_tok, n_head, head_dim, n_rot, cs, neox);
}

/* ---- attention ---- */

AVX2 INLINE __m256 kv8(const void *base, int kv_type, int64_t idx) {
    if (kv_type == REALM_TYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + idx)));
    return _mm256_loadu_ps((const float *)base + idx);
}

AVX2 INLINE float kv1(const void *base, int kv_type, int64_t idx) {
    return kv_type == REALM_TYPE_F16 ? _cvtsh_ss(((const uint16_t *)base)[idx]) : ((const float *)base)[idx];
}

/* realm_reduce16 of lanes lo (0..7) and hi (8..15). */
AVX2 INLINE float reduce16(__m256 lo, __m256 hi) {
    const __m256 t8 = _mm256_add_ps(hi, lo);
    const __m128 t4 = _mm_add_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
    const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

/* o[0 .. 8 NC) = for each value d0 + i, the dot over keys lo..hi of the
 * weights w[j] and V's column: key j into lane j % 16 of accumulator
 * (j / 16) % 4, x_l = (a0 + a2) + (a1 + a3), then the 16 lanes pairwise. */
AVX2 INLINE void v_dot_keys(const char *vb, int kv_type, int64_t vrow, const float *w, int64_t lo, int64_t hi, int d0,
                            float *o, const int NC) {
    __m256 x[16][4];
    for (int l = 0; l < 16; l++) {
        __m256 a[4][4];
        for (int c = 0; c < 4; c++)
            for (int k = 0; k < NC; k++) a[c][k] = _mm256_setzero_ps();
        for (int64_t m = lo >> 6; m <= hi >> 6; m++) /* 64 keys: accumulator c takes key 64m + 16c + l */
            for (int c = 0; c < 4; c++) {
                const int64_t j = 64 * m + 16 * c + l;
                if (j < lo || j > hi) continue;
                const __m256 wj = _mm256_broadcast_ss(w + j);
                for (int k = 0; k < NC; k++) a[c][k] = _mm256_fmadd_ps(kv8(vb, kv_type, j * vrow + d0 + 8 * k), wj, a[c][k]);
            }
        for (int k = 0; k < NC; k++) x[l][k] = _mm256_add_ps(_mm256_add_ps(a[0][k], a[2][k]), _mm256_add_ps(a[1][k], a[3][k]));
    }
    for (int k = 0; k < NC; k++) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) r[i] = _mm256_add_ps(x[8 + i][k], x[i][k]);
        for (int i = 0; i < 4; i++) r[i] = _mm256_add_ps(r[4 + i], r[i]);
        _mm256_storeu_ps(o + 8 * k, _mm256_add_ps(_mm256_add_ps(r[0], r[2]), _mm256_add_ps(r[1], r[3])));
    }
}

/* The same steps as realm_attn_heads_ref, 8 lanes at a time. */
AVX2 static void heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                            int64_t hi, int h0, int h1, float *out, float *scratch, const int kv_type) {
    const int D = p->head_dim, f16 = kv_type == REALM_TYPE_F16, np = D & ~63, D8 = D & ~7;
    const int64_t head_off = (int64_t)(h0 / (p->n_head / p->n_kv_head)) * p->kv_head_stride;
    const int64_t b0 = lo & ~(int64_t)15, end = (hi + 16) & ~(int64_t)15;
    float *qh = scratch, *e = qh + D;
    for (int h = h0; h < h1; h++) {
        const float *qs = q + (int64_t)h * D;
        int d = 0;
        if (f16)
            for (; d < D8; d += 8)
                _mm256_storeu_ps(qh + d, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(qs + d), _MM_FROUND_TO_NEAREST_INT)));
        for (; d < D; d++) qh[d] = f16 ? _cvtsh_ss(_cvtss_sh(qs[d], 0)) : qs[d];
        float mx = -INFINITY;
        for (int64_t j = lo; j <= hi; j++) {
            const int64_t row = j * p->kv_pos_stride + head_off;
            __m256 a[8];
            for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
            for (int d0 = 0; d0 < np; d0 += 64)
                for (int i = 0; i < 8; i++)
                    a[i] = _mm256_fmadd_ps(kv8(k, kv_type, row + d0 + 8 * i), _mm256_loadu_ps(qh + d0 + 8 * i), a[i]);
            /* accumulator c holds lanes 0..7 in a[2c], 8..15 in a[2c + 1] */
            const __m256 xlo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
            const __m256 xhi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
            float s;
            if (f16) {
                double sd = reduce16(xlo, xhi);
                for (int d = np; d < D; d++) sd += (double)(kv1(k, kv_type, row + d) * qh[d]);
                s = (float)sd;
            } else {
                s = reduce16(xlo, xhi);
                for (int d = np; d < D; d++) s = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(kv1(k, kv_type, row + d)), _mm_set_ss(qh[d]), _mm_set_ss(s)));
            }
            e[j - b0] = s * p->scale;
            mx = e[j - b0] > mx ? e[j - b0] : mx;
        }
        for (int64_t j = b0; j < lo; j++) e[j - b0] = -INFINITY;
        for (int64_t j = hi + 1; j < end; j++) e[j - b0] = -INFINITY;
        double sum = 0.0;
        const __m256 vmx = _mm256_set1_ps(mx);
        for (int64_t j0 = 0; j0 < end - b0; j0 += 16) {
            const __m256 lo8 = exp8(_mm256_sub_ps(_mm256_loadu_ps(e + j0), vmx));
            const __m256 hi8 = exp8(_mm256_sub_ps(_mm256_loadu_ps(e + j0 + 8), vmx));
            _mm256_storeu_ps(e + j0, lo8);
            _mm256_storeu_ps(e + j0 + 8, hi8);
            sum += (double)reduce16(lo8, hi8);
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = lo; j <= hi; j++) {
            e[j - b0] = e[j - b0] * inv;
            if (f16) e[j - b0] = _cvtsh_ss(_cvtss_sh(e[j - b0], 0));
        }
        /* out: 8 values d at a time, each the dot over keys of p and V's column d;
         * 4 x 8 values per walk over a lane's keys when there are as many */
        float *o = out + (int64_t)h * D;
        const int64_t vrow = p->kv_pos_stride;
        const char *vb = (const char *)v + (head_off * (f16 ? 2 : 4));
        for (d = 0; d + 32 <= D8; d += 32) v_dot_keys(vb, kv_type, vrow, e - b0, lo, hi, d, o + d, 4);
        for (; d < D8; d += 8) v_dot_keys(vb, kv_type, vrow, e - b0, lo, hi, d, o + d, 1);
        for (; d < D; d++) {
            float x[16];
            for (int l = 0; l < 16; l++) {
                float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int64_t j = realm_first_key(lo, l); j <= hi; j += 16)
                    a[(j >> 4) & 3] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(kv1(vb, kv_type, j * vrow + d)), _mm_set_ss(e[j - b0]), _mm_set_ss(a[(j >> 4) & 3])));
                x[l] = (a[0] + a[2]) + (a[1] + a[3]);
            }
            o[d] = realm_reduce16(x);
        }
    }
}

AVX2 void realm_attn_heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                                int64_t hi, int h0, int h1, float *out, float *scratch) {
    if (p->kv_type == REALM_TYPE_F16) heads_avx2(p, q, k, v, lo, hi, h0, h1, out, scratch, REALM_TYPE_F16);
    else heads_avx2(p, q, k, v, lo, hi, h0, h1, out, scratch, REALM_TYPE_F32);
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
void realm_rope_apply_avx2(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs, int neox) {
    realm_rope_apply(x, n_tok, n_head, head_dim, n_rot, cs, neox, REALM_ISA_SCALAR);
}
void realm_attn_heads_avx2(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                           int64_t hi, int h0, int h1, float *out, float *scratch) {
    realm_attn_heads_ref(p, q, k, v, lo, hi, h0, h1, out, scratch);
}

#endif
