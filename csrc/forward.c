/* The forward pass: model checks, the KV cache, the scratch, and the three
 * entry points (embedding, layer, LM head).  See forward.h for the math. */
#include "forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Dimensions above this are refused, so no size product below can overflow. */
#define MAX_DIM ((int64_t)1 << 24)

static int thread_num(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static double wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int realm_layer_is_local(const realm_config *c, int il) {
    if (c->sliding_window <= 0) return 0;
    return c->swa_pattern == 0 || il % c->swa_pattern < c->swa_pattern - 1;
}

/* ---- checks ---- */

/* Returns code, with a description of the problem in what[what_len]. */
static int fail(char *what, int what_len, int code, const char *msg) {
    if (what && what_len > 0) snprintf(what, (size_t)what_len, "%s", msg);
    return code;
}

/* A matrix the kernels can multiply: a known type, rows x cols as expected. */
static int check_matrix(const realm_tensor *t, int64_t rows, int64_t cols) {
    const realm_type_traits *tt = realm_get_traits(t->type);
    if (!t->data || !tt || realm_act_type(t->type) < 0) return REALM_EUNSUPPORTED;
    if (t->rows != rows || t->cols != cols || cols % tt->block_size) return REALM_EINVAL;
    return realm_act_size(realm_act_type(t->type), 1, cols) < 0 ? REALM_EINVAL : 0;
}

static int check_norm(const realm_tensor *t, int64_t n) {
    if (!t->data || t->type != REALM_TYPE_F32) return REALM_EUNSUPPORTED;
    return t->rows == 1 && t->cols == n ? 0 : REALM_EINVAL;
}

static int check_config(const realm_config *c) {
    const int flags[] = {c->qk_norm, c->post_norms, c->scale_q, c->gelu, c->qkv_bias, c->rope_neox};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (flags[i] != 0 && flags[i] != 1) return REALM_EINVAL;
    const int dims[] = {c->n_layer, c->n_embd, c->n_ff, c->n_head, c->n_head_kv, c->head_dim, c->n_rot, c->n_vocab};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i] <= 0 || dims[i] > MAX_DIM) return REALM_EINVAL;
    if (c->n_head % c->n_head_kv || (int64_t)c->n_head * c->head_dim > MAX_DIM) return REALM_EINVAL;
    if (c->n_rot % 2 || c->n_rot > c->head_dim || c->n_rot > REALM_MAX_ROT) return REALM_EINVAL;
    if (!(c->rms_eps >= 0.0f) || !isfinite(c->rms_eps) || !(c->rope_base > 0.0f) || !(c->rope_base_swa > 0.0f))
        return REALM_EINVAL;
    if (!isfinite(c->rope_base) || !isfinite(c->rope_base_swa) || !isfinite(c->rope_freq_scale) ||
        !isfinite(c->attn_scale) || !isfinite(c->embd_scale))
        return REALM_EINVAL;
    if (c->sliding_window < 0 || c->swa_pattern < 0) return REALM_EINVAL;
    return 0;
}

