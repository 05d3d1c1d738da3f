/* vocab.c -- fill a tok_vocab from the current model's GGUF header and keep its tokenizer. */
#include <stddef.h>
#include <string.h>

#include "realm_abi.h"
#include "vocab.h"

static tokenizer tok;
static int tok_ready;

int vocab_error(int tok_err)
{
    switch (tok_err) {
    case TOK_OK: return REALM_OK;
    case TOK_ERR_UNKNOWN_MODEL:
    case TOK_ERR_UNKNOWN_PRE:
    case TOK_ERR_NO_BYTE_TOKEN: return REALM_E_UNSUPPORTED;
    case TOK_ERR_NO_MEMORY: return REALM_E_NO_MEMORY;
    case TOK_ERR_TOO_LONG: return REALM_E_TOO_LARGE;
    case TOK_ERR_BUFFER_TOO_SMALL: return REALM_E_BUFFER_TOO_SMALL;
    case TOK_ERR_BAD_TOKEN: return REALM_E_BAD_ARGUMENT;
    default: return REALM_E_BAD_GGUF;  /* a malformed vocabulary */
    }
}

static const struct gguf_kv *find(const struct gguf_file *f, const char *key)
{
    return gguf_find_kv(f, key, (uint32_t)strlen(key));
}

/* An array of strings, in place; absent leaves *out empty. */
static int strings(const struct gguf_file *f, const char *key, tok_gguf_strings *out)
{
    const struct gguf_kv *kv = find(f, key);
    if (!kv) return 0;
    if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING || kv->arr_n > UINT32_MAX)
        return gguf_fail(REALM_E_BAD_GGUF, "metadata '%s' is not an array of strings", key);
    *out = (tok_gguf_strings){f->data + kv->val, f->len - kv->val, (uint32_t)kv->arr_n};
    return 0;
}

/* An array of 32-bit numbers (i32, or f32 where allow_f32), in place. */
static int numbers(const struct gguf_file *f, const char *key, int allow_f32, tok_gguf_numbers *out)
{
    const struct gguf_kv *kv = find(f, key);
    if (!kv) return 0;
    int ok = kv->type == GGUF_ARRAY && kv->arr_n <= UINT32_MAX &&
             (kv->arr_type == GGUF_I32 || (allow_f32 && kv->arr_type == GGUF_F32));
    if (!ok) return gguf_fail(REALM_E_BAD_GGUF, "metadata '%s' is not an array of %s", key,
                              allow_f32 ? "f32 or i32" : "i32");
    *out = (tok_gguf_numbers){f->data + kv->val, (uint32_t)kv->arr_n, kv->arr_type};
    return 0;
}

static int token_id(const struct gguf_file *f, const char *key, int64_t *out)
{
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v);
    if (rc == 1) *out = v;
    return rc < 0 ? rc : 0;
}

static int flag(const struct gguf_file *f, const char *key, int32_t *out)
{
    int rc = gguf_get_bool(f, key, out);
    return rc < 0 ? rc : 0;
}

