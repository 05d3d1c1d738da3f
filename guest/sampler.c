/* sampler.c -- the sampling chain of sampler.h. */
#include "sampler.h"

#include "softmax.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

/* ---- xoshiro256** seeded by splitmix64 ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double sampler_uniform(sampler *s)
{
    return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

/* ---- setup ---- */

void sampler_params_default(sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->penalty_last_n = 64;
}

int sampler_init(sampler *s, const sampler_params *p)
{
    if (!s || !p) return SAMPLER_ERR_BAD_ARG;
    memset(s, 0, sizeof *s);
    if (isnan(p->temperature) || isnan(p->top_p) || isnan(p->min_p) ||
        !isfinite(p->repeat_penalty) || p->repeat_penalty <= 0.0f ||
        !isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty) ||
        p->penalty_last_n < 0 || p->penalty_last_n > SAMPLER_MAX_LAST_N)
        return SAMPLER_ERR_BAD_ARG;
    s->p = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    if (p->penalty_last_n > 0) {
        s->recent = malloc((size_t)p->penalty_last_n * sizeof *s->recent);
        s->scratch = malloc((size_t)p->penalty_last_n * sizeof *s->scratch);
        if (!s->recent || !s->scratch) {
            sampler_free(s);
            return SAMPLER_ERR_NO_MEMORY;
        }
    }
    return 0;
}

void sampler_free(sampler *s)
{
    if (!s) return;
    free(s->recent);
    free(s->scratch);
    free(s->cand);
    free(s->w);
    memset(s, 0, sizeof *s);
}

void sampler_accept(sampler *s, int32_t token)
{
    uint32_t cap = s ? (uint32_t)s->p.penalty_last_n : 0;
    if (!cap) return;
    s->recent[s->head] = token;
    s->head = (s->head + 1) % cap;
    if (s->n_recent < cap) s->n_recent++;
}

/* ---- the chain ---- */

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

static void apply_penalties(sampler *s, float *logits, uint32_t n)
{
    const sampler_params *p = &s->p;
    if (!s->n_recent || (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f))
        return;
    memcpy(s->scratch, s->recent, (size_t)s->n_recent * sizeof *s->scratch);
    qsort(s->scratch, s->n_recent, sizeof *s->scratch, cmp_i32);
    for (uint32_t i = 0; i < s->n_recent; ) {
        int32_t id = s->scratch[i];
        uint32_t count = 0;
        while (i < s->n_recent && s->scratch[i] == id) i++, count++;
        if (id < 0 || (uint32_t)id >= n) continue;
        float *l = &logits[id];
        if (*l <= 0) *l *= p->repeat_penalty;
        else *l /= p->repeat_penalty;
        *l -= (float)count * p->frequency_penalty + p->presence_penalty;
    }
}

/* Highest logit first, lower id first on ties. */
static int better(sampler_candidate a, sampler_candidate b)
{
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

/* c[0..n) as a heap with its worst candidate on top. */
static void sift_down(sampler_candidate *c, uint32_t i, uint32_t n)
{
    for (;;) {
        uint32_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && better(c[worst], c[l])) worst = l;
        if (r < n && better(c[worst], c[r])) worst = r;
        if (worst == i) return;
        sampler_candidate t = c[i];
        c[i] = c[worst];
        c[worst] = t;
        i = worst;
    }
}

/* The worst-on-top heap c[0..k) in order, best first. */
static void heap_to_sorted(sampler_candidate *c, uint32_t k)
{
    for (uint32_t end = k; end > 1; end--) {
        sampler_candidate t = c[0];
        c[0] = c[end - 1];
        c[end - 1] = t;
        sift_down(c, 0, end - 1);
    }
}

/* The k best of n logits into c[0..k), sorted.  A later logit is better than the heap's
 * worst only when higher (its id is higher than every id in the heap), so the scan
 * skips to the next logit above the worst. */
