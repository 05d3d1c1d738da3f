/* tokenizer.h -- llama.cpp-exact tokenizers read from a GGUF vocabulary.
 *
 * Two tokenizer models, as GGUF's tokenizer.ggml.model names them:
 *   "gpt2"  byte-level BPE with merges, after a pre-tokenizer chosen by
 *           tokenizer.ggml.pre (default, gpt-2, smollm, llama-bpe/llama3,
 *           qwen2 and their aliases);
 *   "llama" SentencePiece BPE with scores, byte fallback (<0xXX> tokens),
 *           optional space prefix, spaces written as U+2581.
 * Token ids equal llama.cpp's llama_tokenize() for the same text and flags,
 * special and control tokens included; pieces equal llama_token_to_piece().
 *
 * The vocabulary is read IN PLACE from the GGUF header bytes (tok_vocab holds
 * pointers to the arrays exactly as GGUF stores them); the tokenizer adds
 * compact indexes: a 4-byte offset and a 1-byte attribute per token, an
 * open-addressing hash of token bytes -> id (about 2 slots per token) and, for
 * BPE, a hash of merge pairs -> rank, all in one allocation.  Gemma 3's
 * 262,144 tokens cost 3.3 MiB (a 4 MiB block under the guest's allocator,
 * which rounds blocks up to powers of two).  The header must outlive the
 * tokenizer.
 *
 * Every input is untrusted: arrays are validated against the byte counts
 * given, ids against the vocabulary size, and per-call memory is bounded by
 * TOK_MAX_TEXT_LEN.  Errors are negative TOK_ERR_* codes (tokenizer_strerror).
 *
 * Known differences from llama.cpp, all on inputs llama.cpp itself mishandles:
 *   - text whose lenient UTF-8 decoding yields a codepoint above U+10FFFF
 *     (bytes F4 90.. or F5..F7 leads): llama.cpp throws, BPE here reads U+FFFD;
 *   - empty token strings ("[EMPTY_<id>]" in llama.cpp) are never matched
 *     from text (their piece is still "[EMPTY_<id>]");
 *   - among several EOT/FIM candidate tokens llama.cpp picks one in hash
 *     order, here the lowest id (the EOG set and all attributes agree);
 *   - model-name specific lstrip/rstrip attributes (phi-3, jina) are not set.
 */
#ifndef REALM_TOKENIZER_H
#define REALM_TOKENIZER_H

#include <stdint.h>

/* Longest text tokenizer_encode accepts, in bytes.  Per-call scratch memory
 * is at most ~100 bytes per input byte in the worst case (typical text: far
 * less), so this keeps a hostile prompt from inflating guest memory. */
#define TOK_MAX_TEXT_LEN (256u * 1024u)

/* Largest vocabulary accepted (the hash table needs 2 slots per token). */
#define TOK_MAX_VOCAB (1u << 24)

enum tok_kind {
    TOK_KIND_BPE = 1,   /* tokenizer.ggml.model "gpt2" */
    TOK_KIND_SPM = 2,   /* tokenizer.ggml.model "llama" */
};

enum tok_error {
    TOK_OK = 0,
    TOK_ERR_BAD_ARG = -1,           /* NULL pointer or bad flag */
    TOK_ERR_BAD_VOCAB = -2,         /* malformed array, too few scores/types, empty vocabulary */
    TOK_ERR_DUPLICATE_TOKEN = -3,   /* two tokens with the same bytes (llama.cpp refuses too) */
    TOK_ERR_UNKNOWN_MODEL = -4,     /* tokenizer.ggml.model other than gpt2 / llama */
    TOK_ERR_UNKNOWN_PRE = -5,       /* tokenizer.ggml.pre this tokenizer does not implement */
    TOK_ERR_NO_MERGES = -6,         /* BPE vocabulary without tokenizer.ggml.merges */
    TOK_ERR_MISSING_SPECIAL = -7,   /* add_bos/add_eos set but no valid BOS/EOS id */
    TOK_ERR_NO_MEMORY = -8,
    TOK_ERR_TOO_LONG = -9,          /* text longer than TOK_MAX_TEXT_LEN */
    TOK_ERR_BUFFER_TOO_SMALL = -10, /* output buffer too small: *n_out says how many are needed */
    TOK_ERR_BAD_TOKEN = -11,        /* token id outside the vocabulary */
    TOK_ERR_NO_BYTE_TOKEN = -12,    /* SPM byte fallback needs a byte token the vocabulary lacks */
};

