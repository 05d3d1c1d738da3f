/* Scalar reference ops, the path choice, and the OpenMP split of attention. */
#include "ops.h"
#include "fp16.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

int realm_rmsnorm(const float *x, const float *w, int64_t rows, int64_t n, float eps, float *y) {
    if (rows < 0 || n <= 0) return REALM_EINVAL;
    for (int64_t r = 0; r < rows; r++, x += n, y += n) {
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
        const float mean = (float)(sum / (double)n);
        const float scale = 1.0f / sqrtf(mean + eps);
        if (w) {
            for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
        } else {
            for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale;
        }
    }
    return 0;
}

int realm_rope_table(const int32_t *pos, int64_t n_tok, int n_rot, float base, float freq_scale,
                     const float *freq_factors, float *cs) {
    if (n_tok < 0 || n_rot <= 0 || n_rot % 2 || n_rot > REALM_MAX_ROT || !(base > 0.0f) || !isfinite(freq_scale))
        return REALM_EINVAL;
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    for (int64_t t = 0; t < n_tok; t++) {
        float theta = (float)pos[t], *c = cs + t * n_rot;
        for (int i = 0; i < n_rot / 2; i++) {
            const float th = freq_scale * (freq_factors ? theta / freq_factors[i] : theta);
            c[2 * i] = cosf(th);
            c[2 * i + 1] = sinf(th);
            theta = theta * theta_scale;
        }
    }
    return 0;
}

int realm_rope_apply(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs, int neox, int isa) {
    if (n_tok < 0 || n_head <= 0 || head_dim <= 0 || n_rot <= 0 || n_rot % 2 || n_rot > head_dim) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) {
        realm_rope_apply_avx2(x, n_tok, n_head, head_dim, n_rot, cs, neox);
        return 0;
    }
    realm_rope_rows(x, n_tok, n_head, head_dim, n_rot, cs, neox);
    return 0;
}

/* ---- attention ---- */

int64_t realm_attn_scratch(const realm_attn_params *p, int64_t n_kv) {
    /* the head's query, and the scores of every key (from the 16-key block
     * holding the first one to the end of the last one's) */
    return p->head_dim + n_kv + 32;
}

static inline float kv_at(const void *base, int kv_type, int64_t idx) {
    return kv_type == REALM_TYPE_F16 ? realm_half_to_f32(((const uint16_t *)base)[idx]) : ((const float *)base)[idx];
}

/* The 4 x 16 lane accumulators a[64] of a dot product, reduced as ggml. */
static inline float reduce64(const float *a) {
    float x[16];
    for (int l = 0; l < 16; l++) x[l] = (a[l] + a[32 + l]) + (a[16 + l] + a[48 + l]);
    return realm_reduce16(x);
}

void realm_attn_heads_ref(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                          int64_t hi, int h0, int h1, float *out, float *scratch) {
    const int D = p->head_dim, f16 = p->kv_type == REALM_TYPE_F16, np = D & ~63;
    const int64_t head_off = (int64_t)(h0 / (p->n_head / p->n_kv_head)) * p->kv_head_stride;
    const int64_t b0 = lo & ~(int64_t)15, end = (hi + 16) & ~(int64_t)15; /* whole blocks of 16 keys */
    float *qh = scratch, *e = qh + D; /* key j's score, then weight, at e[j - b0] */
    for (int h = h0; h < h1; h++) {
        const float *qs = q + (int64_t)h * D;
        for (int d = 0; d < D; d++) qh[d] = f16 ? realm_half_to_f32(realm_f32_to_half(qs[d])) : qs[d];
        /* scores */
        float mx = -INFINITY;
        for (int64_t j = lo; j <= hi; j++) {
            const int64_t row = j * p->kv_pos_stride + head_off;
            float a[64] = {0};
            for (int d0 = 0; d0 < np; d0 += 64)
                for (int i = 0; i < 64; i++) a[i] = fmaf(kv_at(k, p->kv_type, row + d0 + i), qh[d0 + i], a[i]);
            float s;
            if (f16) {
                double sd = reduce64(a);
                for (int d = np; d < D; d++) sd += (double)(kv_at(k, p->kv_type, row + d) * qh[d]);
                s = (float)sd;
            } else {
                s = reduce64(a);
                for (int d = np; d < D; d++) s = fmaf(kv_at(k, p->kv_type, row + d), qh[d], s);
            }
            e[j - b0] = s * p->scale;
            mx = e[j - b0] > mx ? e[j - b0] : mx;
        }
        /* exp and their sum, 16 keys at a time (keys outside [lo, hi] masked: 0) */
        for (int64_t j = b0; j < lo; j++) e[j - b0] = -INFINITY;
        for (int64_t j = hi + 1; j < end; j++) e[j - b0] = -INFINITY;
        double sum = 0.0;
        for (int64_t j0 = 0; j0 < end - b0; j0 += 16) {
            for (int64_t j = j0; j < j0 + 16; j++) e[j] = realm_expf(e[j] - mx);
            sum += (double)realm_reduce16(e + j0);
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t j = lo; j <= hi; j++) {
            e[j - b0] = e[j - b0] * inv;
            if (f16) e[j - b0] = realm_half_to_f32(realm_f32_to_half(e[j - b0]));
        }
        /* out[d] = the dot over keys of p and V's column d: key j in lane j % 16
         * of accumulator (j / 16) % 4, whose lanes are then reduced */
        float *o = out + (int64_t)h * D;
        for (int d = 0; d < D; d++) {
            float x[16];
            for (int l = 0; l < 16; l++) {
                float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int64_t j = realm_first_key(lo, l); j <= hi; j += 16)
                    a[(j >> 4) & 3] = fmaf(kv_at(v, p->kv_type, j * p->kv_pos_stride + head_off + d), e[j - b0], a[(j >> 4) & 3]);
                x[l] = (a[0] + a[2]) + (a[1] + a[3]);
            }
            o[d] = realm_reduce16(x);
        }
    }
}