static int fill(tok_vocab *v, const struct gguf_file *f)
{
    static const struct {
        const char *key;
        size_t field;
    } ids[] = {
        {"tokenizer.ggml.bos_token_id", offsetof(tok_vocab, bos_id)},
        {"tokenizer.ggml.eos_token_id", offsetof(tok_vocab, eos_id)},
        {"tokenizer.ggml.eot_token_id", offsetof(tok_vocab, eot_id)},
        {"tokenizer.ggml.eom_token_id", offsetof(tok_vocab, eom_id)},
        {"tokenizer.ggml.unknown_token_id", offsetof(tok_vocab, unk_id)},
        {"tokenizer.ggml.seperator_token_id", offsetof(tok_vocab, sep_id)},  /* sic, as GGUF spells it */
        {"tokenizer.ggml.padding_token_id", offsetof(tok_vocab, pad_id)},
        {"tokenizer.ggml.mask_token_id", offsetof(tok_vocab, mask_id)},
        {"tokenizer.ggml.fim_pre_token_id", offsetof(tok_vocab, fim_pre_id)},
        {"tokenizer.ggml.fim_suf_token_id", offsetof(tok_vocab, fim_suf_id)},
        {"tokenizer.ggml.fim_mid_token_id", offsetof(tok_vocab, fim_mid_id)},
        {"tokenizer.ggml.fim_pad_token_id", offsetof(tok_vocab, fim_pad_id)},
        {"tokenizer.ggml.fim_rep_token_id", offsetof(tok_vocab, fim_rep_id)},
        {"tokenizer.ggml.fim_sep_token_id", offsetof(tok_vocab, fim_sep_id)},
    };
    tok_vocab_defaults(v);
    struct gguf_str s;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &s);
    if (rc < 0) return rc;
    if (rc == 0) return gguf_fail(REALM_E_UNSUPPORTED, "the model has no tokenizer.ggml.model");
    v->kind = tok_kind_from_model((const char *)f->data + s.off, s.len);
    if (v->kind < 0) return gguf_fail(REALM_E_UNSUPPORTED, "tokenizer.ggml.model is neither gpt2 nor llama");
    if ((rc = gguf_get_str(f, "tokenizer.ggml.pre", &s)) < 0) return rc;
    if (rc == 1) {
        v->pre = (const char *)f->data + s.off;
        v->pre_len = s.len;
    }
    if ((rc = strings(f, "tokenizer.ggml.tokens", &v->tokens)) ||
        (rc = strings(f, "tokenizer.ggml.merges", &v->merges)) ||
        (rc = numbers(f, "tokenizer.ggml.scores", 1, &v->scores)) ||
        (rc = numbers(f, "tokenizer.ggml.token_type", 0, &v->token_types)))
        return rc;
    if (!v->tokens.data) return gguf_fail(REALM_E_UNSUPPORTED, "the model has no tokenizer.ggml.tokens");
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if ((rc = token_id(f, ids[i].key, (int64_t *)((char *)v + ids[i].field)))) return rc;
    if ((rc = flag(f, "tokenizer.ggml.add_bos_token", &v->add_bos)) ||
        (rc = flag(f, "tokenizer.ggml.add_eos_token", &v->add_eos)) ||
        (rc = flag(f, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix)))
        return rc;
    return 0;
}

int vocab_tokenizer(const tokenizer **out)
{
    if (tok_ready) {
        *out = &tok;
        return REALM_OK;
    }
    const struct gguf_file *f = guest_current_gguf();
    if (!f) return REALM_E_NO_MODEL;
    tok_vocab v;
    int rc = fill(&v, f);
    if (rc < 0) {
        log_message(REALM_LOG_ERROR, "tokenizer: ", gguf_error());
        return rc;
    }
    if ((rc = tokenizer_init(&tok, &v)) != TOK_OK) {
        log_message(REALM_LOG_ERROR, "tokenizer: ", tokenizer_strerror(rc));
        return vocab_error(rc);
    }
    tok_ready = 1;
    *out = &tok;
    return REALM_OK;
}

void vocab_release(void)
{
    if (tok_ready) tokenizer_free(&tok);
    tok_ready = 0;
}

/* ---- exports ---------------------------------------------------------------------- */

int32_t guest_tokenize(const char *text, uint32_t text_len, uint32_t flags, int32_t *out, uint32_t out_max_len)
{
    if (flags & ~(uint32_t)(REALM_TOKENIZE_ADD_SPECIAL | REALM_TOKENIZE_PARSE_SPECIAL))
        return REALM_E_BAD_ARGUMENT;
    const tokenizer *t;
    int rc = vocab_tokenizer(&t);
    if (rc < 0) return rc;
    uint32_t n = 0;
    rc = tokenizer_encode(t, text, text_len, (flags & REALM_TOKENIZE_ADD_SPECIAL) != 0,
                          (flags & REALM_TOKENIZE_PARSE_SPECIAL) != 0, out_max_len ? out : NULL, out_max_len, &n);
    if (rc == TOK_ERR_BUFFER_TOO_SMALL && out_max_len == 0) return (int32_t)n;  /* a size query */
    return rc == TOK_OK ? (int32_t)n : vocab_error(rc);
}

int32_t guest_detokenize(const int32_t *tokens, uint32_t n_tokens, uint32_t flags, char *out, uint32_t out_max_len)
{
    if (flags & ~(uint32_t)REALM_DETOKENIZE_SPECIAL) return REALM_E_BAD_ARGUMENT;
    const tokenizer *t;
    int rc = vocab_tokenizer(&t);
    if (rc < 0) return rc;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n_tokens; i++) {
        uint32_t room = total < out_max_len ? out_max_len - (uint32_t)total : 0;
        int32_t len = tokenizer_piece(t, tokens[i], (flags & REALM_DETOKENIZE_SPECIAL) != 0,
                                      room ? out + total : NULL, room);
        if (len < 0) return vocab_error(len);
        total += (uint32_t)len;
        if (total > INT32_MAX) return REALM_E_TOO_LARGE;
    }
    if (out_max_len && total > out_max_len) return REALM_E_BUFFER_TOO_SMALL;
    return (int32_t)total;
}