static void select_from_logits(sampler_candidate *c, uint32_t k, const float *logits, uint32_t n)
{
    for (uint32_t i = 0; i < k; i++) c[i] = (sampler_candidate){(int32_t)i, logits[i]};
    for (uint32_t i = k / 2; i-- > 0; ) sift_down(c, i, k);
    for (uint32_t i = softmax_next_above(logits, k, n, c[0].logit); i < n;
         i = softmax_next_above(logits, i + 1, n, c[0].logit)) {
        c[0] = (sampler_candidate){(int32_t)i, logits[i]};
        sift_down(c, 0, k);
    }
    heap_to_sorted(c, k);
}

static int reserve(sampler *s, uint32_t n)
{
    if (n <= s->cand_cap) return 0;
    sampler_candidate *c = realloc(s->cand, (size_t)n * sizeof *c);
    if (!c) return SAMPLER_ERR_NO_MEMORY;
    s->cand = c;
    s->cand_cap = n;
    return 0;
}

/* s->w with room for a weight per token. */
static int reserve_weights(sampler *s, uint32_t n)
{
    if (n <= s->w_cap) return 0;
    float *w = realloc(s->w, (size_t)n * sizeof *w);
    if (!w) return SAMPLER_ERR_NO_MEMORY;
    s->w = w;
    s->w_cap = n;
    return 0;
}

/* The first highest logit (a NaN first logit wins, as in llama.cpp's greedy). */
static uint32_t argmax_ref(const float *logits, uint32_t n)
{
    uint32_t best = 0;
    float top = logits[0];
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > top) {
            top = logits[i];
            best = i;
        }
    return best;
}

#ifdef __wasm_simd128__
/* The lanes of m, or of x where x > m (a NaN x never is). */
static inline v128_t max_lanes(v128_t m, v128_t x)
{
    return wasm_v128_bitselect(x, m, wasm_f32x4_gt(x, m));
}

/* argmax_ref in two passes, both 4 lanes wide: the highest value, found with the same
 * comparison in four independent accumulators (a NaN never wins one; the first logit, not
 * NaN here, seeds every lane), then the first index holding it (-0 and +0 are equal to it
 * alike, as to the comparison).  Four accumulators, not one: each step's comparison waits
 * on the last: over Gemma 3's 262,144 logits one chain took 75 us a token, four take 26. */
static uint32_t argmax(const float *logits, uint32_t n)
{
    float top = logits[0];
    if (top != top || n < 16) return argmax_ref(logits, n);
    v128_t m0 = wasm_f32x4_splat(top), m1 = m0, m2 = m0, m3 = m0;
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = max_lanes(m0, wasm_v128_load(logits + i));
        m1 = max_lanes(m1, wasm_v128_load(logits + i + 4));
        m2 = max_lanes(m2, wasm_v128_load(logits + i + 8));
        m3 = max_lanes(m3, wasm_v128_load(logits + i + 12));
    }
    for (; i + 4 <= n; i += 4) m0 = max_lanes(m0, wasm_v128_load(logits + i));
    m0 = max_lanes(max_lanes(m0, m1), max_lanes(m2, m3));
    float lanes[4];
    wasm_v128_store(lanes, m0);
    for (int l = 0; l < 4; l++)
        if (lanes[l] > top) top = lanes[l];
    for (; i < n; i++)
        if (logits[i] > top) top = logits[i];
    const v128_t t = wasm_f32x4_splat(top);
    for (i = 0; i + 4 <= n && !wasm_v128_any_true(wasm_f32x4_eq(wasm_v128_load(logits + i), t)); i += 4) {}
    while (logits[i] != top) i++; /* top is there: the loop ends at it */
    return i;
}
#else
#define argmax argmax_ref
#endif

/* top-p over the sorted candidates c[0..k): how many to keep. */
static uint32_t top_p_sorted(const sampler_candidate *c, uint32_t k, float top_p)
{
    float max = c[0].logit, sum = 0.0f, cum = 0.0f;
    for (uint32_t i = 0; i < k; i++) sum += softmax_exp(c[i].logit - max);
    for (uint32_t i = 0; i < k; i++) {
        cum += softmax_exp(c[i].logit - max) / sum;
        if (cum >= top_p) return i + 1;
    }
    return k;
}