int realm_model_check(const realm_model *m, char *what, int what_len) {
    const realm_config *c = &m->c;
    int rc = check_config(c);
    if (rc) return fail(what, what_len, rc, "bad model configuration");
    if (m->nthreads < 1 || m->nthreads > realm_max_threads() || (m->isa != REALM_ISA_SCALAR && m->isa != realm_best_isa()))
        return fail(what, what_len, REALM_EINVAL, "bad thread count or isa");
    const int64_t E = c->n_embd, Q = (int64_t)c->n_head * c->head_dim, KV = (int64_t)c->n_head_kv * c->head_dim;
    const realm_type_traits *te = realm_get_traits(m->tok_embd.type);
    if (!m->tok_embd.data || !te) return fail(what, what_len, REALM_EUNSUPPORTED, "token_embd: unsupported type");
    if (m->tok_embd.rows != c->n_vocab || m->tok_embd.cols != E || E % te->block_size)
        return fail(what, what_len, REALM_EINVAL, "token_embd: shape is not [n_vocab, n_embd]");
    if ((rc = check_norm(&m->output_norm, E))) return fail(what, what_len, rc, "output_norm: not F32 [n_embd]");
    if (m->rope_freqs.data && (rc = check_norm(&m->rope_freqs, c->n_rot / 2)))
        return fail(what, what_len, rc, "rope_freqs: not F32 [n_rot / 2]");
    if ((rc = check_matrix(&m->output, c->n_vocab, E)))
        return fail(what, what_len, rc, "output: unsupported type or shape is not [n_vocab, n_embd]");
    if (!m->layers) return fail(what, what_len, REALM_EINVAL, "no layers");
    const int qk = c->qk_norm, post = c->post_norms, bias = c->qkv_bias;
    for (int il = 0; il < c->n_layer; il++) {
        const realm_layer_weights *L = &m->layers[il];
        const struct {
            const realm_tensor *t;
            int64_t rows, cols; /* rows 0: a norm of cols values */
            const char *name;
        } want[] = {
            {&L->attn_norm, 0, E, "attn_norm"}, {&L->wq, Q, E, "attn_q"}, {&L->wk, KV, E, "attn_k"},
            {&L->wv, KV, E, "attn_v"}, {&L->wo, E, Q, "attn_output"}, {&L->ffn_norm, 0, E, "ffn_norm"},
            {&L->ffn_gate, c->n_ff, E, "ffn_gate"}, {&L->ffn_up, c->n_ff, E, "ffn_up"},
            {&L->ffn_down, E, c->n_ff, "ffn_down"},
            {bias ? &L->bq : NULL, 0, Q, "attn_q.bias"},
            {bias ? &L->bk : NULL, 0, KV, "attn_k.bias"},
            {bias ? &L->bv : NULL, 0, KV, "attn_v.bias"},
            {qk ? &L->attn_q_norm : NULL, 0, c->head_dim, "attn_q_norm"},
            {qk ? &L->attn_k_norm : NULL, 0, c->head_dim, "attn_k_norm"},
            {post ? &L->attn_post_norm : NULL, 0, E, "post_attention_norm"},
            {post ? &L->ffn_post_norm : NULL, 0, E, "post_ffw_norm"},
        };
        if ((!qk && (L->attn_q_norm.data || L->attn_k_norm.data)) ||
            (!post && (L->attn_post_norm.data || L->ffn_post_norm.data)) ||
            (!bias && (L->bq.data || L->bk.data || L->bv.data)))
            return fail(what, what_len, REALM_EINVAL, "a norm or bias the configuration does not use");
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            if (!want[i].t) continue;
            rc = want[i].rows ? check_matrix(want[i].t, want[i].rows, want[i].cols) : check_norm(want[i].t, want[i].cols);
            if (rc) {
                if (what && what_len > 0)
                    snprintf(what, (size_t)what_len, "blk.%d.%s: %s", il, want[i].name,
                             rc == REALM_EUNSUPPORTED ? "unsupported tensor type" : "wrong shape");
                return rc;
            }
        }
    }
    return 0;
}

/* ---- KV cache ---- */

static int kv_elsize(int type) { return type == REALM_TYPE_F16 ? 2 : type == REALM_TYPE_F32 ? 4 : 0; }

int64_t realm_kv_bytes(const realm_config *c, int64_t n_ctx, int type) {
    if (check_config(c)) return REALM_EINVAL;
    if (!kv_elsize(type)) return REALM_EUNSUPPORTED;
    if (n_ctx < 1 || n_ctx > MAX_DIM) return REALM_EINVAL;
    /* row <= 2^24 and n_layer <= 2^24 (check_config): per_pos < 2^52, and n_ctx is bounded below */
    const int64_t row = (int64_t)c->n_head_kv * c->head_dim, per_pos = 2 * (int64_t)c->n_layer * row * kv_elsize(type);
    if (n_ctx > ((int64_t)1 << 60) / per_pos) return REALM_EINVAL;
    return per_pos * n_ctx + (int64_t)c->n_layer * (int64_t)sizeof(int64_t);
}

realm_kv_cache *realm_kv_new(const realm_config *c, int64_t n_ctx, int type) {
    if (realm_kv_bytes(c, n_ctx, type) < 0) return NULL;
    realm_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->type = type;
    kv->n_layer = c->n_layer;
    kv->n_ctx = n_ctx;
    kv->row = (int64_t)c->n_head_kv * c->head_dim;
    const size_t half = (size_t)(c->n_layer * n_ctx * kv->row * kv_elsize(type));
    kv->n_filled = calloc((size_t)c->n_layer, sizeof *kv->n_filled);
    kv->k = calloc(1, half); /* zeroed: even a stale row is never uninitialised memory */
    kv->v = calloc(1, half);
    if (!kv->n_filled || !kv->k || !kv->v) {
        realm_kv_free(kv);
        return NULL;
    }
    return kv;
}

