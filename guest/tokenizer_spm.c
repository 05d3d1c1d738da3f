/* tokenizer_spm.c -- SentencePiece BPE ("llama" vocabularies), as llama.cpp's
 * llm_tokenizer_spm_session: spaces become U+2581, characters merge pairwise
 * into the highest-scoring vocabulary token (ties: leftmost) until nothing
 * merges, and characters left outside the vocabulary fall back to <0xXX>. */
#include "tokenizer_internal.h"

static const uint8_t ESCAPED_SPACE[3] = {0xE2, 0x96, 0x81};  /* U+2581 */

static float token_score(const tokenizer *t, int32_t id)
{
    if (!t->scores) return 0.0f;
    uint32_t bits = tok_read_u32(t->scores + (size_t)id * 4);
    if (t->scores_type == TOK_GGUF_I32) return (float)(int32_t)bits;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Higher score first: flip the float's bits into an unsigned order, then invert. */
static uint32_t score_rank(float score)
{
    uint32_t bits;
    if (score == 0.0f) score = 0.0f;  /* -0 ties with +0, as the float compare does */
    memcpy(&bits, &score, sizeof bits);
    uint32_t ordered = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
    return ~ordered;
}

static int spm_pair_key(const tokenizer *t, const uint8_t *text, const tok_symbol *l,
                        const tok_symbol *r, uint32_t left_index, uint64_t *key)
{
    int32_t id = tok_lookup(t, text + l->start, l->len + r->len);
    if (id < 0) return 0;
    *key = ((uint64_t)score_rank(token_score(t, id)) << 32) | left_index;
    return 1;
}

int tok_spm_encode(const tokenizer *t, tok_scratch *s, const uint8_t *text, uint32_t len,
                   int space_prefix, tok_out *o)
{
    /* the text with its optional leading space, every ' ' escaped to 3 bytes */
    uint32_t cap = (len + 1) * 3, n = 0;
    int rc = tok_scratch_buf(s, cap);
    if (rc) return rc;
    if (space_prefix) {
        memcpy(s->buf, ESCAPED_SPACE, 3);
        n = 3;
    }
    for (uint32_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s->buf + n, ESCAPED_SPACE, 3);
            n += 3;
        } else {
            s->buf[n++] = text[i];
        }
    }
    if (n == 0) return TOK_OK;

    if ((rc = tok_scratch_symbols(s, n))) return rc;
    uint32_t n_sym = tok_symbols_init(s, n);
    tok_merge_symbols(t, s, n_sym, spm_pair_key);

    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const tok_symbol *sym = &s->sym[i];
        int32_t id = tok_lookup(t, s->buf + sym->start, sym->len);
        if (id >= 0) {
            tok_emit(o, id);
            continue;
        }
        for (uint32_t j = 0; j < sym->len; j++) {
            int32_t b = t->byte_tok[s->buf[sym->start + j]];
            if (b < 0) return TOK_ERR_NO_BYTE_TOKEN;
            tok_emit(o, b);
        }
    }
    return TOK_OK;
}
