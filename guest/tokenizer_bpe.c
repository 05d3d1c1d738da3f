/* tokenizer_bpe.c -- byte-level BPE ("gpt2" vocabularies), as llama.cpp's
 * llm_tokenizer_bpe_session.
 *
 * A fragment of text goes through the pre-tokenizer's passes, each splitting
 * every piece the previous pass produced; llama.cpp runs them as regexes
 * (custom scanners for the gpt2 and llama3 patterns, std::regex over
 * "collapsed" category bytes for the others).  Here every pass is a
 * hand-written scanner over codepoints that reproduces the regex's
 * leftmost-first matching, including its lookahead at the end of a piece.
 * Each final word is byte-encoded (GPT-2's printable alphabet) and merged
 * pairwise by merge rank; the resulting symbols are the tokens. */
#include "tokenizer_internal.h"
#include "unicode.h"

/* The passes of each pre-tokenizer (tokenizer.pre), first to last. */
enum pass {
    PASS_END = 0,
    PASS_DIGIT,     /* \p{N}: every number character alone */
    PASS_NUMBERS,   /* \p{N}+ */
    PASS_DIGIT3,    /* [0-9][0-9][0-9] */
    PASS_PUNCT,     /* [\p{P}\$\+<=>\^~\|]+ */
    PASS_GPT2,      /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
    PASS_LLAMA3,    /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    PASS_QWEN2,     /* the same with \p{N} in place of \p{N}{1,3} */
};

static const uint8_t PASSES_DEFAULT[] = {PASS_PUNCT, PASS_GPT2, PASS_NUMBERS, PASS_DIGIT3, PASS_END};
static const uint8_t PASSES_GPT2[] = {PASS_GPT2, PASS_END};
static const uint8_t PASSES_SMOLLM[] = {PASS_DIGIT, PASS_GPT2, PASS_END};
static const uint8_t PASSES_LLAMA3[] = {PASS_LLAMA3, PASS_END};
static const uint8_t PASSES_QWEN2[] = {PASS_QWEN2, PASS_END};

typedef struct {
    const tokenizer *t;
    tok_scratch *s;
    tok_out *o;
    const uint8_t *text;  /* the fragment */
    uint32_t n;           /* its length: the UTF-8 decoding bound */
} bpe_ctx;

static int split(bpe_ctx *c, const uint8_t *passes, uint32_t a, uint32_t b);

#define SUB(x, y) do { int rc_ = split(c, next, (x), (y)); if (rc_) return rc_; } while (0)

static inline uint32_t dec(const bpe_ctx *c, uint32_t p, uint32_t *cpt)
{
    return unicode_decode_utf8(c->text, p, c->n, cpt);
}

static inline uint16_t flags_at(const bpe_ctx *c, uint32_t p)
{
    uint32_t cpt;
    dec(c, p, &cpt);
    return unicode_flags(cpt);
}

enum { CLASS_LETTER, CLASS_NUMBER, CLASS_OTHER };  /* \p{L}, \p{N}, [^\s\p{L}\p{N}] */

static int in_class(uint16_t f, int cls)
{
    if (cls == CLASS_LETTER) return (f & UCF_LETTER) != 0;
    if (cls == CLASS_NUMBER) return (f & UCF_NUMBER) != 0;
    return !(f & (UCF_WHITESPACE | UCF_LETTER | UCF_NUMBER));
}

/* The end of the run of `cls` characters starting at p (stops at b). */
static uint32_t skip_class(const bpe_ctx *c, uint32_t p, uint32_t b, int cls)
{
    while (p < b) {
        uint32_t cpt, q = dec(c, p, &cpt);
        if (!in_class(unicode_flags(cpt), cls)) break;
        p = q;
    }
    return p;
}

static uint32_t skip_crlf(const bpe_ctx *c, uint32_t p, uint32_t b)
{
    while (p < b && (c->text[p] == '\r' || c->text[p] == '\n')) p++;
    return p;
}

/* A run of whitespace starting at p: its end, the start of its last character,
 * its length in characters, and the end of its last CR/LF (0 when none). */
typedef struct {
    uint32_t end, last, count, crlf_end;
} ws_run;

static ws_run scan_whitespace(const bpe_ctx *c, uint32_t p, uint32_t b)
{
    ws_run w = {p, p, 0, 0};
    while (w.end < b) {
        uint32_t cpt, q = dec(c, w.end, &cpt);
        if (!(unicode_flags(cpt) & UCF_WHITESPACE)) break;
        if (cpt == '\r' || cpt == '\n') w.crlf_end = q;
        w.last = w.end;
        w.end = q;
        w.count++;
    }
    return w;
}

/* 's 't 're 've 'm 'll 'd at p (a quote); lower-cases ASCII when fold is set.
 * Returns the end of the contraction, or 0. */
