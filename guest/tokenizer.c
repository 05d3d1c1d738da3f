/* tokenizer.c -- vocabulary indexes, special tokens, encode/decode entry points.
 * The BPE and SPM algorithms live in tokenizer_bpe.c / tokenizer_spm.c;
 * this file reproduces llama.cpp's llama_vocab::impl::load() rules for the
 * special tokens and its tokenizer_st_partition() / token_to_piece(). */
#include <stdlib.h>

#include "tokenizer_internal.h"
#include "unicode.h"

/* ---- token hash: bytes -> id ---- */

/* Both hashes use linear probing at load <= 1/2, where probe runs stay short
 * (tens of slots for Gemma 3's vocabulary).  A vocabulary crafted to collide
 * would make them long, so inserts refuse a run longer than MAX_PROBES and
 * lookups stop there: every operation is bounded whatever the file holds. */
#define MAX_PROBES 1024u

static uint32_t hash_slots(uint32_t n)
{
    uint32_t size = 16;
    while (size < 2 * n) size *= 2;
    return size;
}

int32_t tok_lookup(const tokenizer *t, const uint8_t *p, uint32_t n)
{
    uint32_t i = tok_hash_final(tok_hash_update(TOK_HASH_SEED, p, n)) & t->tok_hash_mask;
    for (uint32_t probe = 0; probe < MAX_PROBES; probe++, i = (i + 1) & t->tok_hash_mask) {
        uint32_t slot = t->tok_hash[i];
        if (!slot) return -1;
        int32_t id = (int32_t)(slot - 1);
        if (tok_len(t, id) == n && memcmp(tok_text(t, id), p, n) == 0) return id;
    }
    return -1;
}

int32_t tokenizer_find(const tokenizer *t, const char *text, uint32_t len)
{
    if (!t || !t->tok_hash || (!text && len)) return -1;
    return tok_lookup(t, (const uint8_t *)text, len);
}

/* ---- merges: "left right" strings -> rank ---- */

static const uint8_t *merge_text(const tokenizer *t, uint32_t rank, uint32_t *len)
{
    *len = (uint32_t)tok_read_u64(t->merge_data + t->merge_off[rank] - 8);
    return t->merge_data + t->merge_off[rank];
}

/* llama.cpp splits a merge at its first space after the first byte; a merge
 * without one pairs two empty strings, which no symbol pair ever matches. */
static uint32_t merge_split(const uint8_t *m, uint32_t len)
{
    for (uint32_t i = 1; i < len; i++)
        if (m[i] == ' ') return i;
    return 0;
}

int32_t tok_merge_rank(const tokenizer *t, const uint8_t *l, uint32_t ln, const uint8_t *r, uint32_t rn)
{
    static const uint8_t space = ' ';
    uint32_t h = tok_hash_update(TOK_HASH_SEED, l, ln);
    h = tok_hash_update(h, &space, 1);
    h = tok_hash_final(tok_hash_update(h, r, rn));
    uint32_t i = h & t->merge_hash_mask;
    for (uint32_t probe = 0; probe < MAX_PROBES; probe++, i = (i + 1) & t->merge_hash_mask) {
        uint32_t slot = t->merge_hash[i];
        if (!slot) return -1;
        uint32_t len, rank = slot - 1;
        const uint8_t *m = merge_text(t, rank, &len);
        uint32_t sp = merge_split(m, len);
        if (sp == ln && len - sp - 1 == rn && memcmp(m, l, ln) == 0 && memcmp(m + sp + 1, r, rn) == 0)
            return (int32_t)rank;
    }
    return -1;
}

/* ---- reading GGUF arrays in place ---- */

/* Offsets of the `count` strings' bytes into off[]; every length is checked
 * against the array's size. */
static int index_strings(const tok_gguf_strings *a, uint32_t *off)
{
    uint32_t pos = 0;
    for (uint32_t i = 0; i < a->count; i++) {
        if (a->size - pos < 8) return TOK_ERR_BAD_VOCAB;
        uint64_t len = tok_read_u64(a->data + pos);
        pos += 8;
        if (len > a->size - pos) return TOK_ERR_BAD_VOCAB;
        off[i] = pos;
        pos += (uint32_t)len;
    }
    return TOK_OK;
}

static int check_numbers(const tok_gguf_numbers *a, uint32_t n_vocab, int allow_f32)
{
    if (!a->data) return TOK_OK;
    if (a->count < n_vocab) return TOK_ERR_BAD_VOCAB;  /* llama.cpp: index out of bounds */
    if (a->type == TOK_GGUF_I32 || (allow_f32 && a->type == TOK_GGUF_F32)) return TOK_OK;
    return TOK_ERR_BAD_VOCAB;
}