void realm_kv_free(realm_kv_cache *kv) {
    if (!kv) return;
    free(kv->n_filled);
    free(kv->k);
    free(kv->v);
    free(kv);
}

void realm_kv_truncate(realm_kv_cache *kv, int64_t n) {
    if (n < 0) n = 0;
    for (int il = 0; il < kv->n_layer; il++)
        if (kv->n_filled[il] > n) kv->n_filled[il] = n;
}

int64_t realm_kv_length(const realm_kv_cache *kv) {
    int64_t n = kv->n_ctx;
    for (int il = 0; il < kv->n_layer; il++)
        if (kv->n_filled[il] < n) n = kv->n_filled[il];
    return n;
}

/* Layer il's K (or V) rows. */
static char *kv_rows(const realm_kv_cache *kv, void *base, int il) {
    return (char *)base + (size_t)((int64_t)il * kv->n_ctx * kv->row * kv_elsize(kv->type));
}

static void kv_store(realm_kv_cache *kv, int il, int64_t p, const float *k, const float *v, int isa) {
    const size_t off = (size_t)(p * kv->row * kv_elsize(kv->type));
    char *kd = kv_rows(kv, kv->k, il) + off, *vd = kv_rows(kv, kv->v, il) + off;
    if (kv->type == REALM_TYPE_F16) {
        realm_f32_to_f16(k, (uint16_t *)kd, kv->row, isa);
        realm_f32_to_f16(v, (uint16_t *)vd, kv->row, isa);
    } else {
        memcpy(kd, k, (size_t)kv->row * sizeof(float));
        memcpy(vd, v, (size_t)kv->row * sizeof(float));
    }
}

/* ---- scratch ---- */

static int64_t align64(int64_t n) { return (n + 63) & ~(int64_t)63; }

/* Bytes of quantized activations of the largest input among the matrices
 * multiplying against act type `act`, for n tokens. */
static int64_t act_bytes(const realm_model *m, int act, int64_t n) {
    int64_t best = 0;
    const realm_tensor *mats[7];
    for (int il = 0; il < m->c.n_layer; il++) {
        const realm_layer_weights *L = &m->layers[il];
        mats[0] = &L->wq, mats[1] = &L->wk, mats[2] = &L->wv, mats[3] = &L->wo, mats[4] = &L->ffn_gate,
        mats[5] = &L->ffn_up, mats[6] = &L->ffn_down; /* ffn_up: ffn_gate's input, maybe another act type */
        for (int i = 0; i < 7; i++) {
            if (realm_act_type(mats[i]->type) != act) continue;
            const int64_t b = realm_act_size(act, n, mats[i]->cols);
            if (b > best) best = b;
        }
    }
    return best;
}

