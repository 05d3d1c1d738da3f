/* tokenizer_wasm_shim.c -- exports for running the tokenizer, sampler and softmax built
 * for wasm32 (as in the guest) under Wasmtime in the tests.  Flat arguments
 * only, so the test needs no knowledge of the structs' wasm32 layout. */
#include <stdlib.h>

#include "sampler.h"
#include "softmax.h"
#include "tokenizer.h"

#define EXPORT(name) __attribute__((export_name(#name)))

EXPORT(shim_alloc) void *shim_alloc(uint32_t n)
{
    return malloc(n ? n : 1);
}

EXPORT(shim_free) void shim_free(void *p)
{
    free(p);
}

/* ids: the 14 special ids of tok_vocab in declaration order (-1 when absent). */
EXPORT(shim_tokenizer_new)
tokenizer *shim_tokenizer_new(int kind, const char *pre, uint32_t pre_len,
                              const uint8_t *tokens, uint32_t tokens_size, uint32_t n_tokens,
                              const uint8_t *merges, uint32_t merges_size, uint32_t n_merges,
                              const uint8_t *scores, uint32_t n_scores, uint32_t scores_type,
                              const uint8_t *types, uint32_t n_types, const int64_t *ids,
                              int32_t add_bos, int32_t add_eos, int32_t add_space_prefix, int32_t *err)
{
    tok_vocab v;
    tok_vocab_defaults(&v);
    v.kind = kind;
    v.pre = pre;
    v.pre_len = pre_len;
    v.tokens = (tok_gguf_strings){tokens, tokens_size, n_tokens};
    if (merges) v.merges = (tok_gguf_strings){merges, merges_size, n_merges};
    if (scores) v.scores = (tok_gguf_numbers){scores, n_scores, scores_type};
    if (types) v.token_types = (tok_gguf_numbers){types, n_types, TOK_GGUF_I32};
    int64_t *dst[14] = {&v.bos_id, &v.eos_id, &v.eot_id, &v.eom_id, &v.unk_id, &v.sep_id, &v.pad_id,
                        &v.mask_id, &v.fim_pre_id, &v.fim_suf_id, &v.fim_mid_id, &v.fim_pad_id,
                        &v.fim_rep_id, &v.fim_sep_id};
    for (int i = 0; i < 14; i++) *dst[i] = ids[i];
    v.add_bos = add_bos;
    v.add_eos = add_eos;
    v.add_space_prefix = add_space_prefix;
    tokenizer *t = malloc(sizeof *t);
    if (!t) {
        *err = TOK_ERR_NO_MEMORY;
        return NULL;
    }
    *err = tokenizer_init(t, &v);
    if (*err) {
        free(t);
        return NULL;
    }
    return t;
}

EXPORT(shim_encode)
int shim_encode(const tokenizer *t, const char *text, uint32_t len, int add_special, int parse_special,
                int32_t *out, uint32_t out_max, uint32_t *n_out)
{
    return tokenizer_encode(t, text, len, add_special, parse_special, out, out_max, n_out);
}

EXPORT(shim_piece)
int32_t shim_piece(const tokenizer *t, int32_t id, int special, char *buf, uint32_t max)
{
    return tokenizer_piece(t, id, special, buf, max);
}

/* Greedy-free sampling check: n draws with the given chain from one logits vector. */
EXPORT(shim_sample)
int shim_sample(float temperature, int32_t top_k, float top_p, float min_p, uint32_t seed_lo, uint32_t seed_hi,
                float *logits, uint32_t n_vocab, int32_t *out, uint32_t n)
{
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = (uint64_t)seed_hi << 32 | seed_lo;
    sampler s;
    int rc = sampler_init(&s, &p);
    if (rc) return rc;
    float *work = malloc((size_t)n_vocab * sizeof *work);
    if (!work) {
        sampler_free(&s);
        return SAMPLER_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < n_vocab; j++) work[j] = logits[j];
        out[i] = sampler_sample(&s, work, n_vocab);
    }
    free(work);
    sampler_free(&s);
    return 0;
}

/* softmax.h's functions, the wasm SIMD ones (simd != 0) or their scalar references. */
EXPORT(shim_softmax_weights)
uint32_t shim_softmax_weights(int simd, float *w, const float *x, uint32_t n, float div, float sub, float threshold,
                              double *sum, float *fsum)
{
    return (simd ? softmax_weights : softmax_weights_ref)(w, x, n, div, sub, threshold, sum, fsum);
}

EXPORT(shim_softmax_max)
float shim_softmax_max(int simd, const float *x, uint32_t n)
{
    return (simd ? softmax_max : softmax_max_ref)(x, n);
}

EXPORT(shim_softmax_next_above)
uint32_t shim_softmax_next_above(int simd, const float *x, uint32_t from, uint32_t n, float bound)
{
    return (simd ? softmax_next_above : softmax_next_above_ref)(x, from, n, bound);
}