/* ---- special tokens found by their text (llama.cpp's load() lists) ---- */

static const char *const EOT_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
    "<end_of_utterance>", NULL};
static const char *const EOM_TEXTS[] = {"<|eom_id|>", NULL};
static const char *const FIM_PRE_TEXTS[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
    "<PRE>", "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const FIM_SUF_TEXTS[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "hole\xEF\xBD\x9C>",
    "<SUF>", "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const FIM_MID_TEXTS[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
    "<MID>", "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const FIM_PAD_TEXTS[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const FIM_REP_TEXTS[] = {
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL};
static const char *const FIM_SEP_TEXTS[] = {"<|file_sep|>", NULL};
static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>", "[e~[", NULL};
/* gpt-oss: always rendered, never special */
static const char *const USER_DEFINED_TEXTS[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};

static int32_t find_text(const tokenizer *t, const char *s)
{
    return tok_lookup(t, (const uint8_t *)s, (uint32_t)strlen(s));
}

/* When *id is unset, the lowest-id token whose text is in the list; it becomes a control token. */
static void detect_special(tokenizer *t, int32_t *id, const char *const *texts)
{
    if (*id >= 0) return;
    for (; *texts; texts++) {
        int32_t found = find_text(t, *texts);
        if (found >= 0 && (*id < 0 || found < *id)) *id = found;
    }
    if (*id >= 0) t->attr[*id] |= TOK_ATTR_CONTROL;
}

/* Control tokens named "...unused..." are unused ones (llama.cpp's auto-detection). */
static void mark_unused(tokenizer *t)
{
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->attr[id] & TOK_ATTR_CONTROL)) continue;
        const uint8_t *s = tok_text(t, (int32_t)id);
        uint32_t len = tok_len(t, (int32_t)id);
        for (uint32_t i = 0; i + 6 <= len; i++)
            if (memcmp(s + i, "unused", 6) == 0) {
                t->attr[id] |= TOK_ATTR_UNUSED;
                break;
            }
    }
}