int realm_scratch_reserve(realm_scratch *s, const realm_model *m, int64_t n_tok) {
    const int64_t cap = n_tok < REALM_FWD_CHUNK ? n_tok : REALM_FWD_CHUNK;
    if (cap < 1) return REALM_EINVAL;
    if (s->block && s->cap >= cap) return 0;
    const realm_config *c = &m->c;
    const int64_t E = c->n_embd, Q = (int64_t)c->n_head * c->head_dim, KV = (int64_t)c->n_head_kv * c->head_dim;
    const int64_t f = (int64_t)sizeof(float);
    const int64_t sizes[] = {
        cap * E * f, cap * Q * f, cap * KV * f, cap * KV * f, cap * Q * f, cap * c->n_ff * f, cap * c->n_ff * f,
        cap * E * f, cap * c->n_rot * f, cap * c->n_rot * f, cap * (int64_t)sizeof(int32_t),
        act_bytes(m, REALM_ACT_Q8, cap), act_bytes(m, REALM_ACT_Q8_K, cap), act_bytes(m, REALM_ACT_F16, cap),
        act_bytes(m, REALM_ACT_BF16, cap),
        cap * (int64_t)sizeof(int32_t), cap * (int64_t)sizeof(int32_t), cap * (int64_t)sizeof(int32_t),
        cap * (int64_t)sizeof(void *), cap * (int64_t)sizeof(void *), cap * (int64_t)sizeof(int64_t),
    };
    enum { N = sizeof sizes / sizeof sizes[0] };
    int64_t offs[N], total = 0;
    for (int i = 0; i < N; i++) {
        offs[i] = total;
        total += align64(sizes[i]);
    }
    char *block = aligned_alloc(64, (size_t)(total ? total : 64));
    if (!block) return REALM_ENOMEM;
    free(s->block);
    s->block = block;
    s->cap = cap;
    float **fl[] = {&s->xn, &s->q, &s->k, &s->v, &s->att, &s->gate, &s->up, &s->proj, &s->rope[0], &s->rope[1]};
    for (int i = 0; i < 10; i++) *fl[i] = (float *)(block + offs[i]);
    s->pos = (int32_t *)(block + offs[10]);
    s->act[REALM_ACT_F32] = NULL;
    s->act[REALM_ACT_Q8] = block + offs[11];
    s->act[REALM_ACT_Q8_K] = block + offs[12];
    s->act[REALM_ACT_F16] = block + offs[13];
    s->act[REALM_ACT_BF16] = block + offs[14];
    s->seg = (int32_t *)(block + offs[15]);
    s->rope_pos[0] = (int32_t *)(block + offs[16]);
    s->rope_pos[1] = (int32_t *)(block + offs[17]);
    s->kv_k = (const void **)(block + offs[18]);
    s->kv_v = (const void **)(block + offs[19]);
    s->kv_len = (int64_t *)(block + offs[20]);
    s->rope_n[0] = s->rope_n[1] = 0;
    return 0;
}

void realm_scratch_free(realm_scratch *s) {
    free(s->block);
    free(s->attn);
    free(s->hidden);
    free(s->logits);
    memset(s, 0, sizeof *s);
}

/* Layer il's attention parameters. */
static realm_attn_params attn_params(const realm_model *m, int il, int kv_type) {
    const realm_config *c = &m->c;
    const int local = realm_layer_is_local(c, il);
    const int64_t KV = (int64_t)c->n_head_kv * c->head_dim;
    const realm_attn_params p = {
        .n_head = c->n_head, .n_kv_head = c->n_head_kv, .head_dim = c->head_dim, .kv_type = kv_type,
        .kv_pos_stride = KV, .kv_head_stride = c->head_dim, .scale = c->scale_q ? 1.0f : c->attn_scale,
        .window = local ? c->sliding_window : 0,
    };
    return p;
}

/* Room for attention over a cache of n_ctx positions on every thread. */
static int attn_reserve(realm_scratch *s, const realm_model *m, int64_t n_ctx, int kv_type) {
    const realm_attn_params p = attn_params(m, 0, kv_type);
    const int64_t need = (int64_t)m->nthreads * realm_attn_scratch(&p, n_ctx);
    if (s->attn && s->attn_floats >= need) return 0;
    float *a = malloc((size_t)need * sizeof(float));
    if (!a) return REALM_ENOMEM;
    free(s->attn);
    s->attn = a;
    s->attn_floats = need;
    return 0;
}

/* ---- pieces of a layer, called by every thread of the region ---- */

/* y[r] = rmsnorm(x[r]) * w for rows r (shared out over the threads). */
static void norm_rows(const float *x, const realm_tensor *w, int64_t rows, int64_t n, float eps, float *y) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) realm_rmsnorm(x + r * n, w->data, 1, n, eps, y + r * n);
}

/* The residual step after a block, row by row in one pass (one barrier):
 * p = post_norm(p) if there is one; x += p; then xn = norm(x) if `norm`. */
static void residual_rows(float *x, float *p, const realm_tensor *post_norm, const realm_tensor *norm, int64_t rows,
                          int64_t n, float eps, float *xn) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * n, *pr = p + r * n;
        if (post_norm->data) realm_rmsnorm(pr, post_norm->data, 1, n, eps, pr);
        realm_add(xr, pr, n);
        if (norm) realm_rmsnorm(xr, norm->data, 1, n, eps, xn + r * n);
    }
}

/* Element-wise work is cut in pieces of this many values. */
#define PIECE 1024

static void gate_rows(int gelu, float *gate, const float *up, int64_t n, int isa) {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i += PIECE) {
        const int64_t len = n - i < PIECE ? n - i : PIECE;
        if (gelu) realm_geglu(gate + i, up + i, gate + i, len, isa);
        else realm_swiglu(gate + i, up + i, gate + i, len, isa);
    }
}