/* top-p over all n logits (no top-k): the softmax runs over the vocabulary in
 * id order, as llama.cpp's (its weights kept in s->w; NaN logits weigh
 * nothing), but candidates are selected only as deep as the cumulative sum
 * needs (256, then 8x more each time). */
static int top_p_logits(sampler *s, const float *logits, uint32_t n, float top_p, uint32_t *kept)
{
    int rc = reserve_weights(s, n);
    if (rc) return rc;
    float max = softmax_max(logits, n), sum = 0.0f, cum = 0.0f; /* llama.cpp's float sums */
    softmax_weights(s->w, logits, n, 1.0f, max, -INFINITY, NULL, &sum);
    uint32_t depth = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i == depth) {
            depth = depth == 0 ? (n < 256 ? n : 256) : (depth > n / 8 ? n : depth * 8);
            if ((rc = reserve(s, depth))) return rc;
            select_from_logits(s->cand, depth, logits, n);
        }
        cum += s->w[s->cand[i].id] / sum;
        if (cum >= top_p) {
            *kept = i + 1;
            return 0;
        }
    }
    *kept = n;
    return 0;
}

/* The candidates of one step, each with its weight e^(logit - top), where top is
 * the highest candidate logit (logits divided by the temperature): either
 * s->cand[0..n) (sorted by top-k or top-p) with their weights in s->w[0..n), or,
 * when nothing asked for a sort, the n tokens whose logit reaches `threshold`
 * (min-p), in id order, with their weights in s->w by id (+0 for the others): the
 * vocabulary is never copied or sorted. */
typedef struct {
    int32_t greedy;     /* >= 0: temperature <= 0 chose this token */
    int direct;
    uint32_t n;         /* candidates */
    const float *logits;
    uint32_t n_vocab;
    float threshold;
    float top;
    double sum;         /* direct: the weights' sum, in id order */
} step;

static int step_next(const step *st, const sampler *s, uint32_t *i, int32_t *id, float *weight)
{
    if (!st->direct) {
        if (*i >= st->n) return 0;
        *id = s->cand[*i].id;
        *weight = s->w[*i];
        ++*i;
        return 1;
    }
    for (; *i < st->n_vocab; ++*i)
        if (st->logits[*i] >= st->threshold) {
            *id = (int32_t)*i;
            *weight = s->w[*i];
            ++*i;
            return 1;
        }
    return 0;
}

/* The highest of the sorted path's candidate logits (NaN ones skipped, unless all are). */
static float top_candidate(const sampler_candidate *c, uint32_t k)
{
    float m = -INFINITY;
    int seen = 0;
    for (uint32_t i = 0; i < k; i++) {
        if (c[i].logit > m) m = c[i].logit;
        seen |= c[i].logit == c[i].logit;
    }
    return seen ? m : NAN;
}

