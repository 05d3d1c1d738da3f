/* generate.c -- the generation loop: prompt -> host forward passes -> sampler -> text.
 *
 * One generation at a time, in four steps the host calls (realm_abi.h):
 * start (tokenize, check the context, allocate), prefill (the prompt, in
 * chunks of n_batch tokens), run (sample, stream text, decode token by token
 * until a stop) and end (free).  Each forward step is one realm_forward call:
 * the weights, the hidden states and the KV cache stay in the host; the guest
 * holds the token ids, the logits, the sampler and the text not yet streamed.
 *
 * Memory: the logits (n_vocab floats: 1 MiB for Gemma 3's 262,144 tokens) are
 * the only large buffer.
 *
 * Text: each token's piece goes through tok_utf8_stream (whole characters
 * only), bytes that can never form a character become U+FFFD (one per
 * maximal invalid sequence, as Python's errors="replace"), and text that may
 * be the start of a stop string is held back until it is known not to be.
 */
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "gguf_meta.h"
#include "realm_abi.h"
#include "sampler.h"
#include "tokenizer.h"
#include "vocab.h"

_Static_assert(sizeof(struct realm_generate_params) == REALM_GENERATE_PARAMS_SIZE, "padding");
_Static_assert(sizeof(struct realm_generate_result) == REALM_GENERATE_RESULT_SIZE, "padding");

#define MAX_CTX (1u << 24)       /* the host's bound on a KV cache */

enum phase { IDLE, STARTED, PREFILLED, DONE };

static struct generation {
    enum phase phase;
    struct realm_generate_params p;
    struct realm_generate_result r;
    const tokenizer *tok;
    int64_t model_id;
    uint32_t n_vocab, n_batch;
    int32_t kv;                  /* the host's KV cache id; 0: none */
    int32_t *tokens;             /* [n_ctx]: the prompt, then the completion */
    uint32_t n_tokens;
    float *logits;               /* [n_vocab]: the last forward step's */
    sampler smp;
    int smp_ready;
    char *stops;                 /* the stop strings, back to back */
    uint32_t stop_off[REALM_STOP_STRINGS_MAX], stop_len[REALM_STOP_STRINGS_MAX], n_stops;
    tok_utf8_stream utf8;
    char *text;                  /* valid UTF-8 not streamed yet */
    uint32_t text_len, text_cap;
    char *piece;                 /* a token's bytes, then the stream's output */
    uint32_t piece_cap;
} g;

/* ---- text ---------------------------------------------------------------------- */

static int reserve_text(uint32_t extra)
{
    uint64_t need = (uint64_t)g.text_len + extra;
    if (need <= g.text_cap) return REALM_OK;
    if (need > INT32_MAX) return REALM_E_TOO_LARGE;
    uint32_t cap = g.text_cap ? g.text_cap : 240;  /* 256-byte blocks under the allocator's header */
    while (cap < need) cap = cap * 2 + 16;
    char *p = realloc(g.text, cap);
    if (!p) return REALM_E_NO_MEMORY;
    g.text = p;
    g.text_cap = cap;
    return REALM_OK;
}

/* Append n bytes to the pending text, each invalid sequence as U+FFFD. */
static int append_text(const char *bytes, uint32_t n)
{
    int rc = reserve_text(n * 3);  /* at most 3 bytes out per byte in */
    if (rc < 0) return rc;
    const uint8_t *s = (const uint8_t *)bytes;
    for (uint32_t i = 0; i < n;) {
        int k = gguf_utf8_char(s + i, n - i);
        if (k > 0) {
            memcpy(g.text + g.text_len, s + i, (uint32_t)k);
            g.text_len += (uint32_t)k;
            i += (uint32_t)k;
        } else {
            memcpy(g.text + g.text_len, "\xEF\xBF\xBD", 3);
            g.text_len += 3;
            i += (uint32_t)-k;
        }
    }
    return REALM_OK;
}

/* Stream n bytes of valid UTF-8 to the host in pieces of at most REALM_TEXT_MAX
 * bytes cut between characters.  Returns REALM_OK, REALM_EMIT_STOP or an error. */