/* y = x W^T.  x is quantized (or rounded) into act_buf[act] for W's
 * activation type unless `have` says that buffer already holds it (matrices
 * sharing an input share its quantization); `have` is each thread's own copy,
 * updated alike in all of them.  F32 weights take x itself. */
static int project(const realm_tensor *w, const float *x, int64_t n, float *y, void *const act_buf[REALM_ACT_COUNT],
                   int *have, int isa) {
    const int act = realm_act_type(w->type);
    const void *a = x;
    if (act != REALM_ACT_F32) {
        if (act < 0) return act;
        if (!(*have & (1 << act))) {
            const int rc = realm_quantize_act_ws(act, x, n, w->cols, act_buf[act], isa);
            if (rc) return rc;
            *have |= 1 << act;
        }
        a = act_buf[act];
    }
    return realm_matmul_q_ws(w->type, w->data, w->rows, w->cols, a, n, y, isa);
}

/* With profiling on, the master thread adds the time since *t to op.  Every
 * op ends with a barrier, so that is the op's wall time. */
static void tick(const realm_model *m, realm_scratch *s, int op, double *t) {
    if (!m->profile || thread_num() != 0) return;
    const double now = wall_time();
    s->prof[op] += now - *t;
    *t = now;
}

/* Layer il for the n (<= s->cap) tokens whose positions, sequences and cache rows
 * the caller put in s (pos, seg, kv_k/kv_v/kv_len): x [n][n_embd] is updated in
 * place.  fresh_rope: s->rope[local] must be made for these positions. */
static int layer_chunk(const realm_model *m, int il, float *x, int64_t n, const realm_seq *seqs, realm_scratch *s,
                       int fresh_rope, int64_t n_kv_max) {
    const realm_config *c = &m->c;
    const realm_layer_weights *L = &m->layers[il];
    const int isa = m->isa, local = realm_layer_is_local(c, il);
    const int64_t E = c->n_embd, Q = (int64_t)c->n_head * c->head_dim, KV = (int64_t)c->n_head_kv * c->head_dim;
    const float base = local ? c->rope_base_swa : c->rope_base;
    float *rope = s->rope[local];
    double t = m->profile ? wall_time() : 0.0;
    int have, rc = 0;

    /* attention */
    norm_rows(x, &L->attn_norm, n, E, c->rms_eps, s->xn);
    tick(m, s, REALM_OP_ATTN_NORM, &t);
    have = 0;
    if (!rc) rc = project(&L->wq, s->xn, n, s->q, s->act, &have, isa);
    if (!rc) rc = project(&L->wk, s->xn, n, s->k, s->act, &have, isa);
    if (!rc) rc = project(&L->wv, s->xn, n, s->v, s->act, &have, isa);
    tick(m, s, REALM_OP_QKV, &t);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float *q = s->q + i * Q, *k = s->k + i * KV, *cs = rope + i * c->n_rot;
        if (c->qkv_bias) { /* llama.cpp adds them to the products, as they are */
            realm_add(q, L->bq.data, Q);
            realm_add(k, L->bk.data, KV);
            realm_add(s->v + i * KV, L->bv.data, KV);
        }
        if (c->qk_norm) {
            realm_rmsnorm(q, L->attn_q_norm.data, c->n_head, c->head_dim, c->rms_eps, q);
            realm_rmsnorm(k, L->attn_k_norm.data, c->n_head_kv, c->head_dim, c->rms_eps, k);
        }
        if (fresh_rope) realm_rope_table(&s->pos[i], 1, c->n_rot, base, c->rope_freq_scale, m->rope_freqs.data, cs);
        realm_rope_apply(q, 1, c->n_head, c->head_dim, c->n_rot, cs, c->rope_neox, isa);
        realm_rope_apply(k, 1, c->n_head_kv, c->head_dim, c->n_rot, cs, c->rope_neox, isa);
        if (c->scale_q)
            for (int64_t j = 0; j < Q; j++) q[j] = q[j] * c->attn_scale;
        kv_store(seqs[s->seg[i]].kv, il, s->pos[i], k, s->v + i * KV, isa);
    }
    tick(m, s, REALM_OP_ROPE, &t);
    const realm_attn_params p = attn_params(m, il, seqs[0].kv->type);
    if (!rc)
        rc = realm_attention_rows_ws(&p, s->q, n, s->pos, s->kv_k, s->kv_v, s->kv_len, n_kv_max, s->att, s->attn,
                                     isa);
    tick(m, s, REALM_OP_ATTN, &t);
    have = 0;
    if (!rc) rc = project(&L->wo, s->att, n, s->proj, s->act, &have, isa);
    tick(m, s, REALM_OP_WO, &t);

    /* feed-forward */
    residual_rows(x, s->proj, &L->attn_post_norm, &L->ffn_norm, n, E, c->rms_eps, s->xn);
    tick(m, s, REALM_OP_FFN_NORM, &t);
    have = 0;
    if (!rc) rc = project(&L->ffn_gate, s->xn, n, s->gate, s->act, &have, isa);
    if (!rc) rc = project(&L->ffn_up, s->xn, n, s->up, s->act, &have, isa);
    tick(m, s, REALM_OP_FFN_UP, &t);
    gate_rows(c->gelu, s->gate, s->up, n * c->n_ff, isa);
    tick(m, s, REALM_OP_GATE, &t);
    have = 0;
    if (!rc) rc = project(&L->ffn_down, s->gate, n, s->proj, s->act, &have, isa);
    tick(m, s, REALM_OP_FFN_DOWN, &t);
    residual_rows(x, s->proj, &L->ffn_post_norm, NULL, n, E, c->rms_eps, NULL);
    tick(m, s, REALM_OP_RESIDUAL, &t);
    return rc;
}

