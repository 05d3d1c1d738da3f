/* tokenizer_shim.c -- lets the tests drive the guest's tokenizer and sampler
 * natively through ctypes: heap-allocated handles (Python does not know the
 * structs' sizes) and bulk helpers that avoid a ctypes call per item. */
#include <stdlib.h>

#include "sampler.h"
#include "tokenizer.h"
#include "unicode.h"

tokenizer *shim_tokenizer_new(const tok_vocab *v, int *err)
{
    tokenizer *t = malloc(sizeof *t);
    if (!t) {
        *err = TOK_ERR_NO_MEMORY;
        return NULL;
    }
    *err = tokenizer_init(t, v);
    if (*err) {
        free(t);
        return NULL;
    }
    return t;
}

void shim_tokenizer_delete(tokenizer *t)
{
    tokenizer_free(t);
    free(t);
}

/* Every token's piece, concatenated into buf; ends[i] = end of piece i.
 * Returns the total length, or -1 when buf is too small. */
int64_t shim_all_pieces(const tokenizer *t, int special, char *buf, uint64_t max, uint64_t *ends)
{
    uint64_t n = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        uint32_t room = max - n > UINT32_MAX ? UINT32_MAX : (uint32_t)(max - n);
        int32_t len = tokenizer_piece(t, (int32_t)id, special, buf + n, room);
        if (len < 0 || (uint32_t)len > room) return -1;
        n += (uint32_t)len;
        ends[id] = n;
    }
    return (int64_t)n;
}

/* unicode_flags of codepoints [first, first + n). */
void shim_unicode_flags(uint32_t first, uint32_t n, uint16_t *out)
{
    for (uint32_t i = 0; i < n; i++) out[i] = unicode_flags(first + i);
}

sampler *shim_sampler_new(const sampler_params *p, int *err)
{
    sampler *s = malloc(sizeof *s);
    if (!s) {
        *err = SAMPLER_ERR_NO_MEMORY;
        return NULL;
    }
    *err = sampler_init(s, p);
    if (*err) {
        free(s);
        return NULL;
    }
    return s;
}

void shim_sampler_delete(sampler *s)
{
    sampler_free(s);
    free(s);
}
