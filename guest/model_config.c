/* model_config.c -- the model configuration from GGUF metadata.
 *
 * Keys follow llama.cpp's naming: "{arch}.block_count" and friends, where
 * {arch} is general.architecture.  The defaults for absent keys are the ones
 * documented on struct realm_config in realm_abi.h.
 */
#include "model_config.h"

#include <stdio.h>
#include <string.h>

/* The architectures whose layers use a sliding window, with llama.cpp's values where a file
 * has no key (gemma3 files carry neither).  Every other architecture ignores a window key, as
 * llama.cpp does (llama/Mistral files, phi3).  realm/forward.py's ARCHITECTURES holds the
 * same; tests/test_guest.py holds the two to each other. */
static const struct {
    const char *name;
    uint32_t swa_pattern;
    float rope_base_swa;
} SWA_ARCHS[] = {
    {"gemma3", 6, 10000.0f},
};

/* "{arch}.{suffix}" in a static buffer (the config is built on one thread). */
static const char *arch_key(const struct realm_config *c, const char *suffix)
{
    static char key[sizeof c->architecture + 64];
    snprintf(key, sizeof key, "%s.%s", c->architecture, suffix);
    return key;
}

/* Read into *out, leaving it untouched when the key is absent; < 0 on a bad value. */
static int u32_key(const struct gguf_file *f, const char *key, uint32_t *out)
{
    int rc = gguf_get_u32(f, key, out);
    return rc < 0 ? rc : 0;
}

static int f32_key(const struct gguf_file *f, const char *key, float *out)
{
    int rc = gguf_get_f32(f, key, out);
    return rc < 0 ? rc : 0;
}

static int bool_key(const struct gguf_file *f, const char *key, int32_t *out)
{
    int rc = gguf_get_bool(f, key, out);
    return rc < 0 ? rc : 0;
}

/* A token id: *out stays -1 when absent. */
static int token_key(const struct gguf_file *f, const char *key, int32_t *out)
{
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v);
    if (rc <= 0) return rc;
    if (v > INT32_MAX) return gguf_fail(REALM_E_BAD_GGUF, "metadata '%s' = %u is not a token id", key, v);
    *out = (int32_t)v;
    return 0;
}

static int read_architecture(struct realm_config *c, const struct gguf_file *f)
{
    struct gguf_str arch;
    int rc = gguf_get_str(f, "general.architecture", &arch);
    if (rc < 0) return rc;
    if (rc == 0) return gguf_fail(REALM_E_BAD_GGUF, "general.architecture is missing");
    if (arch.len == 0 || arch.len >= sizeof c->architecture || memchr(f->data + arch.off, 0, arch.len) ||
        !gguf_utf8_valid(f->data + arch.off, arch.len))
        return gguf_fail(REALM_E_BAD_GGUF, "general.architecture must be 1 to %u bytes of UTF-8 without NUL",
                         (unsigned)sizeof c->architecture - 1);
    memcpy(c->architecture, f->data + arch.off, arch.len);
    c->architecture[arch.len] = 0;
    return 0;
}

static int read_tokenizer(struct realm_config *c, const struct gguf_file *f)
{
    struct gguf_str model;
    uint64_t n_tokens;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &model);
    if (rc < 0) return rc;
    if (rc == 0 || gguf_str_eq(f, model, "no")) c->tokenizer = REALM_TOKENIZER_NONE;
    else if (gguf_str_eq(f, model, "gpt2")) c->tokenizer = REALM_TOKENIZER_GPT2;
    else if (gguf_str_eq(f, model, "llama")) c->tokenizer = REALM_TOKENIZER_LLAMA;
    else c->tokenizer = REALM_TOKENIZER_OTHER;

    rc = gguf_get_array_len(f, "tokenizer.ggml.tokens", GGUF_STRING, &n_tokens);
    if (rc < 0) return rc;
    if (rc == 1) {
        if (n_tokens > INT32_MAX) return gguf_fail(REALM_E_BAD_GGUF, "too many tokens");
        c->n_vocab = (uint32_t)n_tokens;
    } else if ((rc = u32_key(f, arch_key(c, "vocab_size"), &c->n_vocab))) {
        return rc;
    }

    c->bos_id = c->eos_id = c->unk_id = c->pad_id = -1;
    c->add_bos = c->add_eos = c->add_space_prefix = -1;
    if ((rc = token_key(f, "tokenizer.ggml.bos_token_id", &c->bos_id)) ||
        (rc = token_key(f, "tokenizer.ggml.eos_token_id", &c->eos_id)) ||
        (rc = token_key(f, "tokenizer.ggml.unknown_token_id", &c->unk_id)) ||
        (rc = token_key(f, "tokenizer.ggml.padding_token_id", &c->pad_id)) ||
        (rc = bool_key(f, "tokenizer.ggml.add_bos_token", &c->add_bos)) ||
        (rc = bool_key(f, "tokenizer.ggml.add_eos_token", &c->add_eos)) ||
        (rc = bool_key(f, "tokenizer.ggml.add_space_prefix", &c->add_space_prefix)))
        return rc;
    return 0;
}