static int is_eog_id(const tokenizer *t, int32_t id)
{
    for (uint32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return 1;
    return 0;
}

static void add_eog(tokenizer *t, int32_t id)
{
    if (id >= 0 && !is_eog_id(t, id) && t->n_eog < TOK_MAX_EOG) t->eog[t->n_eog++] = id;
}

static void remove_eog(tokenizer *t, int32_t id)
{
    for (uint32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) {
            t->eog[i] = t->eog[--t->n_eog];
            return;
        }
}

static int32_t eog_with_text(const tokenizer *t, const char *s)
{
    int32_t id = find_text(t, s);
    return id >= 0 && is_eog_id(t, id) ? id : -1;
}

static void resolve_eog(tokenizer *t)
{
    add_eog(t, t->fim_pad_id);
    add_eog(t, t->fim_rep_id);
    add_eog(t, t->fim_sep_id);
    for (const char *const *s = EOG_TEXTS; *s; s++) {
        int32_t id = find_text(t, *s);
        if (id < 0) continue;
        add_eog(t, id);
        t->attr[id] |= TOK_ATTR_CONTROL;
    }
    for (const char *const *s = USER_DEFINED_TEXTS; *s; s++) {
        int32_t id = find_text(t, *s);
        if (id >= 0) t->attr[id] = TOK_ATTR_USER_DEFINED;
    }
    add_eog(t, t->eos_id);
    add_eog(t, t->eot_id);
    add_eog(t, t->eom_id);
    /* o200k_harmony / solar-open: "<|end|>" is not an end of generation there */
    int32_t end = eog_with_text(t, "<|end|>");
    int has_call = eog_with_text(t, "<|call|>") >= 0 || eog_with_text(t, "<|calls|>") >= 0;
    if (end >= 0 && has_call && (eog_with_text(t, "<|return|>") >= 0 || eog_with_text(t, "<|flush|>") >= 0)) {
        remove_eog(t, end);
        t->attr[end] = TOK_ATTR_USER_DEFINED;
    }
    /* gemma4 / paddleocr: "</s>" is not one either */
    int32_t s_id = eog_with_text(t, "</s>");
    if (s_id >= 0 && eog_with_text(t, "<|tool_response>") >= 0) {
        remove_eog(t, s_id);
        t->attr[s_id] = TOK_ATTR_NORMAL;
    }
}

/* Control, user-defined and unknown tokens, longest text first (ties by id):
 * the order in which llama.cpp splits them out of the text. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int collect_special(tokenizer *t)
{
    uint32_t n = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++)
        n += (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) && tok_len(t, (int32_t)id);
    if (!n) return TOK_OK;
    uint64_t *keys = malloc((size_t)n * sizeof *keys);
    t->special = malloc((size_t)n * sizeof *t->special);
    if (!keys || !t->special) {
        free(keys);
        return TOK_ERR_NO_MEMORY;
    }
    uint32_t k = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        uint32_t len = tok_len(t, (int32_t)id);
        if ((t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) && len)
            keys[k++] = ((uint64_t)(UINT32_MAX - len) << 32) | id;
    }
    qsort(keys, n, sizeof *keys, cmp_u64);
    for (uint32_t i = 0; i < n; i++) t->special[i] = (int32_t)(keys[i] & 0xFFFFFFFFu);
    t->n_special = n;
    free(keys);
    return TOK_OK;
}

/* ---- init ---- */

void tok_vocab_defaults(tok_vocab *v)
{
    memset(v, 0, sizeof *v);
    v->bos_id = v->eos_id = v->eot_id = v->eom_id = v->unk_id = v->sep_id = v->pad_id = v->mask_id = -1;
    v->fim_pre_id = v->fim_suf_id = v->fim_mid_id = v->fim_pad_id = v->fim_rep_id = v->fim_sep_id = -1;
    v->add_bos = v->add_eos = v->add_space_prefix = -1;
}

int tok_kind_from_model(const char *model, uint32_t len)
{
    if (model && len == 4 && memcmp(model, "gpt2", 4) == 0) return TOK_KIND_BPE;
    if (model && len == 5 && memcmp(model, "llama", 5) == 0) return TOK_KIND_SPM;
    return TOK_ERR_UNKNOWN_MODEL;
}

/* A default id is dropped when outside the vocabulary; a file id replaces it
 * only when inside (llama.cpp keeps the default otherwise). */
static int32_t resolve_id(int32_t def, int64_t file, uint32_t n_vocab)
{
    if (def >= 0 && (uint32_t)def >= n_vocab) def = -1;
    if (file >= 0 && file < (int64_t)n_vocab) return (int32_t)file;
    return def;
}

static int insert_tokens(tokenizer *t)
{
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        uint32_t len = tok_len(t, (int32_t)id);
        if (!len) continue;  /* llama.cpp renames empty tokens "[EMPTY_<id>]" */
        const uint8_t *p = tok_text(t, (int32_t)id);
        uint32_t i = tok_hash_final(tok_hash_update(TOK_HASH_SEED, p, len)) & t->tok_hash_mask, probe = 0;
        for (; t->tok_hash[i]; i = (i + 1) & t->tok_hash_mask) {
            int32_t other = (int32_t)(t->tok_hash[i] - 1);
            if (tok_len(t, other) == len && memcmp(tok_text(t, other), p, len) == 0)
                return TOK_ERR_DUPLICATE_TOKEN;
            if (++probe == MAX_PROBES) return TOK_ERR_BAD_VOCAB;
        }
        t->tok_hash[i] = id + 1;
    }
    return TOK_OK;
}

static int insert_merges(tokenizer *t)
{
    for (uint32_t rank = 0; rank < t->n_merges; rank++) {
        uint32_t len;
        const uint8_t *m = merge_text(t, rank, &len);
        uint32_t sp = merge_split(m, len);
        if (!sp || sp + 1 == len) continue;  /* an empty side never matches */
        /* one walk finds a repeat (the same text is the same pair: first rank
         * wins) or the free slot; tok_merge_rank hashes "l r" alike */
        uint32_t i = tok_hash_final(tok_hash_update(TOK_HASH_SEED, m, len)) & t->merge_hash_mask, probe = 0;
        for (;; i = (i + 1) & t->merge_hash_mask) {
            if (!t->merge_hash[i]) {
                t->merge_hash[i] = rank + 1;
                break;
            }
            uint32_t other_len;
            const uint8_t *other = merge_text(t, t->merge_hash[i] - 1, &other_len);
            if (other_len == len && memcmp(other, m, len) == 0) break;
            if (++probe == MAX_PROBES) return TOK_ERR_BAD_VOCAB;
        }
    }
    return TOK_OK;
}

static void init_attrs(tokenizer *t, const tok_vocab *v)
{
    /* tokenizer.ggml.token_type: llama_token_type -> llama_token_attr */
    static const uint8_t type_attr[7] = {0, TOK_ATTR_NORMAL, TOK_ATTR_UNKNOWN, TOK_ATTR_CONTROL,
                                         TOK_ATTR_USER_DEFINED, TOK_ATTR_UNUSED, TOK_ATTR_BYTE};
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        if (!v->token_types.data) {
            t->attr[id] = TOK_ATTR_NORMAL;
            continue;
        }
        int32_t type = (int32_t)tok_read_u32(v->token_types.data + (size_t)id * 4);
        t->attr[id] = type >= 0 && type < 7 ? type_attr[type] : 0;
    }
}