static int check_attn(const realm_attn_params *p, int64_t n_tok, const int32_t *pos, int64_t n_kv) {
    if (p->n_head <= 0 || p->n_kv_head <= 0 || p->n_head % p->n_kv_head || p->head_dim <= 0) return REALM_EINVAL;
    if (p->kv_type != REALM_TYPE_F32 && p->kv_type != REALM_TYPE_F16) return REALM_EUNSUPPORTED;
    if (p->kv_pos_stride < 0 || p->kv_head_stride < 0 || n_tok < 0 || n_kv < 0 || !isfinite(p->scale))
        return REALM_EINVAL;
    for (int64_t t = 0; t < n_tok; t++)
        if (pos[t] < 0 || pos[t] >= n_kv) return REALM_EINVAL;
    return 0;
}

/* Work items: (token, kv head, slice of that kv head's query heads), so the
 * threads have enough items even for one token.  Every head's arithmetic is
 * the same whatever slice it is in. */
static int heads_per_item(const realm_attn_params *p, int64_t n_tok, int nt) {
    const int group = p->n_head / p->n_kv_head;
    int slices = (group + REALM_ATTN_HEADS - 1) / REALM_ATTN_HEADS;
    while (slices < group && n_tok * p->n_kv_head * slices < 2 * nt) slices++;
    return (group + slices - 1) / slices;
}

/* The work-sharing loop of both forms: query row t reads the cache at k, v -- or, when kt is
 * not NULL, at kt[t], vt[t] (each row its own sequence's cache). */
static void attention_items(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos,
                            const void *k, const void *v, const void *const *kt, const void *const *vt, int64_t n_kv,
                            float *out, float *scratch, int isa) {
    const realm_attn_fn fn = isa == REALM_ISA_AVX2 ? realm_attn_heads_avx2 : realm_attn_heads_ref;
#ifdef _OPENMP
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int nt = 1, me = 0;
#endif
    float *mine = scratch + (int64_t)me * realm_attn_scratch(p, n_kv);
    const int group = p->n_head / p->n_kv_head, per = heads_per_item(p, n_tok, nt);
    const int slices = (group + per - 1) / per;
    const int64_t row = (int64_t)p->n_head * p->head_dim;
    const int64_t items = n_tok * p->n_kv_head * slices;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
        const int64_t t = it / ((int64_t)p->n_kv_head * slices);
        const int g = (int)(it / slices % p->n_kv_head), sl = (int)(it % slices);
        const int h0 = g * group + sl * per, h1 = h0 + per < (g + 1) * group ? h0 + per : (g + 1) * group;
        const int64_t hi = pos[t], lo = p->window > 0 && hi - p->window + 1 > 0 ? hi - p->window + 1 : 0;
        fn(p, q + t * row, kt ? kt[t] : k, vt ? vt[t] : v, lo, hi, h0, h1, out + t * row, mine);
    }
}

int realm_attention_ws(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                       const void *v, int64_t n_kv, float *out, float *scratch, int isa) {
    int rc = check_attn(p, n_tok, pos, n_kv);
    if (rc) return rc;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    attention_items(p, q, n_tok, pos, k, v, NULL, NULL, n_kv, out, scratch, isa);
    return 0;
}

