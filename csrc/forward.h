/* The transformer forward pass over quantized weights, one piece at a time:
 * embedding rows, one layer for a run of tokens, and the LM head.
 *
 * The model is described by plain structs (as llama2.c's run.c): a config, a
 * weights table holding (type, data pointer, dims) per tensor, a KV cache per
 * sequence and a scratch (run state) per sequence.  The caller (realm/_forward.pxi)
 * reads the GGUF metadata and tensor table, fills these structs and checks them
 * with realm_model_check; the weights stay where they are (the file mapping) and
 * are never expanded to f32 -- the matrix products read the blocks directly.
 *
 * The layers follow realm_config's feature flags (qk_norm, post_norms, scale_q, gelu,
 * qkv_bias, rope_neox, the embedding scale, the sliding window) and the optional rope_freqs
 * tensor; realm/forward.py's architecture table (llama, qwen2, qwen3, phi3, gemma3) sets them
 * and cuts fused matrices (attn_qkv, phi3's gate+up) into the separate ones.  The two ends of
 * the range (the math follows llama.cpp's graphs):
 *   llama   attn_norm -> q,k,v -> rope (pairs 2i, 2i+1) -> attention(scale 1/sqrt(head_dim))
 *           -> wo -> +residual -> ffn_norm -> silu(gate) * up -> down -> +residual
 *   gemma3  embeddings * sqrt(n_embd); attn_norm -> q,k,v -> rmsnorm per head of q and k
 *           -> rope (pairs i, i + n_rot/2; local layers use rope_base_swa) -> q * attn_scale
 *           -> attention (sliding window on local layers) -> wo -> post-attention norm
 *           -> +residual -> ffn_norm -> gelu(gate) * up -> down -> post-FFN norm -> +residual
 * Both end with output_norm and the output projection (tied to token_embd when
 * the file has no output.weight).  Every step rounds as llama.cpp's CPU backend
 * does when it evaluates one token (matmul.h, ops.h; the KV cache f16 or f32),
 * so the logits are its bits, whatever the batch.
 *
 * Threads: each layer (each chunk of at most REALM_FWD_CHUNK tokens) runs in ONE
 * OpenMP parallel region of model->nthreads threads, calling the kernels' work-
 * sharing (_ws) variants, so an op costs one barrier rather than a thread-team
 * start.  Functions return 0 or a negative REALM_E* code (matmul.h) and, on
 * failure, leave their outputs and the KV cache as they were. */
#ifndef REALM_FORWARD_H
#define REALM_FORWARD_H

#include "ops.h"

/* Besides matmul.h's codes (REALM_EINVAL: an index, position, token id or
 * size out of range, or a KV cache made for another model shape): */
#define REALM_EKV_FULL (-5) /* the tokens would not fit in the KV cache */

/* Tokens one parallel region handles: a longer run is cut into chunks of this
 * many (the results do not depend on the cut: every token's arithmetic is the
 * same in any batch), which bounds the scratch memory. */
#define REALM_FWD_CHUNK 256

/* The model's shape and the features its layers use (realm/forward.py's architecture table
 * sets them: the C code follows these flags, never an architecture's name). */
typedef struct {
    int n_layer, n_embd, n_ff;
    int n_head, n_head_kv, head_dim;
    int n_rot;                 /* leading values of each head that RoPE rotates */
    int n_vocab;
    float rms_eps;
    float rope_base;           /* global layers */
    float rope_base_swa;       /* local (sliding-window) layers */
    float rope_freq_scale;     /* 1 / linear scaling factor */
    int rope_neox;             /* 0: pairs (2i, 2i+1); 1: pairs (i, i + n_rot/2) */
    int sliding_window;        /* keys a local layer's query sees (0: no local layers) */
    int swa_pattern;           /* layer il is local iff il % swa_pattern < swa_pattern - 1 (0: all) */
    float attn_scale;          /* the softmax scale, or (scale_q) q's factor after RoPE */
    float embd_scale;          /* embedding rows are multiplied by it (1: not at all) */
    int qk_norm;               /* RMSNorm of each head of q and k (attn_q_norm, attn_k_norm) before RoPE */
    int post_norms;            /* RMSNorm of the attention and FFN outputs before each residual add */
    int scale_q;               /* q * attn_scale after RoPE, the softmax unscaled (gemma3) */
    int gelu;                  /* the FFN gate's activation: GELU, else SiLU */
    int qkv_bias;              /* q, k and v have biases (bq, bk, bv), added after the projections */
} realm_config;