static uint32_t contraction(const bpe_ctx *c, uint32_t p1, uint32_t b, int fold)
{
    if (p1 >= b) return 0;
    uint32_t c1, c2, p2 = dec(c, p1, &c1);
    if (fold && c1 >= 'A' && c1 <= 'Z') c1 += 32;
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return p2;
    if (p2 >= b) return 0;
    uint32_t p3 = dec(c, p2, &c2);
    if (fold && c2 >= 'A' && c2 <= 'Z') c2 += 32;
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return p3;
    return 0;
}

/* llama.cpp's unicode_regex_split_custom_gpt2. */
static int scan_gpt2(bpe_ctx *c, const uint8_t *next, uint32_t a, uint32_t b)
{
    uint32_t pos = a;
    while (pos < b) {
        uint32_t c0, p1 = dec(c, pos, &c0), q;
        if (c0 == '\'' && (q = contraction(c, p1, b, 0))) {
            SUB(pos, q);
            pos = q;
            continue;
        }
        /* ' ?' before a class run: the class of the character after the space */
        uint32_t start = pos;
        uint16_t f = unicode_flags(c0);
        if (c0 == ' ') {
            start = p1;
            f = p1 < b ? flags_at(c, p1) : 0;
        }
        int cls = -1;
        if (f & UCF_LETTER) cls = CLASS_LETTER;
        else if (f & UCF_NUMBER) cls = CLASS_NUMBER;
        else if (f && in_class(f, CLASS_OTHER)) cls = CLASS_OTHER;
        if (cls >= 0) {
            q = skip_class(c, start, b, cls);
            SUB(pos, q);
            pos = q;
            continue;
        }
        ws_run w = scan_whitespace(c, pos, b);
        if (w.count > 1 && w.end < b) q = w.last;   /* \s+(?!\S): leave the last one */
        else if (w.count > 0) q = w.end;            /* \s+ */
        else q = p1;
        SUB(pos, q);
        pos = q;
    }
    return 0;
}

/* llama.cpp's unicode_regex_split_custom_llama3 (max_digits 3); with
 * max_digits 1 it is exactly qwen2's regex, which llama.cpp runs through
 * std::regex. */
static int scan_llama3(bpe_ctx *c, const uint8_t *next, uint32_t a, uint32_t b, uint32_t max_digits)
{
    uint32_t pos = a;
    while (pos < b) {
        uint32_t c0, p1 = dec(c, pos, &c0), q;
        if (c0 == '\'' && (q = contraction(c, p1, b, 1))) {
            SUB(pos, q);
            pos = q;
            continue;
        }
        uint16_t f0 = unicode_flags(c0);
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (c0 != '\r' && c0 != '\n' && !(f0 & UCF_NUMBER) &&
            ((f0 & UCF_LETTER) || (p1 < b && (flags_at(c, p1) & UCF_LETTER)))) {
            q = skip_class(c, p1, b, CLASS_LETTER);
            SUB(pos, q);
            pos = q;
            continue;
        }
        /* \p{N}{1,max_digits} */
        if (f0 & UCF_NUMBER) {
            uint32_t end = skip_class(c, pos, b, CLASS_NUMBER), start = pos, k = 0;
            for (q = pos; q < end; ) {
                uint32_t cpt;
                q = dec(c, q, &cpt);
                if (++k == max_digits) {
                    SUB(start, q);
                    start = q;
                    k = 0;
                }
            }
            if (start < end) SUB(start, end);
            pos = end;
            continue;
        }
        /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
        uint32_t start = pos;
        uint16_t f = f0;
        if (c0 == ' ') {
            start = p1;
            f = p1 < b ? flags_at(c, p1) : 0;
        }
        if (in_class(f, CLASS_OTHER)) {
            q = skip_crlf(c, skip_class(c, start, b, CLASS_OTHER), b);
            SUB(pos, q);
            pos = q;
            continue;
        }
        ws_run w = scan_whitespace(c, pos, b);
        if (w.crlf_end) q = w.crlf_end;                    /* \s*[\r\n]+ */
        else if (w.count > 1 && w.end < b) q = w.last;     /* \s+(?!\S) */
        else if (w.count > 0) q = w.end;                   /* \s+ */
        else q = p1;
        SUB(pos, q);
        pos = q;
    }
    return 0;
}

/* A std::regex of one character class, as llama.cpp's regex iterator splits:
 * each match, and each gap between matches, is a piece.  `single`: every
 * matching character is its own match (no '+'). */
enum { SET_NUMBER, SET_PUNCT };

static int in_set(uint32_t cpt, int set)
{
    uint16_t f = unicode_flags(cpt);
    if (set == SET_NUMBER) return (f & UCF_NUMBER) != 0;
    return (f & UCF_PUNCTUATION) || cpt == '$' || cpt == '+' || cpt == '<' || cpt == '=' ||
           cpt == '>' || cpt == '^' || cpt == '~' || cpt == '|';
}