/* Token attributes (llama.cpp's llama_token_attr bits; derived from
 * tokenizer.ggml.token_type and llama.cpp's by-text special-token rules). */
enum tok_attr {
    TOK_ATTR_UNKNOWN      = 1 << 0,
    TOK_ATTR_UNUSED       = 1 << 1,
    TOK_ATTR_NORMAL       = 1 << 2,
    TOK_ATTR_CONTROL      = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE         = 1 << 5,
};

/* A GGUF array of strings, in place: `count` items, each a little-endian u64
 * byte length followed by that many bytes, all within `size` bytes from
 * `data`.  data == NULL means the key is absent. */
typedef struct {
    const uint8_t *data;
    uint32_t size;
    uint32_t count;
} tok_gguf_strings;

/* GGUF value type ids used by tok_gguf_numbers.type. */
enum { TOK_GGUF_I32 = 5, TOK_GGUF_F32 = 6 };

/* A GGUF array of 32-bit numbers, in place (little-endian, any alignment):
 * `count` items of `type` (TOK_GGUF_F32 or TOK_GGUF_I32) at `data`, which
 * must hold count * 4 readable bytes.  data == NULL means the key is absent. */
typedef struct {
    const uint8_t *data;
    uint32_t count;
    uint32_t type;
} tok_gguf_numbers;

/* The tokenizer.* metadata of a GGUF file.  Fill it with tok_vocab_defaults()
 * first, then set what the file has: ids as stored (u32 values, -1 when the key
 * is absent), flags 0/1 (-1 when absent).  Rules for absent or out-of-range
 * values are llama.cpp's (e.g. SPM defaults BOS=1, EOS=2, UNK=0, add_bos=1,
 * add_space_prefix=1; BPE defaults BOS=EOS=11, add_bos=0 except llama3). */
typedef struct {
    int kind;                      /* TOK_KIND_*, see tok_kind_from_model() */
    const char *pre;               /* tokenizer.ggml.pre (BPE); NULL or len 0 = absent */
    uint32_t pre_len;
    tok_gguf_strings tokens;       /* tokenizer.ggml.tokens (required) */
    tok_gguf_strings merges;       /* tokenizer.ggml.merges (required for BPE) */
    tok_gguf_numbers scores;       /* tokenizer.ggml.scores (F32 or I32) */
    tok_gguf_numbers token_types;  /* tokenizer.ggml.token_type (I32) */
    int64_t bos_id, eos_id, eot_id, eom_id, unk_id, sep_id, pad_id, mask_id;
    int64_t fim_pre_id, fim_suf_id, fim_mid_id, fim_pad_id, fim_rep_id, fim_sep_id;
    int32_t add_bos, add_eos, add_space_prefix;
} tok_vocab;

#define TOK_MAX_EOG 32

/* A tokenizer.  Members are read-only for callers; the resolved special ids
 * (-1 when none) and flags are the ones llama.cpp would use. */
typedef struct tokenizer {
    int kind;
    int pre;                       /* internal pre-tokenizer id (BPE) */
    uint32_t n_vocab;
    int32_t bos_id, eos_id, eot_id, eom_id, unk_id, sep_id, pad_id, mask_id;
    int32_t fim_pre_id, fim_suf_id, fim_mid_id, fim_pad_id, fim_rep_id, fim_sep_id;
    int add_bos, add_eos, add_space_prefix, ignore_merges;
    /* end-of-generation tokens (EOS, EOT, EOM and llama.cpp's by-text list) */
    int32_t eog[TOK_MAX_EOG];
    uint32_t n_eog;

    /* private */
    void *arena;                   /* one block holding tok_off, tok_hash, merge_off, merge_hash, attr */
    const uint8_t *tok_data;       /* tokens array bytes */
    uint32_t *tok_off;             /* [n_vocab] offset of each token's bytes in tok_data */
    uint8_t *attr;                 /* [n_vocab] TOK_ATTR_* */
    const uint8_t *scores;         /* raw scores array or NULL */
    uint32_t scores_type;
    uint32_t *tok_hash;            /* token id + 1, 0 = empty */
    uint32_t tok_hash_mask;
    const uint8_t *merge_data;     /* merges array bytes */
    uint32_t n_merges;
    uint32_t *merge_off;           /* [n_merges] offset of each merge's bytes */
    uint32_t *merge_hash;          /* rank + 1, 0 = empty */
    uint32_t merge_hash_mask;
    int32_t *special;              /* control/user-defined/unknown ids, longest text first */
    uint32_t n_special;
    int32_t byte_tok[256];         /* BPE: token of each raw byte; SPM: its <0xXX> token; -1 */
} tokenizer;