/* One weight tensor as stored: `rows` rows of `cols` values of `type` blocks,
 * row-major.  A vector has rows == 1.  Norm weights must be F32. */
typedef struct {
    int type; /* enum realm_type */
    const void *data;
    int64_t rows, cols;
} realm_tensor;

typedef struct {
    realm_tensor attn_norm, wq, wk, wv, wo;
    realm_tensor bq, bk, bv;               /* with qkv_bias only: F32 biases of q, k, v */
    realm_tensor attn_q_norm, attn_k_norm; /* with qk_norm only (data NULL otherwise) */
    realm_tensor attn_post_norm;           /* with post_norms only */
    realm_tensor ffn_norm, ffn_gate, ffn_up, ffn_down;
    realm_tensor ffn_post_norm;            /* with post_norms only */
} realm_layer_weights;

typedef struct {
    realm_config c;
    realm_tensor tok_embd, output_norm, output; /* output may be tok_embd's data (tied) */
    realm_tensor rope_freqs;                    /* data NULL, or F32 [n_rot / 2]: RoPE frequency
                                                   divisors of every layer (llama3's rope_freqs) */
    realm_layer_weights *layers;                /* [n_layer] */
    int nthreads;                               /* threads per parallel region (>= 1) */
    int isa;                                    /* a resolved REALM_ISA_* (not AUTO) */
    int profile;                                /* time each op into realm_scratch.prof */
} realm_model;

/* 0 when the config and every tensor's type and dims agree (so no kernel can
 * read outside a tensor), else REALM_EINVAL / REALM_EUNSUPPORTED.  `what` gets a
 * short description of the first problem (may be NULL). */
int realm_model_check(const realm_model *m, char *what, int what_len);

/* Whether layer il uses sliding-window attention (and rope_base_swa). */
int realm_layer_is_local(const realm_config *c, int il);

/* ---- KV cache: K and V rows of every layer for positions 0 .. n_ctx-1 ---- */
typedef struct {
    int type;          /* REALM_TYPE_F16 or REALM_TYPE_F32 */
    int n_layer;
    int64_t n_ctx;     /* positions */
    int64_t row;       /* values per position and layer: n_head_kv * head_dim */
    int64_t *n_filled; /* [n_layer]: positions 0 .. n_filled-1 hold this layer's K and V */
    void *k, *v;       /* [n_layer][n_ctx][row] */
} realm_kv_cache;

/* Bytes a cache of n_ctx positions takes (K, V and bookkeeping), or a negative
 * code for a bad size/type.  Computed without overflow for any n_ctx. */
int64_t realm_kv_bytes(const realm_config *c, int64_t n_ctx, int type);
/* A zeroed cache, or NULL (bad arguments or out of memory). */
realm_kv_cache *realm_kv_new(const realm_config *c, int64_t n_ctx, int type);
void realm_kv_free(realm_kv_cache *kv);
/* Forget positions >= n in every layer (they will be recomputed). */
void realm_kv_truncate(realm_kv_cache *kv, int64_t n);
/* Positions every layer holds: the smallest n_filled. */
int64_t realm_kv_length(const realm_kv_cache *kv);

/* ---- per-sequence scratch: activations of up to REALM_FWD_CHUNK tokens ---- */
enum realm_op {
    REALM_OP_ATTN_NORM, /* attn_norm */
    REALM_OP_QKV,       /* quantize + q, k, v projections */
    REALM_OP_ROPE,      /* q/k norms, RoPE, q scale, K/V into the cache */
    REALM_OP_ATTN,      /* attention over the cache */
    REALM_OP_WO,        /* quantize + output projection */
    REALM_OP_FFN_NORM,  /* post-attention norm, residual add, ffn_norm (one pass per row) */
    REALM_OP_FFN_UP,    /* quantize + gate and up projections */
    REALM_OP_GATE,      /* silu/gelu(gate) * up */
    REALM_OP_FFN_DOWN,  /* quantize + down projection */
    REALM_OP_RESIDUAL,  /* post-FFN norm, residual add */
    REALM_OP_COUNT
};