/* All the per-token and per-merge indexes live in one allocation: fewer
 * allocator headers and size-class roundings (the guest's allocator rounds
 * every block up to a power of two). */
static int alloc_indexes(tokenizer *t)
{
    uint32_t tok_slots = hash_slots(t->n_vocab);
    uint32_t merge_slots = t->kind == TOK_KIND_BPE ? hash_slots(t->n_merges) : 0;
    uint64_t words = (uint64_t)t->n_vocab + tok_slots + t->n_merges + merge_slots;
    uint64_t bytes = words * 4 + t->n_vocab;
    if (bytes > SIZE_MAX) return TOK_ERR_NO_MEMORY;
    uint32_t *w = malloc((size_t)bytes);
    if (!w) return TOK_ERR_NO_MEMORY;
    t->arena = w;
    t->tok_off = w;
    t->tok_hash = w += t->n_vocab;
    t->merge_off = w += tok_slots;
    t->merge_hash = w += t->n_merges;
    t->attr = (uint8_t *)(w + merge_slots);
    memset(t->tok_hash, 0, (size_t)tok_slots * 4);
    memset(t->merge_hash, 0, (size_t)merge_slots * 4);
    t->tok_hash_mask = tok_slots - 1;
    t->merge_hash_mask = merge_slots ? merge_slots - 1 : 0;
    return TOK_OK;
}

static void init_byte_tokens(tokenizer *t)
{
    static const char hex[] = "0123456789ABCDEF";
    for (uint32_t b = 0; b < 256; b++) {
        uint8_t one = (uint8_t)b;
        int32_t id = -1;
        if (t->kind == TOK_KIND_SPM) {
            uint8_t name[6] = {'<', '0', 'x', (uint8_t)hex[b >> 4], (uint8_t)hex[b & 15], '>'};
            id = tok_lookup(t, name, 6);
        }
        t->byte_tok[b] = id >= 0 ? id : tok_lookup(t, &one, 1);
    }
}

