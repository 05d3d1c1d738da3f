/* tokenizer_merge.c -- the symbol-merging engine shared by SPM and BPE.
 *
 * Both tokenizers start from one symbol per character and repeatedly merge
 * the best adjacent pair (SPM: highest token score; BPE: lowest merge rank;
 * ties: leftmost).  llama.cpp pushes every candidate pair on a priority queue
 * and skips stale entries when popped; the set of valid entries is always the
 * set of current adjacent pairs that can merge, so an indexed heap holding
 * exactly one entry per symbol (its pair with its next) pops the same pairs in
 * the same order with memory bounded by the symbol count. */
#include <stdlib.h>

#include "tokenizer_internal.h"
#include "unicode.h"

static int grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap) return TOK_OK;
    uint32_t n = *cap ? *cap : 64;
    while (n < need) n = n > UINT32_MAX / 2 ? need : n * 2;
    if ((size_t)n > SIZE_MAX / elem) return TOK_ERR_NO_MEMORY;
    void *q = realloc(*p, (size_t)n * elem);
    if (!q) return TOK_ERR_NO_MEMORY;
    *p = q;
    *cap = n;
    return TOK_OK;
}

int tok_scratch_symbols(tok_scratch *s, uint32_t n)
{
    uint32_t cap = s->sym_cap;
    int rc = grow((void **)&s->sym, &cap, n, sizeof *s->sym);
    if (rc) return rc;
    s->sym_cap = cap;
    if (n <= s->q_cap) return TOK_OK;
    /* the queue arrays share one capacity; grow them in step */
    uint32_t qc = s->q_cap;
    if ((rc = grow((void **)&s->heap, &qc, n, sizeof *s->heap))) return rc;
    qc = s->q_cap;
    if ((rc = grow((void **)&s->hpos, &qc, n, sizeof *s->hpos))) return rc;
    qc = s->q_cap;
    if ((rc = grow((void **)&s->key, &qc, n, sizeof *s->key))) return rc;
    s->q_cap = qc;
    return TOK_OK;
}

int tok_scratch_buf(tok_scratch *s, uint32_t n)
{
    return grow((void **)&s->buf, &s->buf_cap, n, 1);
}

void tok_scratch_free(tok_scratch *s)
{
    free(s->sym);
    free(s->heap);
    free(s->hpos);
    free(s->key);
    free(s->buf);
    memset(s, 0, sizeof *s);
}

uint32_t tok_symbols_init(tok_scratch *s, uint32_t len)
{
    uint32_t n = 0;
    for (uint32_t off = 0; off < len; n++) {
        uint32_t l = unicode_len_utf8(s->buf[off]);
        if (l > len - off) l = len - off;
        s->sym[n].start = off;
        s->sym[n].len = l;
        s->sym[n].prev = (int32_t)n - 1;
        off += l;
        s->sym[n].next = off == len ? -1 : (int32_t)n + 1;
    }
    return n;
}

/* ---- indexed binary min-heap over symbol indices ---- */

static void heap_place(tok_scratch *s, uint32_t at, uint32_t sym)
{
    s->heap[at] = sym;
    s->hpos[sym] = at + 1;
}

static void heap_up(tok_scratch *s, uint32_t at)
{
    uint32_t sym = s->heap[at];
    uint64_t k = s->key[sym];
    while (at > 0) {
        uint32_t parent = (at - 1) / 2;
        if (s->key[s->heap[parent]] <= k) break;
        heap_place(s, at, s->heap[parent]);
        at = parent;
    }
    heap_place(s, at, sym);
}

static void heap_down(tok_scratch *s, uint32_t at)
{
    uint32_t sym = s->heap[at];
    uint64_t k = s->key[sym];
    for (;;) {
        uint32_t c = 2 * at + 1;
        if (c >= s->q_n) break;
        if (c + 1 < s->q_n && s->key[s->heap[c + 1]] < s->key[s->heap[c]]) c++;
        if (k <= s->key[s->heap[c]]) break;
        heap_place(s, at, s->heap[c]);
        at = c;
    }
    heap_place(s, at, sym);
}

static void queue_remove(tok_scratch *s, uint32_t sym)
{
    uint32_t p = s->hpos[sym];
    if (!p) return;
    s->hpos[sym] = 0;
    uint32_t at = p - 1, last = s->heap[--s->q_n];
    if (at == s->q_n) return;
    heap_place(s, at, last);
    heap_up(s, at);
    heap_down(s, s->hpos[last] - 1);
}

static void queue_set(tok_scratch *s, uint32_t sym, uint64_t key)
{
    s->key[sym] = key;
    if (s->hpos[sym]) {
        uint32_t at = s->hpos[sym] - 1;
        heap_up(s, at);
        heap_down(s, s->hpos[sym] - 1);
    } else {
        heap_place(s, s->q_n++, sym);
        heap_up(s, s->q_n - 1);
    }
}

static void update_pair(const tokenizer *t, tok_scratch *s, uint32_t i, tok_pair_key_fn key_fn)
{
    const tok_symbol *l = &s->sym[i];
    uint64_t key;
    if (l->next >= 0 && key_fn(t, s->buf, l, &s->sym[l->next], i, &key)) queue_set(s, i, key);
    else queue_remove(s, i);
}

void tok_merge_symbols(const tokenizer *t, tok_scratch *s, uint32_t n, tok_pair_key_fn key_fn)
{
    s->q_n = 0;
    memset(s->hpos, 0, (size_t)n * sizeof *s->hpos);
    for (uint32_t i = 0; i + 1 < n; i++) update_pair(t, s, i, key_fn);
    while (s->q_n) {
        uint32_t i = s->heap[0];
        queue_remove(s, i);
        tok_symbol *l = &s->sym[i];
        uint32_t j = (uint32_t)l->next;
        tok_symbol *r = &s->sym[j];
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) s->sym[r->next].prev = (int32_t)i;
        queue_remove(s, j);
        if (l->prev >= 0) update_pair(t, s, (uint32_t)l->prev, key_fn);
        update_pair(t, s, i, key_fn);
    }
}