/* Set every id to -1, every flag to -1, every array to absent. */
void tok_vocab_defaults(tok_vocab *v);

/* TOK_KIND_BPE for "gpt2", TOK_KIND_SPM for "llama", else TOK_ERR_UNKNOWN_MODEL. */
int tok_kind_from_model(const char *model, uint32_t len);

/* Build the tokenizer's indexes.  Returns TOK_OK or a TOK_ERR_* code (then
 * nothing needs freeing).  tokenizer_free() releases a successful init. */
int tokenizer_init(tokenizer *t, const tok_vocab *v);
void tokenizer_free(tokenizer *t);

/* Tokenize len bytes of text (any bytes; invalid UTF-8 is handled as
 * llama.cpp does).  add_special: prepend BOS / append EOS when the vocabulary
 * asks for them.  parse_special: turn the text of control tokens (e.g.
 * "<|im_start|>") into those tokens; user-defined tokens are always matched.
 * Writes up to out_max ids to out and the total count to *n_out.  Returns
 * TOK_OK, TOK_ERR_BUFFER_TOO_SMALL when the total exceeds out_max (the first
 * out_max ids are written; call again with *n_out slots), or another error. */
int tokenizer_encode(const tokenizer *t, const char *text, uint32_t len,
                     int add_special, int parse_special,
                     int32_t *out, uint32_t out_max, uint32_t *n_out);

/* The bytes of token id, as llama_token_to_piece(..., lstrip=0, special):
 * byte-level BPE tokens decoded to raw bytes, U+2581 turned back into spaces
 * for SPM, <0xXX> tokens as one byte; control and unknown tokens render as
 * their text when `special`, else as nothing.  Returns the piece's length
 * (its bytes are written when it fits in max; the buffer is unspecified
 * otherwise) or TOK_ERR_BAD_TOKEN.  Pieces may split a UTF-8 character across
 * tokens: stream them through tok_utf8_stream. */
int32_t tokenizer_piece(const tokenizer *t, int32_t id, int special, char *buf, uint32_t max);

/* TOK_ATTR_* bits of a token (0 for ids outside the vocabulary). */
uint32_t tokenizer_attr(const tokenizer *t, int32_t id);

/* 1 when generation should stop at this token (llama_vocab_is_eog). */
int tokenizer_is_eog(const tokenizer *t, int32_t id);

/* The id of a token from its exact bytes, or -1. */
int32_t tokenizer_find(const tokenizer *t, const char *text, uint32_t len);

/* A short description of a TOK_ERR_* code. */
const char *tokenizer_strerror(int code);

/* Streaming detokenization: feed pieces as they come, get back only whole
 * UTF-8 characters.  A trailing incomplete-but-valid UTF-8 prefix (at most 3
 * bytes) is held until the next feed; bytes that can never form a valid
 * character are passed through, so the concatenated output always equals the
 * concatenated input once flushed.  Zero-initialize before use. */
typedef struct {
    uint8_t pending[3];
    uint32_t n_pending;
} tok_utf8_stream;

/* Append n bytes; writes the completed prefix to out (room for n + 3 bytes)
 * and returns its length. */
uint32_t tok_utf8_stream_feed(tok_utf8_stream *s, const char *in, uint32_t n, char *out);

/* End of stream: writes the held bytes (at most 3) to out, returns their count. */
uint32_t tok_utf8_stream_flush(tok_utf8_stream *s, char *out);

#endif /* REALM_TOKENIZER_H */