static int32_t emit(const char *s, uint32_t n)
{
    while (n) {
        uint32_t cut = n;
        if (cut > REALM_TEXT_MAX) {
            cut = REALM_TEXT_MAX;
            while (cut && ((uint8_t)s[cut] & 0xC0) == 0x80) cut--;
        }
        int32_t rc = realm_emit_text(s, cut);
        if (rc != REALM_OK) return rc < 0 ? rc : REALM_EMIT_STOP;
        s += cut;
        n -= cut;
    }
    return REALM_OK;
}

/* The first position where a stop string starts in the pending text, or -1. */
static int64_t find_stop(void)
{
    for (uint32_t pos = 0; pos < g.text_len; pos++)
        for (uint32_t i = 0; i < g.n_stops; i++)
            if (g.stop_len[i] <= g.text_len - pos && !memcmp(g.text + pos, g.stops + g.stop_off[i], g.stop_len[i]))
                return pos;
    return -1;
}

/* Bytes at the end of the pending text that begin some stop string. */
static uint32_t stop_prefix_tail(void)
{
    uint32_t hold = 0;
    for (uint32_t i = 0; i < g.n_stops; i++) {
        uint32_t k = g.stop_len[i] - 1;
        if (k > g.text_len) k = g.text_len;
        for (; k > hold; k--)
            if (!memcmp(g.text + g.text_len - k, g.stops + g.stop_off[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* Stream what of the pending text is safe (everything when final); sets the stop
 * reason on a stop string or a host's stop.  Returns REALM_OK or an error. */
static int32_t flush_text(int final)
{
    int64_t at = find_stop();
    uint32_t n = at >= 0 ? (uint32_t)at : final ? g.text_len : g.text_len - stop_prefix_tail();
    int32_t rc = emit(g.text, n);
    if (rc < 0) return rc;
    memmove(g.text, g.text + n, g.text_len - n);
    g.text_len -= n;
    if (rc == REALM_EMIT_STOP) g.r.stop_reason = REALM_STOP_HOST;
    else if (at >= 0) g.r.stop_reason = REALM_STOP_STRING;
    return REALM_OK;
}

static int reserve_piece(uint32_t need)
{
    if (need <= g.piece_cap) return REALM_OK;
    char *p = realloc(g.piece, need);
    if (!p) return REALM_E_NO_MEMORY;
    g.piece = p;
    g.piece_cap = need;
    return REALM_OK;
}

/* A generated token's text into the pending text, then streamed. */
static int32_t token_text(int32_t id)
{
    int32_t len = tokenizer_piece(g.tok, id, 0, NULL, 0);
    if (len < 0) return vocab_error(len);
    /* the piece, then the stream's output: the bytes it held + the piece */
    int rc = reserve_piece(2 * (uint32_t)len + 3);
    if (rc < 0) return rc;
    if (tokenizer_piece(g.tok, id, 0, g.piece, (uint32_t)len) != len) return REALM_E_INTERNAL;
    char *whole = g.piece + len;
    uint32_t n = tok_utf8_stream_feed(&g.utf8, g.piece, (uint32_t)len, whole);
    if ((rc = append_text(whole, n)) < 0) return rc;
    return flush_text(0);
}

/* The end of the text: the stream's held bytes, then everything pending. */
static int32_t final_text(void)
{
    char held[3];
    uint32_t n = tok_utf8_stream_flush(&g.utf8, held);
    int rc = append_text(held, n);
    if (rc < 0) return rc;
    uint32_t reason = g.r.stop_reason;
    rc = flush_text(1);
    if (g.r.stop_reason == REALM_STOP_HOST) g.r.stop_reason = reason;  /* the host asked once all was said */
    return rc;
}

/* ---- the forward pass (host imports) ------------------------------------------- */

/* n tokens at positions pos.. through every layer; with `last`, the last one's logits. */
static int32_t forward(uint32_t pos, uint32_t n, int last)
{
    const uint32_t want = last ? g.n_vocab : 0;
    int32_t rc = realm_forward(g.model_id, g.tokens + pos, n, pos, g.kv, last ? g.logits : NULL, want);
    if (rc < 0) return rc;
    return (uint32_t)rc == want ? REALM_OK : REALM_E_INTERNAL;
}

/* ---- setup ------------------------------------------------------------------------ */

static int32_t parse_stops(const uint8_t *stops, uint32_t len)
{
    if (!len) return REALM_OK;
    g.stops = malloc(len);
    if (!g.stops) return REALM_E_NO_MEMORY;
    memcpy(g.stops, stops, len);
    for (uint32_t at = 0; at < len;) {
        uint32_t n;
        if (len - at < 4 || g.n_stops == REALM_STOP_STRINGS_MAX) return REALM_E_BAD_ARGUMENT;
        memcpy(&n, g.stops + at, 4);
        at += 4;
        if (n == 0 || n > REALM_STOP_STRING_MAX || n > len - at) return REALM_E_BAD_ARGUMENT;
        if (!gguf_utf8_valid((const uint8_t *)g.stops + at, n)) return REALM_E_BAD_UTF8;
        g.stop_off[g.n_stops] = at;
        g.stop_len[g.n_stops++] = n;
        at += n;
    }
    return REALM_OK;
}

static int32_t sampler_code(int rc)
{
    return rc == SAMPLER_ERR_NO_MEMORY ? REALM_E_NO_MEMORY : REALM_E_BAD_ARGUMENT;
}

static int32_t start(const struct realm_generate_params *params, const char *prompt, uint32_t prompt_len,
                     const void *stops, uint32_t stops_len)
{
    const struct realm_config *c = guest_config();
    if (!c) return REALM_E_NO_MODEL;
    g.p = *params;
    const struct realm_generate_params *p = &g.p;
    if (p->flags & ~(uint32_t)(REALM_TOKENIZE_ADD_SPECIAL | REALM_TOKENIZE_PARSE_SPECIAL | REALM_GENERATE_IGNORE_EOG) ||
        p->n_batch > REALM_FORWARD_MAX_TOKENS || p->n_ctx > MAX_CTX || (c->n_ctx_train && p->n_ctx > c->n_ctx_train))
        return REALM_E_BAD_ARGUMENT;
    if (c->n_layers == 0 || c->n_embd == 0 || c->n_vocab == 0) return REALM_E_UNSUPPORTED;
    g.model_id = c->model_id;
    g.n_vocab = c->n_vocab;

    sampler_params sp = {
        .temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p, .min_p = p->min_p,
        .repeat_penalty = p->repeat_penalty, .frequency_penalty = p->frequency_penalty,
        .presence_penalty = p->presence_penalty, .penalty_last_n = p->penalty_last_n, .seed = p->seed,
    };
    int rc = sampler_init(&g.smp, &sp);
    if (rc) return sampler_code(rc);
    g.smp_ready = 1;
    if ((rc = parse_stops(stops, stops_len)) < 0) return rc;
    if ((rc = vocab_tokenizer(&g.tok)) < 0) return rc;

    /* the prompt: a first guess at its length, then exactly */
    uint32_t n = 0, cap = prompt_len + 8;
    for (;;) {
        int32_t *t = realloc(g.tokens, (size_t)cap * sizeof *t);
        if (!t) return REALM_E_NO_MEMORY;
        g.tokens = t;
        rc = tokenizer_encode(g.tok, prompt, prompt_len, (p->flags & REALM_TOKENIZE_ADD_SPECIAL) != 0,
                              (p->flags & REALM_TOKENIZE_PARSE_SPECIAL) != 0, g.tokens, cap, &n);
        if (rc != TOK_ERR_BUFFER_TOO_SMALL) break;
        cap = n;
    }
    if (rc != TOK_OK) return vocab_error(rc);
    if (n == 0) {  /* an empty prompt starts from BOS, as llama.cpp does */
        if (g.tok->bos_id < 0) return REALM_E_BAD_ARGUMENT;
        g.tokens[n++] = g.tok->bos_id;
    }

    /* the context: prompt + max_tokens must fit; the KV cache gets exactly what is needed */
    uint32_t limit = p->n_ctx ? p->n_ctx : c->n_ctx_train;
    if (limit == 0) return REALM_E_BAD_ARGUMENT;  /* the file states no context and none was given */
    uint64_t n_ctx = p->max_tokens > 0 ? (uint64_t)n + (uint64_t)p->max_tokens : limit;
    if (n_ctx > limit || n >= n_ctx) return REALM_E_CONTEXT_FULL;  /* room for one token at least */
    int32_t *t = realloc(g.tokens, (size_t)n_ctx * sizeof *t);
    if (!t) return REALM_E_NO_MEMORY;
    g.tokens = t;
    g.n_tokens = g.r.n_prompt = n;
    g.r.n_ctx = (uint32_t)n_ctx;

    g.n_batch = p->n_batch ? p->n_batch : REALM_BATCH_DEFAULT;
    if (g.n_batch > n) g.n_batch = n;
    if (!(g.logits = malloc((size_t)g.n_vocab * sizeof(float)))) return REALM_E_NO_MEMORY;
    if ((rc = reserve_piece(256)) < 0 || (rc = reserve_text(0)) < 0) return rc;

    for (uint32_t i = 0; i < n; i++) sampler_accept(&g.smp, g.tokens[i]);  /* penalties see the prompt */
    return REALM_OK;
}

/* ---- exports ---------------------------------------------------------------------- */

int32_t guest_generate_start(const struct realm_generate_params *params, const char *prompt, uint32_t prompt_len,
                             const void *stops, uint32_t stops_len)
{
    guest_generate_end();
    int32_t rc = start(params, prompt, prompt_len, stops, stops_len);
    if (rc < 0) {
        guest_generate_end();
        return rc;
    }
    g.r.tokens = (uint32_t)(uintptr_t)g.tokens;
    g.phase = STARTED;
    return (int32_t)g.r.n_prompt;
}

int32_t guest_generate_prefill(void)
{
    if (g.phase != STARTED) return REALM_E_BAD_ARGUMENT;
    g.phase = DONE;  /* a failure leaves nothing to resume */
    int32_t kv = realm_kv_create(g.model_id, g.r.n_ctx);
    if (kv < 0) return kv;
    g.kv = kv;
    for (uint32_t pos = 0, n; pos < g.r.n_prompt; pos += n) {
        n = g.r.n_prompt - pos < g.n_batch ? g.r.n_prompt - pos : g.n_batch;
        int32_t rc = forward(pos, n, pos + n == g.r.n_prompt);
        if (rc < 0) return rc;
    }
    g.phase = PREFILLED;
    return REALM_OK;
}

int32_t guest_generate_run(void)
{
    if (g.phase != PREFILLED) return REALM_E_BAD_ARGUMENT;
    g.phase = DONE;
    struct realm_generate_result *r = &g.r;
    int32_t rc = REALM_OK;
    for (;;) {
        int32_t id = sampler_sample(&g.smp, g.logits, g.n_vocab);
        if (id < 0) {
            rc = sampler_code(id);
            break;
        }
        sampler_accept(&g.smp, id);
        if (!(g.p.flags & REALM_GENERATE_IGNORE_EOG) && tokenizer_is_eog(g.tok, id)) {
            r->stop_reason = REALM_STOP_EOG;
            break;
        }
        g.tokens[g.n_tokens++] = id;
        r->n_completion++;
        if ((rc = token_text(id)) < 0 || r->stop_reason) break;
        if (g.n_tokens == r->n_ctx) {  /* max_tokens, or the context is full */
            r->stop_reason = REALM_STOP_LENGTH;
            break;
        }
        if ((rc = forward(g.n_tokens - 1, 1, 1)) < 0) break;
        r->n_decoded++;
    }
    if (rc == REALM_OK && (r->stop_reason == REALM_STOP_EOG || r->stop_reason == REALM_STOP_LENGTH))
        rc = final_text();
    return rc < 0 ? rc : (int32_t)r->n_completion;
}

const struct realm_generate_result *guest_generate_result(void)
{
    return g.phase == IDLE ? NULL : &g.r;
}

int32_t guest_generate_end(void)
{
    int32_t rc = g.kv > 0 ? realm_kv_free(g.kv) : REALM_OK;
    if (g.smp_ready) sampler_free(&g.smp);
    free(g.tokens);
    free(g.logits);
    free(g.stops);
    free(g.text);
    free(g.piece);
    memset(&g, 0, sizeof g);
    return rc;
}

void generate_release(void)
{
    guest_generate_end();
    vocab_release();
}