int tokenizer_init(tokenizer *t, const tok_vocab *v)
{
    if (!t || !v) return TOK_ERR_BAD_ARG;
    memset(t, 0, sizeof *t);
    if (v->kind != TOK_KIND_BPE && v->kind != TOK_KIND_SPM) return TOK_ERR_UNKNOWN_MODEL;
    if (!v->tokens.data || v->tokens.count == 0 || v->tokens.count > TOK_MAX_VOCAB) return TOK_ERR_BAD_VOCAB;
    if (v->add_bos > 1 || v->add_eos > 1 || v->add_space_prefix > 1) return TOK_ERR_BAD_ARG;
    t->kind = v->kind;
    t->n_vocab = v->tokens.count;

    int pre_add_bos = 0, rc;
    if (t->kind == TOK_KIND_BPE) {
        if ((rc = tok_bpe_pre_from_name(v->pre, v->pre_len, &t->pre, &t->ignore_merges, &pre_add_bos)))
            return rc;
        if (!v->merges.data) return TOK_ERR_NO_MERGES;
    }
    if ((rc = check_numbers(&v->scores, t->n_vocab, 1)) || (rc = check_numbers(&v->token_types, t->n_vocab, 0)))
        return rc;

    /* each string needs at least its 8-byte length: bounds the counts before allocating */
    if (v->tokens.count > v->tokens.size / 8) return TOK_ERR_BAD_VOCAB;
    if (t->kind == TOK_KIND_BPE) {
        if (v->merges.count > v->merges.size / 8) return TOK_ERR_BAD_VOCAB;
        t->merge_data = v->merges.data;
        t->n_merges = v->merges.count;
    }
    t->tok_data = v->tokens.data;
    t->scores = v->scores.data;
    t->scores_type = v->scores.type;
    if ((rc = alloc_indexes(t)) || (rc = index_strings(&v->tokens, t->tok_off))) goto fail;
    init_attrs(t, v);
    if ((rc = insert_tokens(t))) goto fail;
    if (t->kind == TOK_KIND_BPE && ((rc = index_strings(&v->merges, t->merge_off)) || (rc = insert_merges(t))))
        goto fail;

    /* defaults by model, then the file's values */
    int spm = t->kind == TOK_KIND_SPM;
    uint32_t n = t->n_vocab;
    t->bos_id = resolve_id(spm ? 1 : 11, v->bos_id, n);
    t->eos_id = resolve_id(spm ? 2 : 11, v->eos_id, n);
    t->unk_id = resolve_id(spm ? 0 : -1, v->unk_id, n);
    t->eot_id = resolve_id(-1, v->eot_id, n);
    t->eom_id = resolve_id(-1, v->eom_id, n);
    t->sep_id = resolve_id(-1, v->sep_id, n);
    t->pad_id = resolve_id(-1, v->pad_id, n);
    t->mask_id = resolve_id(-1, v->mask_id, n);
    t->fim_pre_id = resolve_id(-1, v->fim_pre_id, n);
    t->fim_suf_id = resolve_id(-1, v->fim_suf_id, n);
    t->fim_mid_id = resolve_id(-1, v->fim_mid_id, n);
    t->fim_pad_id = resolve_id(-1, v->fim_pad_id, n);
    t->fim_rep_id = resolve_id(-1, v->fim_rep_id, n);
    t->fim_sep_id = resolve_id(-1, v->fim_sep_id, n);
    t->add_bos = v->add_bos >= 0 ? v->add_bos : (spm ? 1 : pre_add_bos);
    t->add_eos = v->add_eos >= 0 ? v->add_eos : 0;
    t->add_space_prefix = v->add_space_prefix >= 0 ? v->add_space_prefix : spm;
    rc = TOK_ERR_MISSING_SPECIAL;
    if ((t->add_bos && t->bos_id < 0) || (t->add_eos && t->eos_id < 0)) goto fail;

    detect_special(t, &t->eot_id, EOT_TEXTS);
    detect_special(t, &t->eom_id, EOM_TEXTS);
    detect_special(t, &t->fim_pre_id, FIM_PRE_TEXTS);
    detect_special(t, &t->fim_suf_id, FIM_SUF_TEXTS);
    detect_special(t, &t->fim_mid_id, FIM_MID_TEXTS);
    detect_special(t, &t->fim_pad_id, FIM_PAD_TEXTS);
    detect_special(t, &t->fim_rep_id, FIM_REP_TEXTS);
    detect_special(t, &t->fim_sep_id, FIM_SEP_TEXTS);
    mark_unused(t);
    resolve_eog(t);
    if ((rc = collect_special(t))) goto fail;
    init_byte_tokens(t);
    return TOK_OK;
fail:
    tokenizer_free(t);
    return rc;
}

void tokenizer_free(tokenizer *t)
{
    if (!t) return;
    free(t->arena);
    free(t->special);
    memset(t, 0, sizeof *t);
}

/* ---- encode ---- */

/* A piece of the text: raw bytes [start, start + len), or a special token. */
typedef struct {
    uint32_t start, len;
    int32_t id;  /* -1 for raw text */
} fragment;

typedef struct {
    fragment *f;
    uint32_t n, cap;
} fragments;

static int frag_push(fragments *fs, uint32_t start, uint32_t len, int32_t id)
{
    if (fs->n == fs->cap) {
        uint32_t cap = fs->cap ? fs->cap * 2 : 16;
        fragment *f = realloc(fs->f, (size_t)cap * sizeof *f);
        if (!f) return TOK_ERR_NO_MEMORY;
        fs->f = f;
        fs->cap = cap;
    }
    fs->f[fs->n++] = (fragment){start, len, id};
    return TOK_OK;
}

/* Finding one special token in the text.  memchr + memcmp is fastest on real
 * text, but a periodic needle in a periodic text costs text x needle length;
 * once a needle has cost more than a few passes over the text, the search
 * finishes with Knuth-Morris-Pratt, so every needle costs linear time. */
typedef struct {
    const uint8_t *needle;
    uint32_t len;
    uint64_t work, limit;  /* bytes touched by the simple search, and its allowance */
    uint32_t *fail;        /* KMP failure table, built on the switch */
    uint32_t fail_cap;
    int kmp;
} search;

static void search_start(search *q, const uint8_t *needle, uint32_t len, uint32_t text_len)
{
    q->needle = needle;
    q->len = len;
    q->work = 0;
    q->limit = 4 * ((uint64_t)text_len + len);
    q->kmp = 0;
}

static int search_use_kmp(search *q)
{
    if (q->len > q->fail_cap) {
        uint32_t *f = realloc(q->fail, (size_t)q->len * sizeof *f);
        if (!f) return TOK_ERR_NO_MEMORY;
        q->fail = f;
        q->fail_cap = q->len;
    }
    const uint8_t *p = q->needle;
    q->fail[0] = 0;
    for (uint32_t i = 1, k = 0; i < q->len; i++) {
        while (k && p[i] != p[k]) k = q->fail[k - 1];
        if (p[i] == p[k]) k++;
        q->fail[i] = k;
    }
    q->kmp = 1;
    return TOK_OK;
}

