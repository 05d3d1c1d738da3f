/* vocab.h -- the current model's tokenizer, built from its GGUF header on first use.
 *
 * guest.c holds the model; this module reads the tokenizer.ggml.* metadata of
 * its header in place (tok_vocab points into the header bytes) and keeps one
 * tokenizer for it until the model goes (generate_release, generate.h).
 */
#ifndef REALM_VOCAB_H
#define REALM_VOCAB_H

#include "gguf_meta.h"
#include "tokenizer.h"

/* The current model's parsed header, or NULL when the guest holds none (guest.c). */
const struct gguf_file *guest_current_gguf(void);

/* realm_log(level, prefix + msg), cut to 320 bytes (guest.c). */
void log_message(int32_t level, const char *prefix, const char *msg);

/* The current model's tokenizer, built on the first call.  Returns REALM_OK
 * with *out set, or NO_MODEL, UNSUPPORTED (no tokenizer, or a kind or
 * pre-tokenizer realm does not implement), BAD_GGUF (a malformed vocabulary;
 * the reason is logged), NO_MEMORY. */
int vocab_tokenizer(const tokenizer **out);

/* Free the tokenizer (the model is going). */
void vocab_release(void);

/* A REALM_E_* code for a TOK_ERR_* code. */
int vocab_error(int tok_err);

#endif /* REALM_VOCAB_H */
