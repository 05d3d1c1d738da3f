/* Scalar reference ops, the path choice, and the OpenMP split of attention. */
#include "ops.h"
#include "fp16.h"

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int resolve_isa(int isa) {
    const int best = realm_best_isa();
    if (isa == REALM_ISA_AUTO) return best;
    if (isa == REALM_ISA_SCALAR || isa == best) return isa;
    return REALM_ENOISA;
}

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

int realm_rope_table(const int32_t *pos, int64_t n_tok, int n_rot, float base, float freq_scale, float *cs) {
    if (n_tok < 0 || n_rot <= 0 || n_rot % 2 || n_rot > REALM_MAX_ROT || !(base > 0.0f) || !isfinite(freq_scale))
        return REALM_EINVAL;
    double inv_freq[REALM_MAX_ROT / 2];
    for (int i = 0; i < n_rot / 2; i++) inv_freq[i] = pow((double)base, -2.0 * i / n_rot);
    for (int64_t t = 0; t < n_tok; t++) {
        const double p = (double)pos[t] * (double)freq_scale;
        float *c = cs + t * n_rot;
        for (int i = 0; i < n_rot / 2; i++) {
            const double theta = p * inv_freq[i];
            c[2 * i] = (float)cos(theta);
            c[2 * i + 1] = (float)sin(theta);
        }
    }
    return 0;
}

int realm_rope_apply(float *x, int64_t n_tok, int n_head, int head_dim, int n_rot, const float *cs, int neox) {
    if (n_tok < 0 || n_head <= 0 || head_dim <= 0 || n_rot <= 0 || n_rot % 2 || n_rot > head_dim) return REALM_EINVAL;
    const int half = n_rot / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        const float *c = cs + t * n_rot;
        for (int h = 0; h < n_head; h++) {
            float *v = x + (t * n_head + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float *pa = neox ? v + i : v + 2 * i;
                float *pb = neox ? v + i + half : v + 2 * i + 1;
                const float a = *pa, b = *pb;
                *pa = a * c[2 * i] - b * c[2 * i + 1];
                *pb = a * c[2 * i + 1] + b * c[2 * i];
            }
        }
    }
    return 0;
}

/* ---- attention ---- */

static inline float kv_at(const void *base, int kv_type, int64_t idx) {
    return kv_type == REALM_TYPE_F16 ? realm_half_to_f32(((const uint16_t *)base)[idx]) : ((const float *)base)[idx];
}