/* Layer il over the sequences' rows x [sum of n][n_embd], in chunks of at most
 * s->cap tokens (a sequence may span chunks: its later tokens attend to the K/V
 * rows the earlier chunk stored).  Arguments are checked by the callers. */
static int run_layer(const realm_model *m, int il, const realm_seq *seqs, int n_seq, float *x, realm_scratch *s) {
    const realm_config *c = &m->c;
    int64_t total = 0, n_kv_max = 0;
    for (int i = 0; i < n_seq; i++) {
        total += seqs[i].n;
        if (seqs[i].kv->n_ctx > n_kv_max) n_kv_max = seqs[i].kv->n_ctx;
    }
    int rc = realm_scratch_reserve(s, m, total);
    if (!rc) rc = attn_reserve(s, m, n_kv_max, seqs[0].kv->type);
    if (rc) return rc;
    const int local = realm_layer_is_local(c, il);
    const float base = local ? c->rope_base_swa : c->rope_base;
    const int64_t E = c->n_embd;
    int seq = 0;
    int64_t off = 0; /* the next token's index within seqs[seq] */
    for (int64_t t0 = 0; t0 < total && !rc; t0 += s->cap) {
        const int64_t n = total - t0 < s->cap ? total - t0 : s->cap;
        for (int64_t i = 0; i < n; i++, off++) {
            while (off == seqs[seq].n) seq++, off = 0;
            const realm_kv_cache *kv = seqs[seq].kv;
            s->pos[i] = (int32_t)(seqs[seq].pos + off);
            s->seg[i] = seq;
            s->kv_k[i] = kv_rows(kv, kv->k, il);
            s->kv_v[i] = kv_rows(kv, kv->v, il);
            s->kv_len[i] = kv->n_ctx;
        }
        /* the layers of a step share a rope table: remake it only for other positions */
        const int fresh = s->rope_n[local] != n || s->rope_base[local] != base ||
                          memcmp(s->rope_pos[local], s->pos, (size_t)n * sizeof(int32_t));
        if (fresh) {
            s->rope_n[local] = n;
            s->rope_base[local] = base;
            memcpy(s->rope_pos[local], s->pos, (size_t)n * sizeof(int32_t));
        }
#pragma omp parallel num_threads(m->nthreads) if (m->nthreads > 1)
        {
            const int r = layer_chunk(m, il, x + t0 * E, n, seqs, s, fresh, n_kv_max);
            if (thread_num() == 0) rc = r; /* every thread meets the same (argument-driven) result */
        }
    }
    if (rc) return rc;
    for (int i = 0; i < n_seq; i++) seqs[i].kv->n_filled[il] = seqs[i].pos + seqs[i].n;
    return 0;
}

/* ---- entry points ---- */