static int scan_set(bpe_ctx *c, const uint8_t *next, uint32_t a, uint32_t b, int set, int single)
{
    uint32_t pos = a, gap = a;
    while (pos < b) {
        uint32_t cpt, q = dec(c, pos, &cpt);
        if (!in_set(cpt, set)) {
            pos = q;
            continue;
        }
        if (gap < pos) SUB(gap, pos);
        while (!single && q < b) {
            uint32_t r = dec(c, q, &cpt);
            if (!in_set(cpt, set)) break;
            q = r;
        }
        SUB(pos, q);
        pos = gap = q;
    }
    if (gap < b) SUB(gap, b);
    return 0;
}

static int is_digit(uint8_t ch) { return ch >= '0' && ch <= '9'; }

/* [0-9][0-9][0-9]: leftmost non-overlapping triples of ASCII digits. */
static int scan_digit3(bpe_ctx *c, const uint8_t *next, uint32_t a, uint32_t b)
{
    uint32_t pos = a, gap = a;
    while (pos < b) {
        if (b - pos >= 3 && is_digit(c->text[pos]) && is_digit(c->text[pos + 1]) && is_digit(c->text[pos + 2])) {
            if (gap < pos) SUB(gap, pos);
            SUB(pos, pos + 3);
            pos = gap = pos + 3;
            continue;
        }
        uint32_t cpt;
        pos = dec(c, pos, &cpt);
    }
    if (gap < b) SUB(gap, b);
    return 0;
}

/* ---- byte-level BPE of one word ---- */

static int bpe_pair_key(const tokenizer *t, const uint8_t *text, const tok_symbol *l,
                        const tok_symbol *r, uint32_t left_index, uint64_t *key)
{
    int32_t rank = tok_merge_rank(t, text + l->start, l->len, text + r->start, r->len);
    if (rank < 0) return 0;
    *key = ((uint64_t)(uint32_t)rank << 32) | left_index;
    return 1;
}

static int bpe_word(bpe_ctx *c, uint32_t a, uint32_t b)
{
    const tokenizer *t = c->t;
    tok_scratch *s = c->s;
    /* re-encode the codepoints (invalid bytes became U+FFFD: 3 bytes), then
     * map every byte to its printable stand-in (at most 2 bytes) */
    if ((b - a) > UINT32_MAX / 6) return TOK_ERR_TOO_LONG;
    int rc = tok_scratch_buf(s, (b - a) * 6);
    if (rc) return rc;
    uint32_t m = 0;
    for (uint32_t p = a; p < b; ) {
        uint32_t cpt;
        uint8_t u[4];
        p = dec(c, p, &cpt);
        uint32_t k = unicode_encode_utf8(cpt, u);
        for (uint32_t i = 0; i < k; i++) m += unicode_byte_to_utf8(u[i], s->buf + m);
    }

    if (t->ignore_merges) {
        int32_t id = tok_lookup(t, s->buf, m);
        if (id >= 0) {
            tok_emit(c->o, id);
            return TOK_OK;
        }
    }
    if ((rc = tok_scratch_symbols(s, m))) return rc;
    uint32_t n_sym = tok_symbols_init(s, m);
    tok_merge_symbols(t, s, n_sym, bpe_pair_key);

    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const tok_symbol *sym = &s->sym[i];
        int32_t id = tok_lookup(t, s->buf + sym->start, sym->len);
        if (id >= 0) {
            tok_emit(c->o, id);
            continue;
        }
        /* llama.cpp then looks each byte of the symbol up as a one-byte token */
        for (uint32_t j = 0; j < sym->len; j++) {
            int32_t bt = t->byte_tok[s->buf[sym->start + j]];
            if (bt >= 0) tok_emit(c->o, bt);
        }
    }
    return TOK_OK;
}

static int split(bpe_ctx *c, const uint8_t *passes, uint32_t a, uint32_t b)
{
    const uint8_t *next = passes + 1;
    switch (passes[0]) {
    case PASS_END:     return bpe_word(c, a, b);
    case PASS_DIGIT:   return scan_set(c, next, a, b, SET_NUMBER, 1);
    case PASS_NUMBERS: return scan_set(c, next, a, b, SET_NUMBER, 0);
    case PASS_PUNCT:   return scan_set(c, next, a, b, SET_PUNCT, 0);
    case PASS_DIGIT3:  return scan_digit3(c, next, a, b);
    case PASS_GPT2:    return scan_gpt2(c, next, a, b);
    case PASS_LLAMA3:  return scan_llama3(c, next, a, b, 3);
    case PASS_QWEN2:   return scan_llama3(c, next, a, b, 1);
    default:           return TOK_ERR_BAD_ARG;
    }
}

