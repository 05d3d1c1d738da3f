/* realm_abi.h -- the contract between a realm guest (.wasm) and its host.
 *
 * This file is the single source of truth for the ABI.  The host side
 * (realm/abi.py, realm/host.py) must agree with it, and tests/test_abi_header.py
 * parses this file and fails on any difference, so keep its line formats:
 *
 *   #define REALM_<NAME> <integer> or (<negative integer>)   constants
 *   REALM_IMPORT(<ret>, <name>, (<params>));                 host functions (module "env")
 *   REALM_EXPORT(<ret>, <name>, (<params>));                 guest functions
 *   struct realm_config { <type> <name>[<n>]; ... };         one field a line
 *
 * Value conventions
 *   - Pointers and lengths are u32 offsets/sizes in the guest's linear memory
 *     (wasm i32).  A (pointer, length) pair is valid when ptr + len <= the
 *     memory's CURRENT size, computed without u32 wrap-around.  Multi-byte
 *     values are little-endian; pointers need no alignment.
 *   - Model ids are i64 (> 0, never reused by a host).
 *   - Every import returns >= 0 on success (a byte count, an id, or REALM_OK)
 *     and a negative REALM_E_* code on failure.  A failing call writes nothing.
 *   - Output buffers: a call with out_max_len == 0 writes nothing and returns the
 *     number of bytes it would write ("how big a buffer do I need?").
 *   - Checks run in argument order (model id, then each pointer/length pair),
 *     then on content (lengths, UTF-8, names), then on buffer sizes; the first
 *     failing check's code is returned.  Each import lists its codes in that order.
 *
 * Models and tenants
 *   Each guest instance is one tenant.  A model the guest stored with
 *   realm_store_model is owned by it (it may remove it; the host removes it
 *   when the guest goes away).  A model the host preloaded is shared: the host
 *   grants the guest access to it by id, and the guest may read it but not
 *   remove it.  Ids of other tenants' models are REALM_E_NO_MODEL.
 *
 * Limits (realm.Limits on the host side)
 *   A tenant's linear memory is capped (memory.grow fails beyond it).  Its
 *   stored models and KV caches count against its quotas -- every byte they
 *   keep alive in the host -- and against a budget all tenants share; a call
 *   that would cross either answers REALM_E_LIMIT.  Each call into the guest
 *   runs under a deadline: wasm code past it is interrupted (a trap the host
 *   turns into an error), and an import called after it answers
 *   REALM_E_DEADLINE without doing any work.  One import call does bounded
 *   work: the forward imports take at most REALM_FORWARD_MAX_TOKENS rows.
 *   Any import may answer REALM_E_DEADLINE, before any other check.
 */
#ifndef REALM_ABI_H
#define REALM_ABI_H

#include <stdint.h>

#define REALM_ABI_VERSION 1

/* ---- status and error codes ---------------------------------------------- */
#define REALM_OK 0
#define REALM_E_BAD_POINTER (-1)      /* a pointer/length pair lies outside guest memory */
#define REALM_E_BUFFER_TOO_SMALL (-2) /* the output buffer cannot hold the result */
#define REALM_E_NO_MODEL (-3)         /* no model with that id is visible to this guest */
#define REALM_E_NO_TENSOR (-4)        /* the model has no tensor of that name */
#define REALM_E_BAD_ARGUMENT (-5)     /* a value outside its documented range */
#define REALM_E_BAD_UTF8 (-6)         /* a name or message is not valid UTF-8 */
#define REALM_E_INTERNAL (-7)         /* an unexpected host failure (see the host's log) */
#define REALM_E_BAD_GGUF (-8)         /* GGUF bytes are malformed or truncated */
#define REALM_E_NO_MEMORY (-9)        /* the guest could not allocate memory */
#define REALM_E_DENIED (-10)          /* the model is shared: only the host may remove it */
#define REALM_E_LIMIT (-11)           /* a tenant's quota, the host's budget or a per-call bound is reached */
#define REALM_E_UNSUPPORTED (-12)     /* the host cannot do this for this tensor type or model */
#define REALM_E_TOO_LARGE (-13)       /* the result would be 2 GiB or more (does not fit an i32) */
#define REALM_E_NO_KV_CACHE (-14)     /* no KV cache with that id belongs to this guest */
#define REALM_E_CONTEXT_FULL (-15)    /* the tokens would not fit in the KV cache */
#define REALM_E_DEADLINE (-16)        /* the tenant's deadline has passed: the host does no more work */