int realm_seq_check(const realm_model *m, int il, const realm_seq *q) {
    const realm_config *c = &m->c;
    const realm_kv_cache *kv = q->kv;
    if (il >= c->n_layer || q->n < 1 || q->n > MAX_DIM || q->pos < 0 || !kv) return REALM_EINVAL;
    if (kv->n_layer != c->n_layer || kv->row != (int64_t)c->n_head_kv * c->head_dim) return REALM_EINVAL;
    if (il < 0) { /* token ids first: the embedding comes before any layer */
        if (!q->tokens) return REALM_EINVAL;
        for (int64_t t = 0; t < q->n; t++)
            if (q->tokens[t] < 0 || q->tokens[t] >= c->n_vocab) return REALM_EINVAL;
    }
    if (q->pos > kv->n_ctx - q->n) return REALM_EKV_FULL;
    if (q->pos > (il < 0 ? realm_kv_length(kv) : kv->n_filled[il])) return REALM_EINVAL;
    return 0;
}

/* Every sequence checked, no cache twice, one cache type. */
static int check_batch(const realm_model *m, int il, const realm_seq *seqs, int n_seq, int64_t *total) {
    if (n_seq < 1 || !seqs) return REALM_EINVAL;
    *total = 0;
    for (int i = 0; i < n_seq; i++) {
        const int rc = realm_seq_check(m, il, &seqs[i]);
        if (rc) return rc;
        if (seqs[i].kv->type != seqs[0].kv->type) return REALM_EINVAL;
        for (int j = 0; j < i; j++)
            if (seqs[j].kv == seqs[i].kv) return REALM_EINVAL;
        *total += seqs[i].n;
        if (*total > MAX_DIM) return REALM_EINVAL;
    }
    return 0;
}

int realm_forward_layer_batch(const realm_model *m, int il, const realm_seq *seqs, int n_seq, float *x,
                              realm_scratch *s) {
    int64_t total;
    if (il < 0) return REALM_EINVAL;
    const int rc = check_batch(m, il, seqs, n_seq, &total);
    return rc ? rc : run_layer(m, il, seqs, n_seq, x, s);
}

int realm_forward_layer(const realm_model *m, int il, const float *in, int64_t n_tok, int64_t pos,
                        realm_kv_cache *kv, realm_scratch *s, float *out) {
    if (il < 0) return REALM_EINVAL;
    const realm_seq q = {.tokens = NULL, .n = n_tok, .pos = pos, .kv = kv, .logits = NULL};
    const int rc = realm_seq_check(m, il, &q);
    if (rc) return rc;
    memmove(out, in, (size_t)(n_tok * m->c.n_embd) * sizeof(float));
    return run_layer(m, il, &q, 1, out, s);
}

/* Grow a float buffer to rows x width (kept for the next call). */
static int reserve_rows(float **buf, int64_t *cap, int64_t rows, int64_t width) {
    if (*buf && *cap >= rows) return 0;
    float *p = malloc((size_t)(rows * width) * sizeof(float));
    if (!p) return REALM_ENOMEM;
    free(*buf);
    *buf = p;
    *cap = rows;
    return 0;
}

int realm_forward_batch(const realm_model *m, const realm_seq *seqs, int n_seq, realm_scratch *s) {
    const realm_config *c = &m->c;
    const int64_t E = c->n_embd, V = c->n_vocab;
    int64_t total;
    int rc = check_batch(m, -1, seqs, n_seq, &total);
    if (!rc) rc = reserve_rows(&s->hidden, &s->hidden_cap, total, E);
    if (rc) return rc;
    float *h = s->hidden;
    int64_t off = 0;
    for (int i = 0; i < n_seq && !rc; off += seqs[i].n, i++)
        rc = realm_forward_embedding(m, seqs[i].tokens, seqs[i].n, h + off * E);
    for (int il = 0; il < c->n_layer && !rc; il++) rc = run_layer(m, il, seqs, n_seq, h, s);
    if (rc) return rc;
    /* the last row of each sequence that wants logits, moved to the front in order (a row
     * only ever moves down, past rows already read) */
    int64_t rows = 0, end = 0;
    float *only = NULL;
    for (int i = 0; i < n_seq; i++) {
        end += seqs[i].n;
        if (!seqs[i].logits) continue;
        memmove(h + rows * E, h + (end - 1) * E, (size_t)E * sizeof(float));
        only = seqs[i].logits;
        rows++;
    }
    if (rows == 0) return 0;
    if (rows == 1) return realm_forward_lm_head(m, h, 1, only);
    float **dst = malloc((size_t)rows * sizeof *dst);
    if (!dst) return REALM_ENOMEM;
    for (int i = 0, r = 0; i < n_seq; i++)
        if (seqs[i].logits) dst[r++] = seqs[i].logits;
    if (!(rc = reserve_rows(&s->logits, &s->logits_cap, rows, V)) && !(rc = realm_forward_lm_head(m, h, rows, s->logits))) {
        /* to the sequences on every thread (16 rows of Gemma 3's 262,144 logits: 16 MiB) */
#pragma omp parallel for num_threads(m->nthreads) if (m->nthreads > 1) schedule(static)
        for (int64_t r = 0; r < rows; r++) memcpy(dst[r], s->logits + r * V, (size_t)V * sizeof(float));
    }
    free(dst);
    return rc;
}

