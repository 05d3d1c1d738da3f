/* tokenizer_internal.h -- what tokenizer.c, tokenizer_bpe.c, tokenizer_spm.c
 * and tokenizer_merge.c share: token text access, the token hash, the output
 * sink, and the symbol-merging engine both BPE flavours run on. */
#ifndef REALM_TOKENIZER_INTERNAL_H
#define REALM_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tokenizer.h"

/* Pre-tokenizers (tokenizer.pre), by the regex list llama.cpp uses. */
enum tok_pre {
    TOK_PRE_NONE = 0,   /* SPM */
    TOK_PRE_DEFAULT,    /* punctuation runs, gpt2, \p{N}+, [0-9]{3} */
    TOK_PRE_GPT2,       /* 's|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
    TOK_PRE_SMOLLM,     /* \p{N} (each digit alone), then gpt2 */
    TOK_PRE_LLAMA3,     /* llama3's regex: \p{N}{1,3} */
    TOK_PRE_QWEN2,      /* llama3's regex with \p{N} (single digits) */
};

static inline uint64_t tok_read_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline uint32_t tok_read_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Bytes and length of token id (id must be valid).  Lengths were checked to
 * fit the array at init, so the u64 prefix is < 2^32. */
static inline const uint8_t *tok_text(const tokenizer *t, int32_t id)
{
    return t->tok_data + t->tok_off[id];
}

static inline uint32_t tok_len(const tokenizer *t, int32_t id)
{
    return (uint32_t)tok_read_u64(t->tok_data + t->tok_off[id] - 8);
}

/* Hash of a byte string: FNV-1a, then a murmur3 finalizer to spread the low bits. */
static inline uint32_t tok_hash_update(uint32_t h, const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static inline uint32_t tok_hash_final(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

#define TOK_HASH_SEED 2166136261u

/* The id of the token whose bytes are p[0..n), or -1. */
int32_t tok_lookup(const tokenizer *t, const uint8_t *p, uint32_t n);

/* Merge rank of the pair (left, right) in tokenizer.ggml.merges, or -1. */
int32_t tok_merge_rank(const tokenizer *t, const uint8_t *l, uint32_t ln, const uint8_t *r, uint32_t rn);

/* The output sink: counts every id, stores those that fit. */
typedef struct {
    int32_t *out;
    uint32_t max;
    uint32_t n;
} tok_out;

static inline void tok_emit(tok_out *o, int32_t id)
{
    if (o->n < o->max) o->out[o->n] = id;
    o->n++;
}

/* A symbol of the merging engine: bytes [start, start + len) of the text being
 * merged, in a doubly linked list of the live symbols.  len == 0: merged away. */
typedef struct {
    uint32_t start, len;
    int32_t prev, next;
} tok_symbol;

/* Per-call scratch memory, grown on demand and freed by tok_scratch_free. */
typedef struct {
    tok_symbol *sym;
    uint32_t sym_cap;
    uint32_t *heap;     /* symbol indices, a binary min-heap by key */
    uint32_t *hpos;     /* [symbol] heap position + 1, 0 = not queued */
    uint64_t *key;      /* [symbol] key of the pair (symbol, its next) */
    uint32_t q_cap, q_n;
    uint8_t *buf;       /* the text being merged (escaped or byte-encoded) */
    uint32_t buf_cap;
} tok_scratch;

int tok_scratch_symbols(tok_scratch *s, uint32_t n);  /* room for n symbols */
int tok_scratch_buf(tok_scratch *s, uint32_t n);      /* room for n text bytes */
void tok_scratch_free(tok_scratch *s);

/* Split s->buf[0..len) into UTF-8 characters (llama.cpp's unicode_len_utf8,
 * clamped to the text) as the initial symbols; returns their count. */
uint32_t tok_symbols_init(tok_scratch *s, uint32_t len);

/* The priority of merging symbol `left` with its next symbol: *key, lower
 * first, with `left` as its low 32 bits so that ties go to the leftmost pair.
 * Returns 0 when the pair cannot merge. */
typedef int (*tok_pair_key_fn)(const tokenizer *t, const uint8_t *text,
                               const tok_symbol *left, const tok_symbol *right,
                               uint32_t left_index, uint64_t *key);

/* Merge the n symbols, best pair first, until no pair can merge.  The order
 * is exactly that of llama.cpp's priority queues: they also keep stale pairs
 * and skip them when popped, which selects the same pair at every step. */
void tok_merge_symbols(const tokenizer *t, tok_scratch *s, uint32_t n, tok_pair_key_fn key_fn);

/* The encoders of one raw-text fragment (no special tokens inside). */
int tok_bpe_encode(const tokenizer *t, tok_scratch *s, const uint8_t *text, uint32_t len, tok_out *o);
int tok_spm_encode(const tokenizer *t, tok_scratch *s, const uint8_t *text, uint32_t len,
                   int space_prefix, tok_out *o);

/* The pre-tokenizer named by tokenizer.ggml.pre and the defaults llama.cpp
 * ties to that name.  Returns TOK_OK or TOK_ERR_UNKNOWN_PRE. */
int tok_bpe_pre_from_name(const char *name, uint32_t len, int *pre, int *ignore_merges, int *add_bos);

#endif /* REALM_TOKENIZER_INTERNAL_H */
