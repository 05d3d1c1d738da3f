/* sampler.h -- next-token sampling over a logits vector, as llama.cpp's chain.
 *
 * The chain, in llama.cpp's default order (common_sampler / llama-cpp-python):
 *   penalties -> top-k -> top-p -> min-p -> temperature -> draw.
 *   - penalties (llama_sampler_penalties): for each token among the last
 *     penalty_last_n accepted tokens (count c): logit *= repeat_penalty if
 *     logit <= 0, else logit /= repeat_penalty; then
 *     logit -= c * frequency_penalty + presence_penalty.
 *   - top-k: keep the k highest logits (sorted, highest first).
 *   - top-p: softmax over the candidates; keep the smallest highest-first
 *     prefix whose cumulative probability reaches top_p (float sums in the
 *     candidates' order, as llama.cpp).
 *   - min-p: keep logits >= max_logit + log(min_p).
 *   - temperature: logits / temperature; temperature <= 0 is greedy: the
 *     highest logit, the lowest id on ties (llama.cpp's greedy argmax).
 *   - draw: softmax, u uniform in [0, 1), the first candidate whose running
 *     probability sum reaches u * total (a lone candidate is taken without a
 *     draw, as llama.cpp does).  Candidates are visited highest logit
 *     first (ties: lower id first) once top-k or top-p sorted them, otherwise
 *     in id order.
 * min_keep is 1 throughout.  Memory and time stay small on a 262,144-token
 * vocabulary: top-k keeps a k-entry heap over one pass of the logits (no
 * sort of the vocabulary); top-p without top-k selects only as deep as its
 * cumulative sum needs; with neither, nothing is copied but one float weight
 * per token.  The softmax's e^x is softmax.h's (within 1 ulp of the exact
 * value, the same bits in every build), not libm's expf.
 *
 * Randomness: xoshiro256** (Blackman & Vigna) seeded by expanding `seed`
 * with splitmix64; u = (next() >> 11) * 2^-53.  The same seed and the same
 * logits give the same tokens on every platform.  (llama.cpp's mt19937 stream
 * is not reproduced: same seed, different samples.)
 */
#ifndef REALM_SAMPLER_H
#define REALM_SAMPLER_H

#include <stdint.h>

#define SAMPLER_MAX_LAST_N 65536

enum sampler_error {
    SAMPLER_ERR_BAD_ARG = -1,    /* NULL pointer, n_vocab 0, NaN or out-of-range parameter */
    SAMPLER_ERR_NO_MEMORY = -2,
};

typedef struct {
    float temperature;        /* <= 0: greedy */
    int32_t top_k;            /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float repeat_penalty;     /* 1: off; > 0 */
    float frequency_penalty;  /* 0: off */
    float presence_penalty;   /* 0: off */
    int32_t penalty_last_n;   /* accepted tokens the penalties look back on; 0: off */
    uint64_t seed;
} sampler_params;

typedef struct {
    int32_t id;
    float logit;
} sampler_candidate;

typedef struct {
    sampler_params p;
    uint64_t rng[4];             /* xoshiro256** state */
    int32_t *recent;             /* ring of the last penalty_last_n accepted tokens */
    uint32_t n_recent, head;
    int32_t *scratch;            /* sorted copy of `recent` for counting */
    sampler_candidate *cand;     /* candidates of the current step */
    uint32_t cand_cap;
    float *w;                    /* the step's weights: by id (no sort), else by rank */
    uint32_t w_cap;
} sampler;

/* llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * penalties off (repeat 1.0, last_n 64), seed 0. */
void sampler_params_default(sampler_params *p);

/* Returns 0 or SAMPLER_ERR_*; sampler_free releases a successful init. */
int sampler_init(sampler *s, const sampler_params *p);
void sampler_free(sampler *s);

/* Record a token as generated (or as context: llama.cpp's server and
 * llama-cpp-python also feed the prompt), for the penalties. */
void sampler_accept(sampler *s, int32_t token);

/* Choose the next token from n_vocab logits.  The penalties are applied to
 * `logits` in place.  Returns the token id, or SAMPLER_ERR_*.  Does not
 * accept the token: call sampler_accept with what you keep. */
int32_t sampler_sample(sampler *s, float *logits, uint32_t n_vocab);

/* The candidates the draw would choose from, with their probabilities, in
 * draw order: writes up to max of them and returns how many there are (or
 * SAMPLER_ERR_*).  Penalties are applied to `logits` in place; the random
 * state does not advance.  Greedy returns its one token with probability 1. */
int32_t sampler_candidates(sampler *s, float *logits, uint32_t n_vocab,
                           int32_t *ids, float *probs, uint32_t max);

/* The next uniform draw in [0, 1) (advances the random state). */
double sampler_uniform(sampler *s);

#endif /* REALM_SAMPLER_H */