int config_from_gguf(struct realm_config *c, const struct gguf_file *f)
{
    memset(c, 0, sizeof *c);
    c->model_id = -1;
    c->n_tensors = f->n_tensors;
    c->header_len = f->len;
    c->gguf_version = f->version;

    int rc = read_architecture(c, f);
    if (rc) return rc;
    int swa = -1; /* the architecture's SWA_ARCHS entry */
    for (size_t i = 0; i < sizeof SWA_ARCHS / sizeof SWA_ARCHS[0]; i++)
        if (strcmp(c->architecture, SWA_ARCHS[i].name) == 0) swa = (int)i;

    if ((rc = u32_key(f, arch_key(c, "block_count"), &c->n_layers)) ||
        (rc = u32_key(f, arch_key(c, "embedding_length"), &c->n_embd)) ||
        (rc = u32_key(f, arch_key(c, "feed_forward_length"), &c->n_ff)) ||
        (rc = u32_key(f, arch_key(c, "context_length"), &c->n_ctx_train)) ||
        (rc = u32_key(f, arch_key(c, "attention.head_count"), &c->n_head)))
        return rc;
    c->n_head_kv = c->n_head;
    c->head_dim = c->n_head ? c->n_embd / c->n_head : 0;
    if ((rc = u32_key(f, arch_key(c, "attention.head_count_kv"), &c->n_head_kv)) ||
        (rc = u32_key(f, arch_key(c, "attention.key_length"), &c->head_dim)))
        return rc;
    c->head_dim_v = c->rope_dim = c->head_dim;
    if ((rc = u32_key(f, arch_key(c, "attention.value_length"), &c->head_dim_v)) ||
        (rc = u32_key(f, arch_key(c, "rope.dimension_count"), &c->rope_dim)))
        return rc;

    if (swa >= 0) {
        c->swa_pattern = SWA_ARCHS[swa].swa_pattern;
        if ((rc = u32_key(f, arch_key(c, "attention.sliding_window"), &c->sliding_window)) ||
            (rc = u32_key(f, arch_key(c, "attention.sliding_window_pattern"), &c->swa_pattern)))
            return rc;
    }

    c->rope_freq_base = 10000.0f;
    c->rope_scale = 1.0f;
    c->rms_eps = 1e-5f;
    if ((rc = f32_key(f, arch_key(c, "rope.freq_base"), &c->rope_freq_base)) ||
        (rc = f32_key(f, arch_key(c, "rope.scaling.factor"), &c->rope_scale)) ||
        (rc = f32_key(f, arch_key(c, "attention.layer_norm_rms_epsilon"), &c->rms_eps)))
        return rc;
    if (c->rope_scale == 0.0f) c->rope_scale = 1.0f;
    c->rope_freq_base_swa = c->rope_freq_base;
    if (swa >= 0) {
        c->rope_freq_base_swa = SWA_ARCHS[swa].rope_base_swa;
        if ((rc = f32_key(f, arch_key(c, "rope.freq_base_swa"), &c->rope_freq_base_swa))) return rc;
    }

    return read_tokenizer(c, f);
}