int tok_bpe_encode(const tokenizer *t, tok_scratch *s, const uint8_t *text, uint32_t len, tok_out *o)
{
    static const uint8_t *const passes[] = {
        [TOK_PRE_DEFAULT] = PASSES_DEFAULT, [TOK_PRE_GPT2] = PASSES_GPT2,
        [TOK_PRE_SMOLLM] = PASSES_SMOLLM, [TOK_PRE_LLAMA3] = PASSES_LLAMA3,
        [TOK_PRE_QWEN2] = PASSES_QWEN2,
    };
    if (t->pre < TOK_PRE_DEFAULT || t->pre > TOK_PRE_QWEN2) return TOK_ERR_BAD_ARG;
    bpe_ctx c = {t, s, o, text, len};
    return len ? split(&c, passes[t->pre], 0, len) : TOK_OK;
}

/* ---- tokenizer.ggml.pre names (llama.cpp's llama_vocab::impl::load) ---- */

struct pre_name {
    const char *name;
    uint8_t pre, ignore_merges, add_bos;
};

static const struct pre_name PRE_NAMES[] = {
    {"default", TOK_PRE_DEFAULT, 0, 0},
    {"llama3", TOK_PRE_LLAMA3, 1, 1}, {"llama-v3", TOK_PRE_LLAMA3, 1, 1},
    {"llama-bpe", TOK_PRE_LLAMA3, 1, 1}, {"falcon3", TOK_PRE_LLAMA3, 1, 1},
    {"falcon-h1", TOK_PRE_LLAMA3, 1, 1}, {"pixtral", TOK_PRE_LLAMA3, 1, 1},
    {"midm-2.0", TOK_PRE_LLAMA3, 1, 1}, {"lfm2", TOK_PRE_LLAMA3, 1, 1},
    {"dbrx", TOK_PRE_LLAMA3, 0, 0}, {"smaug-bpe", TOK_PRE_LLAMA3, 0, 0},
    {"gpt-2", TOK_PRE_GPT2, 0, 0}, {"phi-2", TOK_PRE_GPT2, 0, 0},
    {"jina-es", TOK_PRE_GPT2, 0, 0}, {"jina-de", TOK_PRE_GPT2, 0, 0},
    {"gigachat", TOK_PRE_GPT2, 0, 0}, {"jina-v2-es", TOK_PRE_GPT2, 0, 0},
    {"jina-v2-de", TOK_PRE_GPT2, 0, 0}, {"jina-v1-en", TOK_PRE_GPT2, 0, 0},
    {"jina-v2-code", TOK_PRE_GPT2, 0, 0}, {"roberta-bpe", TOK_PRE_GPT2, 0, 0},
    {"mpt", TOK_PRE_GPT2, 0, 0}, {"olmo", TOK_PRE_GPT2, 0, 0},
    {"jais", TOK_PRE_GPT2, 0, 0}, {"trillion", TOK_PRE_GPT2, 0, 0},
    {"granite-docling", TOK_PRE_GPT2, 0, 0}, {"exaone4", TOK_PRE_GPT2, 0, 0},
    {"smollm", TOK_PRE_SMOLLM, 0, 0}, {"starcoder", TOK_PRE_SMOLLM, 0, 0},
    {"refact", TOK_PRE_SMOLLM, 0, 0}, {"command-r", TOK_PRE_SMOLLM, 0, 0},
    {"codeshell", TOK_PRE_SMOLLM, 0, 0}, {"exaone", TOK_PRE_SMOLLM, 0, 0},
    {"minerva-7b", TOK_PRE_SMOLLM, 0, 0},
    {"qwen2", TOK_PRE_QWEN2, 0, 0}, {"deepseek-r1-qwen", TOK_PRE_QWEN2, 0, 0},
    {"megrez", TOK_PRE_QWEN2, 0, 0}, {"stablelm2", TOK_PRE_QWEN2, 0, 0},
    {"hunyuan", TOK_PRE_QWEN2, 0, 0},
};

int tok_bpe_pre_from_name(const char *name, uint32_t len, int *pre, int *ignore_merges, int *add_bos)
{
    if (!name || len == 0) {  /* absent: llama.cpp warns and uses the default */
        *pre = TOK_PRE_DEFAULT;
        *ignore_merges = *add_bos = 0;
        return TOK_OK;
    }
    for (size_t i = 0; i < sizeof PRE_NAMES / sizeof PRE_NAMES[0]; i++) {
        const struct pre_name *p = &PRE_NAMES[i];
        if (strlen(p->name) == len && memcmp(p->name, name, len) == 0) {
            *pre = p->pre;
            *ignore_merges = p->ignore_merges;
            *add_bos = p->add_bos;
            return TOK_OK;
        }
    }
    return TOK_ERR_UNKNOWN_PRE;
}