/* ---- limits ----------------------------------------------------------------- */
#define REALM_NAME_MAX 256  /* longest tensor name, in bytes (ggml allows 63) */
#define REALM_LOG_MAX 4096  /* longest log message, in bytes */
#define REALM_LOG_CALLS_MAX 64 /* realm_log calls the host takes during one call into the guest */
#define REALM_FORWARD_MAX_TOKENS 512 /* rows (tokens) one realm_forward_* call takes at most */

/* ---- log levels (realm_log) ------------------------------------------------- */
#define REALM_LOG_DEBUG 0
#define REALM_LOG_INFO 1
#define REALM_LOG_WARNING 2
#define REALM_LOG_ERROR 3

/* ---- tokenizer kinds (realm_config.tokenizer, from tokenizer.ggml.model) ----- */
#define REALM_TOKENIZER_NONE 0  /* absent, or "no" */
#define REALM_TOKENIZER_GPT2 1  /* "gpt2": byte-level BPE with merges */
#define REALM_TOKENIZER_LLAMA 2 /* "llama": SentencePiece with scores */
#define REALM_TOKENIZER_OTHER 3 /* any other name */

/* ---- imports: host functions, wasm module "env" ----------------------------- */
#ifdef __wasm__
#define REALM_IMPORT(ret, name, params) \
    __attribute__((import_module("env"), import_name(#name))) ret name params
#else
#define REALM_IMPORT(ret, name, params) ret name params
#endif

/* Copy gguf_len bytes of a whole GGUF file out of guest memory into the host's
 * model store.  The model counts against the guest's quota and the host's
 * budget by what it keeps alive: its bytes and its parsed header.  Returns the
 * new model's id (owned by this guest), or BAD_POINTER, LIMIT (the guest's
 * quota of stored models and bytes, or the host's budget), BAD_GGUF. */
REALM_IMPORT(int64_t, realm_store_model, (const void *gguf, uint32_t gguf_len));

/* Write a tensor of a model, dequantized to f32 (little-endian, row-major in
 * numpy order: n_elements * 4 bytes), to out.  The host serves it from its
 * LayerCache, dequantizing on a miss.  Returns bytes written, or NO_MODEL,
 * BAD_POINTER, BAD_ARGUMENT (name_len > REALM_NAME_MAX), BAD_UTF8, NO_TENSOR,
 * UNSUPPORTED, TOO_LARGE, BUFFER_TOO_SMALL. */
REALM_IMPORT(int32_t, realm_get_tensor,
             (int64_t model_id, const char *name, uint32_t name_len, float *out, uint32_t out_max_len));

/* Write the model's tensor count (u32) to *out_tensor_count and its total
 * tensor data size in bytes (u64) to *out_total_size.  Returns REALM_OK, or
 * NO_MODEL, BAD_POINTER, TOO_LARGE (count >= 2^32). */
REALM_IMPORT(int32_t, realm_get_model_info,
             (int64_t model_id, uint32_t *out_tensor_count, uint64_t *out_total_size));

/* Remove a model this guest stored, and free the guest's KV caches of it
 * (their ids become NO_KV_CACHE: a cache keeps its model's weights alive).
 * Returns REALM_OK, or NO_MODEL, DENIED (a shared model). */
REALM_IMPORT(int32_t, realm_remove_model, (int64_t model_id));

/* Copy the model's GGUF header -- the file's bytes from 0 to the start of the
 * tensor data: metadata and tensor infos, no weights -- to out.  Returns bytes
 * written, or NO_MODEL, BAD_POINTER, TOO_LARGE, BUFFER_TOO_SMALL. */
REALM_IMPORT(int32_t, realm_get_metadata, (int64_t model_id, void *out, uint32_t out_max_len));

/* Log a UTF-8 message at a REALM_LOG_* level through the host's logging.
 * Returns REALM_OK, or BAD_ARGUMENT (unknown level), BAD_POINTER,
 * BAD_ARGUMENT (msg_len > REALM_LOG_MAX), BAD_UTF8, LIMIT (more than
 * REALM_LOG_CALLS_MAX messages in this call into the guest: the host's log is
 * not the guest's to flood). */
REALM_IMPORT(int32_t, realm_log, (int32_t level, const char *msg, uint32_t msg_len));

/* ---- forward pass: the host computes, the weights never enter the guest -----
 * Hidden states are n_tokens rows of n_embd f32 values, row-major.  Lengths in
 * these imports count VALUES (f32 or i32), not bytes; the spans checked against
 * memory are 4 * length bytes.  tokens, hidden and out must be 4-byte aligned.
 * A model that realm's forward pass cannot run (an architecture other than
 * llama, qwen2 or gemma3, tensors it does not know) answers UNSUPPORTED.  A KV cache
 * belongs to the guest that created it and to one model; it holds K and V rows
 * of every layer for positions 0 .. n_ctx-1 (f16, as llama.cpp).
 * The host may compute the calls of many guests in one pass over the weights
 * (continuous batching) and may fill a KV cache with rows of a prefix it
 * computed before (the prefix cache): a call's results are the bits it gets
 * alone.  A call may wait for the pass it joins; past the guest's deadline it
 * answers DEADLINE. */

/* Embedding rows of n_tokens token ids (i32) into out [n_tokens][n_embd]
 * (gemma3: scaled by sqrt(n_embd)).  out must hold n_tokens * n_embd values
 * and may overlap tokens.  Returns the number of f32 values written, or
 * NO_MODEL, UNSUPPORTED, BAD_POINTER, BAD_ARGUMENT (n_tokens == 0, a pointer
 * not 4-byte aligned), LIMIT (n_tokens > REALM_FORWARD_MAX_TOKENS),
 * BAD_ARGUMENT (a token id outside [0, n_vocab)). */
REALM_IMPORT(int32_t, realm_forward_embedding,
             (int64_t model_id, const int32_t *tokens, uint32_t n_tokens, float *out));

/* Transformer layer layer_idx for hidden_len / n_embd tokens at positions
 * position, position + 1, ...: reads hidden, writes the layer's output to out
 * (hidden_len values; out may be hidden), and stores the tokens' K and V in
 * the KV cache, dropping the layer's later positions.  A prompt is one call
 * per layer; decoding is one token per call.  Returns hidden_len, or NO_MODEL,
 * UNSUPPORTED, NO_KV_CACHE, BAD_POINTER, BAD_ARGUMENT (layer_idx >= n_layer,
 * hidden_len not a positive multiple of n_embd, a pointer not 4-byte aligned,
 * a KV cache made for another model), LIMIT (more than
 * REALM_FORWARD_MAX_TOKENS tokens), CONTEXT_FULL (position + n_tokens > the
 * cache's n_ctx), BAD_ARGUMENT (position beyond the positions the layer
 * holds: no gaps). */
REALM_IMPORT(int32_t, realm_forward_layer,
             (int64_t model_id, uint32_t layer_idx, const float *hidden, uint32_t hidden_len, uint32_t position,
              int32_t kv_cache_id, float *out));

/* Logits of each of the hidden_len / n_embd rows of hidden (final norm and
 * output projection) into out [n_rows][n_vocab]; pass only the rows you need
 * (usually the last token's).  out_max_len counts f32 values; with 0 the call
 * writes nothing and returns n_rows * n_vocab.  Returns the number of values
 * written, or NO_MODEL, UNSUPPORTED, BAD_POINTER, BAD_ARGUMENT (hidden_len not
 * a positive multiple of n_embd, a pointer not 4-byte aligned), LIMIT (more
 * than REALM_FORWARD_MAX_TOKENS rows), TOO_LARGE, BUFFER_TOO_SMALL. */
REALM_IMPORT(int32_t, realm_forward_lm_head,
             (int64_t model_id, const float *hidden, uint32_t hidden_len, float *out, uint32_t out_max_len));

/* The whole forward pass in one call: the embedding of n_tokens token ids,
 * every layer at positions position, position + 1, ... (their K and V into
 * the KV cache, as realm_forward_layer), then the logits of the LAST token
 * into out (n_vocab f32 values).  The hidden states stay in the host.  With
 * out_max_len == 0 no logits are computed and nothing is written (a chunk of
 * a prompt that is not its last).  A guest's decode step is one call (not
 * layers + 2), and so one host call's overhead a token.  Returns the number
 * of values written (n_vocab, or 0), or NO_MODEL, UNSUPPORTED, NO_KV_CACHE,
 * BAD_POINTER, BAD_ARGUMENT (n_tokens == 0, a pointer not 4-byte aligned, a
 * KV cache made for another model), LIMIT (n_tokens >
 * REALM_FORWARD_MAX_TOKENS), BUFFER_TOO_SMALL (0 < out_max_len < n_vocab),
 * BAD_ARGUMENT (a token id outside [0, n_vocab)), CONTEXT_FULL, BAD_ARGUMENT
 * (position beyond the positions the cache holds: no gaps). */
REALM_IMPORT(int32_t, realm_forward,
             (int64_t model_id, const int32_t *tokens, uint32_t n_tokens, uint32_t position, int32_t kv_cache_id,
              float *out, uint32_t out_max_len));

/* A KV cache of n_ctx positions for a model.  Returns its id (> 0, never
 * reused by a host), or NO_MODEL, UNSUPPORTED, BAD_ARGUMENT (n_ctx == 0 or
 * above the model's training context), LIMIT (the guest's quota of KV caches,
 * in count or bytes, or the host's budget would be exceeded). */
REALM_IMPORT(int32_t, realm_kv_create, (int64_t model_id, uint32_t n_ctx));

/* Free a KV cache.  Returns REALM_OK, or NO_KV_CACHE. */
REALM_IMPORT(int32_t, realm_kv_free, (int32_t kv_cache_id));

/* Forget positions >= n_tokens in every layer, so they can be recomputed.
 * Returns the number of positions every layer still holds (>= 0), or
 * NO_KV_CACHE. */
REALM_IMPORT(int32_t, realm_kv_truncate, (int32_t kv_cache_id, uint32_t n_tokens));

/* ---- text out: the generation loop streams its text to the host ------------- */
#define REALM_TEXT_MAX 65536 /* longest text one realm_emit_text call takes, in bytes */
#define REALM_EMIT_STOP 1    /* realm_emit_text's answer when the host wants no more text */

/* Hand len bytes of generated text to the host: valid UTF-8, whole characters
 * (the guest holds back a character split across tokens, and text that may
 * begin a stop string).  Returns REALM_OK to go on, or REALM_EMIT_STOP when
 * the host wants the generation to end (the guest then stops without emitting
 * more), or BAD_POINTER, BAD_ARGUMENT (len > REALM_TEXT_MAX), BAD_UTF8. */
REALM_IMPORT(int32_t, realm_emit_text, (const char *text, uint32_t len));

/* ---- the model configuration the guest parses from a GGUF header ------------
 * guest_config() returns a pointer to this struct in guest memory.  No padding
 * (asserted below), little-endian.  Keys are GGUF metadata keys with {arch} =
 * general.architecture; a value absent from the file takes the default given. */
struct realm_config {
    int64_t model_id;           /* the host's id of the model */
    uint64_t n_tensors;         /* tensor infos in the header */
    uint64_t total_size;        /* bytes of tensor data, from the host (realm_get_model_info) */
    uint32_t header_len;        /* bytes from 0 to the start of tensor data */
    uint32_t gguf_version;      /* 2 or 3 */
    uint32_t n_layers;          /* {arch}.block_count, default 0 */
    uint32_t n_embd;            /* {arch}.embedding_length, default 0 */
    uint32_t n_ff;              /* {arch}.feed_forward_length, default 0 */
    uint32_t n_head;            /* {arch}.attention.head_count, default 0 */
    uint32_t n_head_kv;         /* {arch}.attention.head_count_kv, default n_head */
    uint32_t head_dim;          /* {arch}.attention.key_length, default n_embd / n_head (0 if n_head is 0) */
    uint32_t head_dim_v;        /* {arch}.attention.value_length, default head_dim */
    uint32_t rope_dim;          /* {arch}.rope.dimension_count, default head_dim */
    uint32_t n_vocab;           /* length of tokenizer.ggml.tokens, else {arch}.vocab_size, else 0 */
    uint32_t n_ctx_train;       /* {arch}.context_length, default 0 */
    uint32_t sliding_window;    /* {arch}.attention.sliding_window, default 0 (none); 0 for the
                                   architectures whose window llama.cpp ignores (all but gemma3) */
    uint32_t swa_pattern;       /* {arch}.attention.sliding_window_pattern; default 6 for gemma3
                                   (llama.cpp's fixed value), else 0.  With a window, layer i is
                                   local iff swa_pattern == 0 or i % swa_pattern < swa_pattern - 1 */
    float rope_freq_base;       /* {arch}.rope.freq_base, default 10000 */
    float rope_freq_base_swa;   /* {arch}.rope.freq_base_swa (local layers); default 10000 for
                                   gemma3 (llama.cpp's fixed value); rope_freq_base for the others */
    float rope_scale;           /* {arch}.rope.scaling.factor, default 1 (0 reads as 1) */
    float rms_eps;              /* {arch}.attention.layer_norm_rms_epsilon, default 1e-5 */
    uint32_t tokenizer;         /* REALM_TOKENIZER_* from tokenizer.ggml.model */
    int32_t bos_id;             /* tokenizer.ggml.bos_token_id, -1 if absent */
    int32_t eos_id;             /* tokenizer.ggml.eos_token_id, -1 if absent */
    int32_t unk_id;             /* tokenizer.ggml.unknown_token_id, -1 if absent */
    int32_t pad_id;             /* tokenizer.ggml.padding_token_id, -1 if absent */
    int32_t add_bos;            /* tokenizer.ggml.add_bos_token: 0, 1, or -1 if absent */
    int32_t add_eos;            /* tokenizer.ggml.add_eos_token: 0, 1, or -1 if absent */
    int32_t add_space_prefix;   /* tokenizer.ggml.add_space_prefix: 0, 1, or -1 if absent */
    char architecture[64];      /* general.architecture (1 to 63 bytes of UTF-8), NUL-terminated */
};
#define REALM_CONFIG_SIZE 192
_Static_assert(sizeof(struct realm_config) == REALM_CONFIG_SIZE, "struct realm_config has padding");

/* ---- exports: guest functions ------------------------------------------------
 * Besides these the module exports its linear memory as "memory" and wasi-libc's
 * reactor entry point "_initialize", which the host calls once, first.
 * A guest holds at most one model; loading or attaching another releases the
 * current one (removing it from the host if the guest stored it). */
#ifdef __wasm__
#define REALM_EXPORT(ret, name, params) __attribute__((export_name(#name))) ret name params
#else
#define REALM_EXPORT(ret, name, params) ret name params
#endif

/* REALM_ABI_VERSION, so a host can refuse a guest built for another ABI. */
REALM_EXPORT(uint32_t, guest_abi_version, (void));

/* malloc/free for the host to pass data in; guest_alloc returns 0 on failure. */
REALM_EXPORT(void *, guest_alloc, (uint32_t size));
REALM_EXPORT(void, guest_free, (void *ptr));

/* The seed's path: parse the GGUF file in [gguf, gguf + len), store it in the
 * host (realm_store_model), keep the header and the config.  The caller keeps
 * the buffer.  Returns the model id, or BAD_GGUF, NO_MEMORY, an import's code. */
REALM_EXPORT(int64_t, guest_load_model, (const void *gguf, uint32_t len));

/* Attach to a model the host loaded and shared with this guest: fetch its
 * header with realm_get_metadata and parse it; the weights stay in the host.
 * Returns REALM_OK, or BAD_GGUF, NO_MEMORY, an import's code. */
REALM_EXPORT(int32_t, guest_attach_model, (int64_t model_id));

/* Release the current model (realm_remove_model if this guest stored it).
 * Returns REALM_OK, NO_MODEL (none held), or realm_remove_model's code. */
REALM_EXPORT(int32_t, guest_unload_model, (void));

/* The current model's configuration, or 0 when the guest holds none. */
REALM_EXPORT(const struct realm_config *, guest_config, (void));

/* Fetch a tensor of the current model through realm_get_tensor into out.
 * With out_max_len == 0 returns the bytes needed (from the guest's own parse of
 * the header).  Returns bytes written, or NO_MODEL, NO_TENSOR, TOO_LARGE,
 * BUFFER_TOO_SMALL, or realm_get_tensor's code. */
REALM_EXPORT(int32_t, guest_fetch_tensor, (const char *name, uint32_t name_len, float *out, uint32_t out_max_len));

/* ---- tokenizer and text generation --------------------------------------------
 * The guest tokenizes with the current model's vocabulary (tokenizer.ggml.*:
 * "gpt2" byte-level BPE or "llama" SentencePiece, token ids as llama.cpp's),
 * built on first use and kept with the model (Gemma 3's 262,144 tokens: 4 MiB).
 * It generates one text at a time, in the steps the host calls in order:
 *
 *   guest_generate_start    tokenize the prompt, check the context, allocate
 *   guest_generate_prefill  a KV cache, then the prompt: realm_forward per n_batch tokens
 *   guest_generate_run      sample, stream text (realm_emit_text), decode
 *                           token by token (realm_forward) until a stop
 *   guest_generate_result   counts, token ids and why it stopped
 *   guest_generate_end      free the KV cache and the buffers
 *
 * The sampler is llama.cpp's chain: penalties, top-k, top-p, min-p,
 * temperature, then a draw from a seeded xoshiro256** stream (guest/sampler.h). */

/* flags of guest_tokenize and realm_generate_params.flags */
#define REALM_TOKENIZE_ADD_SPECIAL 1   /* BOS / EOS where the vocabulary asks for them */
#define REALM_TOKENIZE_PARSE_SPECIAL 2 /* the text of control tokens ("<|im_start|>") becomes them */
#define REALM_GENERATE_IGNORE_EOG 4    /* go on past end-of-generation tokens (benchmarks) */
/* flags of guest_detokenize */
#define REALM_DETOKENIZE_SPECIAL 1     /* control tokens render as their text, else as nothing */

/* why a generation stopped: realm_generate_result.stop_reason */
#define REALM_STOP_NONE 0   /* not run, or ended by an error */
#define REALM_STOP_EOG 1    /* an end-of-generation token (not part of the completion) */
#define REALM_STOP_STRING 2 /* a stop string: the text ends before it */
#define REALM_STOP_LENGTH 3 /* max_tokens reached, or the context is full */
#define REALM_STOP_HOST 4   /* realm_emit_text answered REALM_EMIT_STOP */

#define REALM_STOP_STRINGS_MAX 16  /* stop strings one generation takes */
#define REALM_STOP_STRING_MAX 1024 /* longest stop string, in bytes */
#define REALM_BATCH_DEFAULT 512    /* prompt tokens per forward call when n_batch is 0 (all it may take) */

/* What guest_generate_start reads.  No padding (asserted by the guest). */
struct realm_generate_params {
    uint64_t seed;              /* of the sampler's random stream */
    uint32_t n_ctx;             /* prompt + completion at most; 0: the model's n_ctx_train */
    int32_t max_tokens;         /* tokens to generate at most; <= 0: until the context is full */
    float temperature;          /* <= 0: greedy (the highest logit, the lowest id on ties) */
    int32_t top_k;              /* <= 0: off */
    float top_p;                /* >= 1: off */
    float min_p;                /* <= 0: off */
    float repeat_penalty;       /* 1: off */
    float frequency_penalty;    /* 0: off */
    float presence_penalty;     /* 0: off */
    int32_t penalty_last_n;     /* tokens (the prompt's too) the penalties look back on; 0: off */
    uint32_t flags;             /* REALM_TOKENIZE_* for the prompt, REALM_GENERATE_IGNORE_EOG */
    uint32_t n_batch;           /* prompt tokens per forward call, <= REALM_FORWARD_MAX_TOKENS;
                                   0: REALM_BATCH_DEFAULT */
};
#define REALM_GENERATE_PARAMS_SIZE 56

/* What guest_generate_result points to.  No padding (asserted by the guest). */
struct realm_generate_result {
    uint32_t tokens;            /* guest address of n_prompt + n_completion token ids (i32) */
    uint32_t n_prompt;          /* prompt tokens */
    uint32_t n_completion;      /* tokens generated (an end-of-generation token is not counted) */
    uint32_t n_decoded;         /* single-token forward passes guest_generate_run made */
    uint32_t n_ctx;             /* prompt + completion at most: the KV cache's positions */
    uint32_t stop_reason;       /* REALM_STOP_* */
};
#define REALM_GENERATE_RESULT_SIZE 24

/* Tokenize text_len bytes of text (flags: REALM_TOKENIZE_*) into out, which
 * holds out_max_len i32 values; with 0 only count.  Any bytes are accepted
 * (invalid UTF-8 is handled as llama.cpp does).  Returns the number of
 * tokens, or BAD_ARGUMENT (unknown flags), NO_MODEL, UNSUPPORTED (no
 * tokenizer, or one realm does not implement), BAD_GGUF (a malformed
 * vocabulary), NO_MEMORY, TOO_LARGE (text over 256 KiB), BUFFER_TOO_SMALL. */
REALM_EXPORT(int32_t, guest_tokenize,
             (const char *text, uint32_t text_len, uint32_t flags, int32_t *out, uint32_t out_max_len));

/* The bytes of n_tokens token ids, concatenated (llama.cpp's pieces: not
 * always valid UTF-8 on their own), into out, which holds out_max_len bytes;
 * with 0 only measure.  Returns the length, or BAD_ARGUMENT (unknown flags),
 * NO_MODEL, UNSUPPORTED, BAD_GGUF, NO_MEMORY, BAD_ARGUMENT (an id outside the
 * vocabulary), TOO_LARGE, BUFFER_TOO_SMALL. */
REALM_EXPORT(int32_t, guest_detokenize,
             (const int32_t *tokens, uint32_t n_tokens, uint32_t flags, char *out, uint32_t out_max_len));

/* Begin a generation (ending any previous one): tokenize the prompt (an empty
 * one becomes [BOS]), check that prompt + max_tokens fits n_ctx, allocate.
 * stops: up to REALM_STOP_STRINGS_MAX stop strings, each a u32 length then
 * that many bytes of UTF-8, stops_len bytes in all.  Returns the prompt's
 * token count, or NO_MODEL, BAD_ARGUMENT (params out of range, a malformed
 * stops list, an empty prompt without BOS, no context known), BAD_UTF8 (a
 * stop string), the tokenizer's codes (UNSUPPORTED, BAD_GGUF, NO_MEMORY,
 * TOO_LARGE), CONTEXT_FULL (prompt + max_tokens > n_ctx, or no room left). */
REALM_EXPORT(int32_t, guest_generate_start,
             (const struct realm_generate_params *params, const char *prompt, uint32_t prompt_len,
              const void *stops, uint32_t stops_len));

/* Create the KV cache and run the prompt through every layer (n_batch tokens
 * a call), then the last token's logits.  Returns REALM_OK, or BAD_ARGUMENT
 * (not right after guest_generate_start), the forward imports' codes. */
REALM_EXPORT(int32_t, guest_generate_prefill, (void));

/* Generate until an end-of-generation token, a stop string, max_tokens, a
 * full context or the host's REALM_EMIT_STOP, streaming the text through
 * realm_emit_text.  Returns the number of tokens generated, or BAD_ARGUMENT
 * (not right after guest_generate_prefill), NO_MEMORY, the imports' codes. */
REALM_EXPORT(int32_t, guest_generate_run, (void));

/* The current generation's result (valid until guest_generate_end), or 0. */
REALM_EXPORT(const struct realm_generate_result *, guest_generate_result, (void));

/* End the generation: free its KV cache (realm_kv_free) and buffers.  Returns
 * REALM_OK (also when none is going on), or realm_kv_free's code. */
REALM_EXPORT(int32_t, guest_generate_end, (void));

#endif /* REALM_ABI_H */