int realm_attention_rows_ws(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos,
                            const void *const *k, const void *const *v, const int64_t *n_kv, int64_t n_kv_max,
                            float *out, float *scratch, int isa) {
    int rc = check_attn(p, 0, pos, n_kv_max);
    if (rc) return rc;
    for (int64_t t = 0; t < n_tok; t++)
        if (pos[t] < 0 || pos[t] >= n_kv[t] || n_kv[t] > n_kv_max || !k[t] || !v[t]) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    attention_items(p, q, n_tok, pos, NULL, NULL, k, v, n_kv_max, out, scratch, isa);
    return 0;
}

int realm_attention(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                    const void *v, int64_t n_kv, float *out, int nthreads, int isa) {
    int rc = check_attn(p, n_tok, pos, n_kv);
    if (rc) return rc;
    if ((rc = realm_resolve_isa(isa)) < 0) return rc;
    const int nt = realm_resolve_threads(nthreads);
    float *scratch = malloc((size_t)(nt * realm_attn_scratch(p, n_kv)) * sizeof(float));
    if (!scratch) return REALM_ENOMEM;
#pragma omp parallel num_threads(nt) if (nt > 1)
    realm_attention_ws(p, q, n_tok, pos, k, v, n_kv, out, scratch, isa);
    free(scratch);
    return 0;
}

/* ---- element-wise ---- */

static inline float silu(float x) { return x / (1.0f + realm_expf(0.0f - x)); }

static float gelu_table[1 << 16];
static pthread_once_t gelu_once = PTHREAD_ONCE_INIT;

/* ggml_gelu_f32 as llama.cpp's build computes it (its 1 + c x x fused). */
static void gelu_init(void) {
    for (int i = 0; i < (1 << 16); i++) {
        const float x = realm_half_to_f32((uint16_t)i);
        const float u = 0.79788456080286535587989211986876f * x * fmaf(0.044715f * x, x, 1.0f);
        gelu_table[i] = realm_half_to_f32(realm_f32_to_half(0.5f * x * (1.0f + tanhf(u))));
    }
}

const float *realm_gelu_table(void) {
    pthread_once(&gelu_once, gelu_init);
    return gelu_table;
}

static inline float gelu_mul(const float *table, float x, float up) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x * up;
    return table[realm_f32_to_half(x)] * up;
}

int realm_swiglu(const float *gate, const float *up, float *out, int64_t n, int isa) {
    if (n < 0) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) realm_swiglu_avx2(gate, up, out, n);
    else
        for (int64_t i = 0; i < n; i++) out[i] = silu(gate[i]) * up[i];
    return 0;
}

int realm_geglu(const float *gate, const float *up, float *out, int64_t n, int isa) {
    if (n < 0) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) {
        realm_geglu_avx2(gate, up, out, n);
    } else {
        const float *table = realm_gelu_table();
        for (int64_t i = 0; i < n; i++) out[i] = gelu_mul(table, gate[i], up[i]);
    }
    return 0;
}

int realm_exp(const float *x, float *y, int64_t n, int isa) {
    if (n < 0) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) realm_exp_avx2(x, y, n);
    else
        for (int64_t i = 0; i < n; i++) y[i] = realm_expf(x[i]);
    return 0;
}

int realm_softmax(float *x, int64_t rows, int64_t n, int isa) {
    if (rows < 0 || n <= 0) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    for (int64_t r = 0; r < rows; r++, x += n) {
        float mx = -INFINITY;
        for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        const int64_t n16 = n & ~(int64_t)15;
        for (int64_t i = 0; i < n16; i++) x[i] = x[i] - mx;
        realm_exp(x, x, n16, isa);
        double sum = 0.0;
        for (int64_t i = 0; i < n16; i += 16) sum += (double)realm_reduce16(x + i);
        for (int64_t i = n16; i < n; i++) {
            x[i] = expf(x[i] - mx);
            sum += (double)x[i];
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < n; i++) x[i] = x[i] * inv;
    }
    return 0;
}

void realm_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = y[i] + x[i];
}

int realm_f32_to_f16(const float *x, uint16_t *y, int64_t n, int isa) {
    if (n < 0) return REALM_EINVAL;
    if ((isa = realm_resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) realm_f32_to_f16_avx2(x, y, n);
    else
        for (int64_t i = 0; i < n; i++) y[i] = realm_f32_to_half(x[i]);
    return 0;
}