/* First occurrence of the needle in hay[0..hn): its offset, -1 when none,
 * or a TOK_ERR_* (< -1). */
static int64_t search_find(search *q, const uint8_t *hay, uint32_t hn)
{
    const uint8_t *nd = q->needle;
    uint32_t nn = q->len;
    if (nn > hn) return -1;
    if (!q->kmp) {
        const uint8_t *p = hay, *last = hay + (hn - nn);
        while (p <= last) {
            const uint8_t *c = memchr(p, nd[0], (size_t)(last - p) + 1);
            if (!c) return -1;
            q->work += (uint64_t)(c - p) + nn;
            if (memcmp(c, nd, nn) == 0) return c - hay;
            p = c + 1;
            if (q->work > q->limit) {
                int rc = search_use_kmp(q);
                if (rc) return rc;
                int64_t at = search_find(q, p, (uint32_t)(hay + hn - p));
                return at < 0 ? at : at + (p - hay);
            }
        }
        return -1;
    }
    for (uint32_t i = 0, k = 0; i < hn; i++) {
        while (k && hay[i] != nd[k]) k = q->fail[k - 1];
        if (hay[i] == nd[k]) k++;
        if (k == nn) return (int64_t)i + 1 - nn;
    }
    return -1;
}

/* llama.cpp's tokenizer_st_partition: for each special token, longest first,
 * cut every occurrence out of the raw fragments left by the longer ones. */