typedef struct {
    int64_t cap;                  /* tokens it has room for */
    float *xn;                    /* normed input [cap][n_embd] */
    float *q, *k, *v, *att;       /* [cap][n_head|n_head_kv * head_dim] */
    float *gate, *up;             /* [cap][n_ff] */
    float *proj;                  /* wo / ffn_down output [cap][n_embd] */
    float *rope[2];               /* cos/sin tables [cap][n_rot] of global (0) and local (1) layers */
    int64_t rope_n[2];            /* tokens each table holds (0: none), so the layers of a */
    float rope_base[2];           /* step share one table instead of each making its own */
    int32_t *pos;                 /* [cap]: each token's position */
    int32_t *seg;                 /* [cap]: the realm_seq each token belongs to */
    int32_t *rope_pos[2];         /* [cap]: the positions each rope table was made for */
    const void **kv_k, **kv_v;    /* [cap]: this layer's K and V rows of each token's cache */
    int64_t *kv_len;              /* [cap]: positions each token's cache has room for */
    void *act[REALM_ACT_COUNT];   /* activations by act type: Q8, Q8_K, F16, BF16 (64-byte aligned; F32's unused) */
    void *block;                  /* the one allocation all of the above live in */
    float *attn;                  /* attention's per-thread scratch (realm_attn_scratch each) */
    int64_t attn_floats;          /* its size */
    float *hidden;                /* realm_forward_batch's hidden rows [hidden_cap][n_embd] */
    int64_t hidden_cap;
    float *logits;                /* its logits of several rows [logits_cap][n_vocab] */
    int64_t logits_cap;
    double prof[REALM_OP_COUNT];  /* seconds per op, when model->profile */
} realm_scratch;

/* Make room for n_tok tokens (at most REALM_FWD_CHUNK are kept at once). */
int realm_scratch_reserve(realm_scratch *s, const realm_model *m, int64_t n_tok);
void realm_scratch_free(realm_scratch *s);

/* ---- the forward pass ---- */

/* out[t] = row tokens[t] of token_embd, dequantized (then * embd_scale).
 * Token ids outside [0, n_vocab) give REALM_EINVAL and write nothing.
 * tokens and out may overlap. */
int realm_forward_embedding(const realm_model *m, const int32_t *tokens, int64_t n_tok, float *out);

/* Layer il for n_tok tokens at positions pos .. pos+n_tok-1: reads in
 * [n_tok][n_embd], writes out [n_tok][n_embd], writes K and V of
 * those positions into kv and marks the layer filled up to pos + n_tok (later
 * positions of the layer are dropped).  Needs pos + n_tok <= n_ctx
 * (REALM_EKV_FULL) and pos <= the layer's n_filled (no gaps; REALM_EINVAL).
 * out may be in, or overlap it. */
int realm_forward_layer(const realm_model *m, int il, const float *in, int64_t n_tok, int64_t pos,
                        realm_kv_cache *kv, realm_scratch *s, float *out);

/* ---- many sequences in one pass (continuous batching) ----
 *
 * The tokens of every sequence go through each weight matrix together (each
 * block is decoded once for all of them); RoPE, the K/V store and attention
 * are per token, over its own sequence's cache.  Every token's arithmetic is
 * the same as in a pass of its sequence alone -- the matrix products and
 * attention give each row the same bits in any batch -- so the results do not
 * depend on what else is in the batch (forward.c's tests hold it to that). */
typedef struct {
    const int32_t *tokens; /* realm_forward_batch: the n token ids (unused by the layer form) */
    int64_t n;             /* tokens, >= 1 */
    int64_t pos;           /* position of the first: at most what kv holds (no gap) */
    realm_kv_cache *kv;    /* the sequence's cache: no two sequences of a batch share one */
    float *logits;         /* NULL, or [n_vocab]: receives the last token's logits */
} realm_seq;

/* 0 when the sequence can run through layer il (il < 0: every layer, and its
 * token ids are checked too), else REALM_EINVAL (a bad size, position or token
 * id, a cache of another shape) or REALM_EKV_FULL.  A batch is refused as a
 * whole when one of its sequences is, so callers check each first. */
int realm_seq_check(const realm_model *m, int il, const realm_seq *q);

/* Embedding, every layer and the requested logits of n_seq sequences in one
 * pass; the hidden rows live in s. */
int realm_forward_batch(const realm_model *m, const realm_seq *seqs, int n_seq, realm_scratch *s);

/* Layer il of n_seq sequences: x holds their hidden rows back to back
 * ([sum of n][n_embd]) and is updated in place. */
int realm_forward_layer_batch(const realm_model *m, int il, const realm_seq *seqs, int n_seq, float *x,
                              realm_scratch *s);

/* logits [n_rows][n_vocab] = output_norm(hidden [n_rows][n_embd]) W_out^T.
 * hidden and logits may overlap (hidden is read first). */
int realm_forward_lm_head(const realm_model *m, const float *hidden, int64_t n_rows, float *logits);

#endif