void realm_attn_heads_ref(const realm_attn_params *p, const float *q, const void *k, const void *v, int64_t lo,
                          int64_t hi, int h0, int h1, float *out) {
    const int D = p->head_dim, g = h0 / (p->n_head / p->n_kv_head), nh = h1 - h0;
    const int64_t head_off = g * p->kv_head_stride;
    float s[REALM_ATTN_HEADS][REALM_ATTN_CHUNK], m[REALM_ATTN_HEADS], l[REALM_ATTN_HEADS];
    for (int h = 0; h < nh; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
        memset(out + (int64_t)(h0 + h) * D, 0, (size_t)D * sizeof(float));
    }
    for (int64_t c = lo; c <= hi; c += REALM_ATTN_CHUNK) {
        const int n = hi + 1 - c < REALM_ATTN_CHUNK ? (int)(hi + 1 - c) : REALM_ATTN_CHUNK;
        for (int j = 0; j < n; j++) {
            const int64_t row = (c + j) * p->kv_pos_stride + head_off;
            for (int h = 0; h < nh; h++) {
                const float *qh = q + (int64_t)(h0 + h) * D;
                float dot = 0.0f;
                for (int d = 0; d < D; d++) dot += qh[d] * kv_at(k, p->kv_type, row + d);
                s[h][j] = dot * p->scale;
            }
        }
        for (int h = 0; h < nh; h++) { /* online softmax: rescale what came before */
            float mx = m[h];
            for (int j = 0; j < n; j++) mx = s[h][j] > mx ? s[h][j] : mx;
            const float alpha = realm_expf(m[h] - mx);
            m[h] = mx;
            if (alpha != 1.0f) {
                l[h] = l[h] * alpha;
                float *o = out + (int64_t)(h0 + h) * D;
                for (int d = 0; d < D; d++) o[d] = o[d] * alpha;
            }
            for (int j = 0; j < n; j++) {
                s[h][j] = realm_expf(s[h][j] - mx);
                l[h] = l[h] + s[h][j];
            }
        }
        for (int j = 0; j < n; j++) {
            const int64_t row = (c + j) * p->kv_pos_stride + head_off;
            for (int h = 0; h < nh; h++) {
                float *o = out + (int64_t)(h0 + h) * D;
                for (int d = 0; d < D; d++) o[d] = o[d] + s[h][j] * kv_at(v, p->kv_type, row + d);
            }
        }
    }
    for (int h = 0; h < nh; h++) {
        const float inv = 1.0f / l[h];
        float *o = out + (int64_t)(h0 + h) * D;
        for (int d = 0; d < D; d++) o[d] = o[d] * inv;
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

/* Work items: (token, kv head, slice of that kv head's query heads).  Heads
 * sharing a kv head are scored together so each key is read once per slice;
 * slices are made smaller when there are too few items for the threads.
 * Every head's arithmetic is the same whatever slice it is in. */
static int heads_per_item(const realm_attn_params *p, int64_t n_tok, int nt) {
    const int group = p->n_head / p->n_kv_head;
    int slices = (group + REALM_ATTN_HEADS - 1) / REALM_ATTN_HEADS;
    while (slices < group && n_tok * p->n_kv_head * slices < 2 * nt) slices++;
    return (group + slices - 1) / slices;
}

int realm_attention_ws(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                       const void *v, int64_t n_kv, float *out, int isa) {
    int rc = check_attn(p, n_tok, pos, n_kv);
    if (rc) return rc;
    if ((isa = resolve_isa(isa)) < 0) return isa;
    const realm_attn_fn fn = isa == REALM_ISA_AVX2 ? realm_attn_heads_avx2 : realm_attn_heads_ref;
#ifdef _OPENMP
    const int nt = omp_get_num_threads();
#else
    const int nt = 1;
#endif
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
        fn(p, q + t * row, k, v, lo, hi, h0, h1, out + t * row);
    }
    return 0;
}

int realm_attention(const realm_attn_params *p, const float *q, int64_t n_tok, const int32_t *pos, const void *k,
                    const void *v, int64_t n_kv, float *out, int nthreads, int isa) {
    int rc = check_attn(p, n_tok, pos, n_kv);
    if (rc) return rc;
    if ((rc = resolve_isa(isa)) < 0) return rc;
#ifdef _OPENMP
    const int nt = nthreads > 0 ? nthreads : omp_get_num_procs();
#else
    const int nt = 1;
    (void)nthreads;
#endif
#pragma omp parallel num_threads(nt) if (nt > 1)
    realm_attention_ws(p, q, n_tok, pos, k, v, n_kv, out, isa);
    return 0;
}

/* ---- element-wise ---- */

static inline float silu(float x) { return x / (1.0f + realm_expf(-x)); }

/* The steps of ggml's tanh-form GELU argument, then x * sigmoid(2u). */
static inline float gelu(float x) {
    if (x >= 10.0f) return x;
    if (x <= -10.0f) return 0.0f;
    const float u = (0.797884560802865355f * x) * (1.0f + (0.044715f * x) * x);
    return x / (1.0f + realm_expf(-2.0f * u));
}

int realm_swiglu(const float *gate, const float *up, float *out, int64_t n, int isa) {
    if (n < 0) return REALM_EINVAL;
    if ((isa = resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) realm_swiglu_avx2(gate, up, out, n);
    else
        for (int64_t i = 0; i < n; i++) out[i] = silu(gate[i]) * up[i];
    return 0;
}

int realm_geglu(const float *gate, const float *up, float *out, int64_t n, int isa) {
    if (n < 0) return REALM_EINVAL;
    if ((isa = resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) realm_geglu_avx2(gate, up, out, n);
    else
        for (int64_t i = 0; i < n; i++) out[i] = gelu(gate[i]) * up[i];
    return 0;
}

int realm_exp(const float *x, float *y, int64_t n, int isa) {
    if (n < 0) return REALM_EINVAL;
    if ((isa = resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) realm_exp_avx2(x, y, n);
    else
        for (int64_t i = 0; i < n; i++) y[i] = realm_expf(x[i]);
    return 0;
}

int realm_softmax(float *x, int64_t rows, int64_t n, int isa) {
    if (rows < 0 || n <= 0) return REALM_EINVAL;
    if ((isa = resolve_isa(isa)) < 0) return isa;
    for (int64_t r = 0; r < rows; r++, x += n) {
        float mx = -INFINITY;
        for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        for (int64_t i = 0; i < n; i++) x[i] = x[i] - mx;
        if (isa == REALM_ISA_AVX2) realm_exp_avx2(x, x, n);
        else
            for (int64_t i = 0; i < n; i++) x[i] = realm_expf(x[i]);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += x[i];
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
    if ((isa = resolve_isa(isa)) < 0) return isa;
    if (isa == REALM_ISA_AVX2) realm_f32_to_f16_avx2(x, y, n);
    else
        for (int64_t i = 0; i < n; i++) y[i] = realm_f32_to_half(x[i]);
    return 0;
}