static int build(sampler *s, float *logits, uint32_t n, step *st)
{
    const sampler_params *p = &s->p;
    apply_penalties(s, logits, n);
    memset(st, 0, sizeof *st);
    st->greedy = -1;
    if (!(p->temperature > 0.0f)) {
        st->greedy = (int32_t)argmax(logits, n);
        return 0;
    }
    int rc;
    if (p->top_k <= 0 && !(p->top_p < 1.0f)) {
        st->direct = 1;
        st->logits = logits;
        st->n_vocab = n;
        st->threshold = -INFINITY;
        /* the highest candidate is the highest logit (NaN ones are never candidates), and
         * dividing by the temperature keeps the order */
        float max = softmax_max(logits, n);
        if (p->min_p > 0.0f) {
            float min_logit = max + logf(p->min_p);
            if (max >= min_logit) st->threshold = min_logit;  /* none pass (NaN logits): keep them all */
        }
        st->top = max / p->temperature;
        if ((rc = reserve_weights(s, n))) return rc;
        st->n = softmax_weights(s->w, logits, n, p->temperature, st->top, st->threshold, &st->sum, NULL);
        return 0;
    }
    /* top-k, then top-p: the candidates come out sorted */
    uint32_t k;
    if (p->top_k > 0) {
        k = (uint32_t)p->top_k < n ? (uint32_t)p->top_k : n;
        if ((rc = reserve(s, k))) return rc;
        select_from_logits(s->cand, k, logits, n);
        if (p->top_p < 1.0f) k = top_p_sorted(s->cand, k, p->top_p);
    } else if ((rc = top_p_logits(s, logits, n, p->top_p, &k))) {
        return rc;
    }
    sampler_candidate *c = s->cand;
    if (p->min_p > 0.0f) {  /* sorted here: the first is the highest */
        float min_logit = c[0].logit + logf(p->min_p);
        uint32_t kept = 1;
        while (kept < k && c[kept].logit >= min_logit) kept++;
        k = kept;
    }
    for (uint32_t i = 0; i < k; i++) c[i].logit /= p->temperature;
    st->n = k;
    st->top = top_candidate(c, k);
    /* each candidate's weight once, for the sum and the draw (in s->w by rank here) */
    if ((rc = reserve_weights(s, k))) return rc;
    for (uint32_t i = 0; i < k; i++) s->w[i] = softmax_exp(c[i].logit - st->top);
    return 0;
}

/* The sum of the candidates' weights in draw order (float terms, double sum). */
static double weight_sum(const step *st, const sampler *s)
{
    if (st->direct) return st->sum; /* summed with the weights; the others' +0 leaves it as it is */
    double sum = 0.0;
    for (uint32_t i = 0; i < st->n; i++) sum += s->w[i];
    return sum;
}

/* The first candidate at which the running sum of weights reaches target, else the
 * last candidate (0 when there is none). */
static int32_t draw(const step *st, const sampler *s, double target)
{
    double run = 0.0;
    if (st->direct) { /* the running sum at a token is the sum through the candidates up to it */
        for (uint32_t i = 0; i < st->n_vocab; i++) {
            run += s->w[i];
            if (run >= target && st->logits[i] >= st->threshold) return (int32_t)i;
        }
        for (uint32_t i = st->n_vocab; i-- > 0; )
            if (st->logits[i] >= st->threshold) return (int32_t)i;
        return 0;
    }
    for (uint32_t i = 0; i < st->n; i++) {
        run += s->w[i];
        if (run >= target) return s->cand[i].id;
    }
    return st->n ? s->cand[st->n - 1].id : 0;
}

int32_t sampler_candidates(sampler *s, float *logits, uint32_t n_vocab,
                           int32_t *ids, float *probs, uint32_t max)
{
    if (!s || !logits || !n_vocab || n_vocab > INT32_MAX || (max && (!ids || !probs))) return SAMPLER_ERR_BAD_ARG;
    step st;
    int rc = build(s, logits, n_vocab, &st);
    if (rc) return rc;
    if (st.greedy >= 0) {
        if (max) {
            ids[0] = st.greedy;
            probs[0] = 1.0f;
        }
        return 1;
    }
    uint32_t i = 0, k = 0;
    double sum = weight_sum(&st, s);
    int32_t id;
    float w;
    while (k < max && step_next(&st, s, &i, &id, &w)) {
        ids[k] = id;
        probs[k++] = (float)(w / sum);
    }
    return (int32_t)st.n;
}

int32_t sampler_sample(sampler *s, float *logits, uint32_t n_vocab)
{
    if (!s || !logits || !n_vocab || n_vocab > INT32_MAX) return SAMPLER_ERR_BAD_ARG;
    step st;
    int rc = build(s, logits, n_vocab, &st);
    if (rc) return rc;
    if (st.greedy >= 0) return st.greedy;
    if (st.n == 1) { /* a lone candidate: no draw */
        float w;
        uint32_t i = 0;
        int32_t id;
        step_next(&st, s, &i, &id, &w);
        return id;
    }
    /* llama_sampler_dist: float probabilities, double sums, one draw */
    return draw(&st, s, weight_sum(&st, s) * sampler_uniform(s));
}