static int partition(const tokenizer *t, const uint8_t *text, uint32_t len, int parse_special,
                     fragments *out)
{
    fragments cur = {0}, next = {0};
    search q = {0};
    int rc = frag_push(&cur, 0, len, -1);
    if (rc) return rc;
    /* a token can only occur if its first two bytes occur as a pair */
    uint8_t *pairs = calloc(8192 + 32, 1);
    if (!pairs) {
        free(cur.f);
        return TOK_ERR_NO_MEMORY;
    }
    uint8_t *bytes = pairs + 8192;
    for (uint32_t i = 0; i < len; i++) {
        bytes[text[i] >> 3] |= (uint8_t)(1u << (text[i] & 7));
        if (i + 1 < len) {
            uint32_t pair = (uint32_t)text[i] << 8 | text[i + 1];
            pairs[pair >> 3] |= (uint8_t)(1u << (pair & 7));
        }
    }

    for (uint32_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (!parse_special && (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) continue;
        const uint8_t *tt = tok_text(t, id);
        uint32_t tl = tok_len(t, id);
        if (tl > len || !(bytes[tt[0] >> 3] & (1u << (tt[0] & 7)))) continue;
        if (tl > 1) {
            uint32_t pair = (uint32_t)tt[0] << 8 | tt[1];
            if (!(pairs[pair >> 3] & (1u << (pair & 7)))) continue;
        }
        /* the first raw fragment holding the token; most tokens are in none */
        search_start(&q, tt, tl, len);
        uint32_t first = 0;
        int64_t at = -1;
        for (; first < cur.n && at == -1; first++)
            if (cur.f[first].id < 0) at = search_find(&q, text + cur.f[first].start, cur.f[first].len);
        if (at < -1) rc = (int)at;
        if (rc) break;
        if (at < 0) continue;
        first--;
        /* rebuild the list from there, cutting every occurrence out */
        next.n = 0;
        for (uint32_t i = 0; i < cur.n && !rc; i++) {
            fragment f = cur.f[i];
            if (f.id >= 0 || i < first) {
                rc = frag_push(&next, f.start, f.len, f.id);
                continue;
            }
            uint32_t pos = f.start, end = f.start + f.len;
            while (!rc && (at = search_find(&q, text + pos, end - pos)) >= 0) {
                if (at > 0) rc = frag_push(&next, pos, (uint32_t)at, -1);
                if (!rc) rc = frag_push(&next, 0, 0, id);
                pos += (uint32_t)at + tl;
            }
            if (!rc && at < -1) rc = (int)at;
            if (!rc && pos < end) rc = frag_push(&next, pos, end - pos, -1);
        }
        if (rc) break;
        fragments tmp = cur;
        cur = next;
        next = tmp;
    }
    free(pairs);
    free(next.f);
    free(q.fail);
    if (rc) {
        free(cur.f);
        return rc;
    }
    *out = cur;
    return TOK_OK;
}

int tokenizer_encode(const tokenizer *t, const char *text, uint32_t len,
                     int add_special, int parse_special,
                     int32_t *out, uint32_t out_max, uint32_t *n_out)
{
    if (n_out) *n_out = 0;
    if (!t || !t->tok_hash || !n_out || (!text && len) || (!out && out_max)) return TOK_ERR_BAD_ARG;
    if (len > TOK_MAX_TEXT_LEN) return TOK_ERR_TOO_LONG;
    const uint8_t *s = (const uint8_t *)text;
    tok_out o = {out, out_max, 0};
    fragments fs = {0};
    int rc = len ? partition(t, s, len, parse_special, &fs) : TOK_OK;
    if (rc) return rc;

    tok_scratch scratch = {0};
    if (add_special && t->add_bos) tok_emit(&o, t->bos_id);
    int prev_special = 1;  /* SPM: a space prefix goes before the first text */
    for (uint32_t i = 0; i < fs.n && !rc; i++) {
        const fragment *f = &fs.f[i];
        if (f->id >= 0) {
            tok_emit(&o, f->id);
            prev_special = 1;
        } else if (t->kind == TOK_KIND_SPM) {
            rc = tok_spm_encode(t, &scratch, s + f->start, f->len, t->add_space_prefix && prev_special, &o);
            prev_special = 0;
        } else {
            rc = tok_bpe_encode(t, &scratch, s + f->start, f->len, &o);
        }
    }
    if (!rc && add_special && t->add_eos) tok_emit(&o, t->eos_id);
    tok_scratch_free(&scratch);
    free(fs.f);
    if (rc) return rc;
    *n_out = o.n;
    return o.n > out_max ? TOK_ERR_BUFFER_TOO_SMALL : TOK_OK;
}

/* ---- pieces ---- */

typedef struct {
    char *buf;
    uint32_t max, n;
} writer;

static void put(writer *w, const void *p, uint32_t n)
{
    if (n && n <= w->max && w->n <= w->max - n) memcpy(w->buf + w->n, p, n);
    w->n += n;
}

/* The byte of a byte token: llama.cpp parses its text[3..5) with strtol(.., 16). */
static uint8_t token_byte(const uint8_t *s, uint32_t len)
{
    uint32_t i = 3, end = len < 5 ? len : 5;
    int neg = 0, v = 0;
    while (i < end && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r'))) i++;
    if (i < end && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    for (; i < end; i++) {
        int d = s[i] >= '0' && s[i] <= '9' ? s[i] - '0'
              : s[i] >= 'a' && s[i] <= 'f' ? s[i] - 'a' + 10
              : s[i] >= 'A' && s[i] <= 'F' ? s[i] - 'A' + 10 : -1;
        if (d < 0) break;
        v = v * 16 + d;
    }
    return (uint8_t)(neg ? -v : v);
}

/* Byte-level BPE text back to bytes (llama_decode_text): each codepoint of
 * GPT-2's alphabet is one byte; anything else becomes "[UNK_BYTE_0x<hex>" +
 * the whole token text + "]". */
static void decode_bpe(writer *w, const uint8_t *s, uint32_t len)
{
    static const char hex[] = "0123456789abcdef";
    for (uint32_t p = 0; p < len; ) {
        uint32_t cpt;
        p = unicode_decode_utf8(s, p, len, &cpt);
        int b = unicode_utf8_to_byte(cpt);
        if (b >= 0) {
            uint8_t byte = (uint8_t)b;
            put(w, &byte, 1);
            continue;
        }
        uint8_t u[4];
        uint32_t k = unicode_encode_utf8(cpt, u);
        put(w, "[UNK_BYTE_0x", 12);
        for (uint32_t i = 0; i < k; i++) {
            char h[2] = {hex[u[i] >> 4], hex[u[i] & 15]};
            put(w, h, 2);
        }
        put(w, s, len);
        put(w, "]", 1);
    }
}

/* SPM text with U+2581 back to spaces. */
static void unescape_spm(writer *w, const uint8_t *s, uint32_t len)
{
    uint32_t from = 0;
    for (uint32_t i = 0; i + 2 < len; ) {
        if (s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
            put(w, s + from, i - from);
            put(w, " ", 1);
            i += 3;
            from = i;
        } else {
            i++;
        }
    }
    put(w, s + from, len - from);
}

int32_t tokenizer_piece(const tokenizer *t, int32_t id, int special, char *buf, uint32_t max)
{
    if (!t || !t->attr || (!buf && max)) return TOK_ERR_BAD_ARG;
    if (id < 0 || (uint32_t)id >= t->n_vocab) return TOK_ERR_BAD_TOKEN;
    uint8_t attr = t->attr[id];
    if (!special && (attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL))) return 0;

    const uint8_t *s = tok_text(t, id);
    uint32_t len = tok_len(t, id);
    char empty[24];
    if (!len) {  /* llama.cpp's name for an empty token */
        uint32_t n = 0, v = (uint32_t)id;
        char digits[10];
        do digits[n++] = (char)('0' + v % 10); while ((v /= 10));
        memcpy(empty, "[EMPTY_", 7);
        for (uint32_t i = 0; i < n; i++) empty[7 + i] = digits[n - 1 - i];
        empty[7 + n] = ']';
        s = (const uint8_t *)empty;
        len = 8 + n;
    }

    writer w = {buf, max, 0};
    if (attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) {
        put(&w, s, len);
    } else if (attr & TOK_ATTR_NORMAL) {
        if (t->kind == TOK_KIND_SPM) unescape_spm(&w, s, len);
        else decode_bpe(&w, s, len);
    } else if (attr & TOK_ATTR_BYTE) {
        uint8_t b = token_byte(s, len);
        put(&w, &b, 1);
    }
    return w.n > INT32_MAX ? TOK_ERR_BAD_TOKEN : (int32_t)w.n;
}

uint32_t tokenizer_attr(const tokenizer *t, int32_t id)
{
    if (!t || !t->attr || id < 0 || (uint32_t)id >= t->n_vocab) return 0;
    return t->attr[id];
}

int tokenizer_is_eog(const tokenizer *t, int32_t id)
{
    return t && id >= 0 && is_eog_id(t, id);
}

const char *tokenizer_strerror(int code)
{
    switch (code) {
    case TOK_OK: return "ok";
    case TOK_ERR_BAD_ARG: return "bad argument";
    case TOK_ERR_BAD_VOCAB: return "malformed tokenizer vocabulary";
    case TOK_ERR_DUPLICATE_TOKEN: return "duplicate token in vocabulary";
    case TOK_ERR_UNKNOWN_MODEL: return "unknown tokenizer model (expected gpt2 or llama)";
    case TOK_ERR_UNKNOWN_PRE: return "unknown pre-tokenizer (tokenizer.ggml.pre)";
    case TOK_ERR_NO_MERGES: return "BPE vocabulary without tokenizer.ggml.merges";
    case TOK_ERR_MISSING_SPECIAL: return "add_bos/add_eos set but the BOS/EOS token is missing";
    case TOK_ERR_NO_MEMORY: return "out of memory";
    case TOK_ERR_TOO_LONG: return "text too long to tokenize";
    case TOK_ERR_BUFFER_TOO_SMALL: return "output buffer too small";
    case TOK_ERR_BAD_TOKEN: return "token id outside the vocabulary";
    case TOK_ERR_NO_BYTE_TOKEN: return "byte fallback token missing from the vocabulary";
    default: return "unknown error";
    }
}

/* ---- streaming UTF-8 ---- */

/* Length of the trailing bytes of s[0..n) that form the start of a UTF-8
 * character still missing bytes (0 when the text ends on a boundary or the
 * tail can never become valid). */
static uint32_t incomplete_tail(const uint8_t *s, uint32_t n)
{
    for (uint32_t back = 1; back <= 3 && back <= n; back++) {
        uint8_t lead = s[n - back];
        if ((lead & 0xC0) == 0x80) continue;  /* continuation: look further back */
        uint32_t need = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3
                      : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
        if (need <= back) return 0;
        if (back >= 2) {  /* the second byte's range depends on the lead */
            uint8_t b1 = s[n - back + 1];
            uint8_t lo = lead == 0xE0 ? 0xA0 : lead == 0xF0 ? 0x90 : 0x80;
            uint8_t hi = lead == 0xED ? 0x9F : lead == 0xF4 ? 0x8F : 0xBF;
            if (b1 < lo || b1 > hi) return 0;
        }
        return back;
    }
    return 0;
}

uint32_t tok_utf8_stream_feed(tok_utf8_stream *s, const char *in, uint32_t n, char *out)
{
    uint32_t total = s->n_pending;
    memcpy(out, s->pending, s->n_pending);
    if (n) memcpy(out + total, in, n);
    total += n;
    uint32_t hold = incomplete_tail((const uint8_t *)out, total);
    memcpy(s->pending, out + total - hold, hold);
    s->n_pending = hold;
    return total - hold;
}

uint32_t tok_utf8_stream_flush(tok_utf8_stream *s, char *out)
{
    uint32_t n = s->n_pending;
    memcpy(out, s->pending, n);
    s->n_pending = 0;
    return n;
}