int realm_forward_embedding(const realm_model *m, const int32_t *tokens, int64_t n_tok, float *out) {
    const realm_config *c = &m->c;
    if (n_tok < 1 || n_tok > MAX_DIM) return REALM_EINVAL;
    int32_t *ids = malloc((size_t)n_tok * sizeof *ids); /* out may overlap tokens */
    if (!ids) return REALM_ENOMEM;
    memcpy(ids, tokens, (size_t)n_tok * sizeof *ids);
    for (int64_t t = 0; t < n_tok; t++) {
        if (ids[t] < 0 || ids[t] >= c->n_vocab) {
            free(ids);
            return REALM_EINVAL;
        }
    }
    const realm_type_traits *tt = realm_get_traits(m->tok_embd.type);
    const int64_t E = c->n_embd, nb = E / tt->block_size, row_bytes = nb * tt->type_size;
    const int nt = n_tok * E >= (1 << 16) ? m->nthreads : 1;
    int rc = 0;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t t = 0; t < n_tok; t++) {
        float *row = out + t * E;
        const int r = realm_dequantize(m->tok_embd.type, (const char *)m->tok_embd.data + ids[t] * row_bytes, nb,
                                       row, 1, m->isa);
        if (r) {
#pragma omp atomic write
            rc = r;
        }
        if (c->embd_scale != 1.0f)
            for (int64_t i = 0; i < E; i++) row[i] = row[i] * c->embd_scale;
    }
    free(ids);
    return rc;
}

int realm_forward_lm_head(const realm_model *m, const float *hidden, int64_t n_rows, float *logits) {
    const realm_config *c = &m->c;
    if (n_rows < 1 || n_rows > MAX_DIM) return REALM_EINVAL;
    const int64_t E = c->n_embd, V = c->n_vocab, chunk = n_rows < REALM_FWD_CHUNK ? n_rows : REALM_FWD_CHUNK;
    const int act = realm_act_type(m->output.type);
    const int64_t act_size = act == REALM_ACT_F32 ? 0 : realm_act_size(act, chunk, E);
    if (act_size < 0) return (int)act_size;
    /* every row is normalized before any logit is written: hidden may overlap logits */
    const int64_t normed_bytes = align64(n_rows * E * (int64_t)sizeof(float));
    char *block = aligned_alloc(64, (size_t)(normed_bytes + align64(act_size)));
    if (!block) return REALM_ENOMEM;
    float *normed = (float *)block;
    void *abuf = block + normed_bytes;
    realm_rmsnorm(hidden, m->output_norm.data, n_rows, E, c->rms_eps, normed);
    int rc = 0;
    for (int64_t r0 = 0; r0 < n_rows && !rc; r0 += chunk) {
        const int64_t n = n_rows - r0 < chunk ? n_rows - r0 : chunk;
        const float *x = normed + r0 * E;
#pragma omp parallel num_threads(m->nthreads) if (m->nthreads > 1)
        {
            void *bufs[REALM_ACT_COUNT];
            for (int k = 0; k < REALM_ACT_COUNT; k++) bufs[k] = abuf;
            int have = 0;
            const int r = project(&m->output, x, n, logits + r0 * V, bufs, &have, m->isa);
            if (thread_num() == 0) rc = r;
        }
    }
    free(block);
    return rc;
}
