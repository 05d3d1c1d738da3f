"""Helpers of the forward-pass tests: a NumPy model of the forward pass and tiny GGUFs.

RefModel is a plain NumPy model of the llama, qwen2/3, phi3 and gemma3 forward passes in float64,
written from the architectures' definitions (llama.cpp's graphs), not from
csrc/forward.c: weights are dequantized exactly (realm.dequantize is bit-exact with
llama.cpp), activations stay float64 (no 8-bit activation quantization, no f16 KV
cache), attention is a plain masked softmax over the whole sequence.  The C forward
pass must agree with it to within the rounding those shortcuts add."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

import numpy as np

from ggml_ref import load_ggml_cpu
from realm import dequantize
from realm.forward import ForwardConfig


@lru_cache(maxsize=1)
def llama_cpp_exact(float_weights: bool = False) -> bool:
    """Whether realm's logits must equal llama.cpp's bit for bit.  realm's forward pass repeats
    the float steps of llama.cpp's CPU backend built for x86 with AVX-512 (llama-cpp-python
    builds natively, so that is the installed library on an AVX-512 machine), evaluating one
    token at a time; builds for other CPUs (AVX2 only, ARM) sum some products in other orders
    and use another exp, and agree with realm to rounding only.  float_weights: the model has
    F16 / BF16 matrices, whose products are llama.cpp's where it was built with AVX512_BF16 too
    (without, its BF16 kernel multiplies and adds in f32 instead of vdpbf16ps's steps)."""
    lib = load_ggml_cpu()
    x86 = platform.machine() in ("x86_64", "AMD64")
    feats = ("avx512", "avx2", "fma", "f16c") + (("avx512_bf16",) if float_weights else ())
    return x86 and all(getattr(lib, f"ggml_cpu_has_{f}")() for f in feats)


class RefModel:
    """Weights are dequantized when used and not kept (a layer at a time in memory)."""

    def __init__(self, stored, cfg: ForwardConfig):
        self.t, self.cfg = stored.tensors, cfg

    def w(self, name: str) -> np.ndarray:
        return self.t[name].dequantize().astype(np.float64)

    def rows(self, name: str, idx) -> np.ndarray:
        """Rows idx of a matrix, dequantizing only those."""
        t = self.t[name]
        return dequantize(np.ascontiguousarray(t.data[idx]), t.dtype).astype(np.float64)

    def project_out(self, h: np.ndarray, name: str, chunk: int = 16384) -> np.ndarray:
        """h @ W^T for a large W, dequantized chunk by chunk."""
        n_out = self.t[name].shape[0]
        return np.concatenate([h @ self.rows(name, slice(i, i + chunk)).T for i in range(0, n_out, chunk)], axis=1)

    def fused(self, p: str, pattern: str) -> np.ndarray:
        """q, k and v weights (or biases) of layer prefix p, stacked as a fused attn_qkv holds them."""
        if p + pattern.format("qkv") in self.t:
            return self.w(p + pattern.format("qkv"))
        return np.concatenate([self.w(p + pattern.format(x)) for x in "qkv"])

    def rmsnorm(self, x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + self.cfg.rms_eps)
        return y if w is None else y * w

    def rope(self, x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
        """x [n, heads, head_dim] rotated by position (llama3's rope_freqs divide the frequencies)."""
        c = self.cfg
        half = c.n_rot // 2
        inv = base ** (-2.0 * np.arange(half) / c.n_rot)
        if "rope_freqs.weight" in self.t:
            inv = inv / self.w("rope_freqs.weight")
        theta = pos[:, None].astype(np.float64) * c.rope_freq_scale * inv[None, :]  # [n, half]
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        y = x.copy()
        if c.rope_neox:
            a, b = x[..., :half], x[..., half:c.n_rot]
            y[..., :half], y[..., half:c.n_rot] = a * cos - b * sin, a * sin + b * cos
        else:
            a, b = x[..., 0:c.n_rot:2], x[..., 1:c.n_rot:2]
            y[..., 0:c.n_rot:2], y[..., 1:c.n_rot:2] = a * cos - b * sin, a * sin + b * cos
        return y

    def forward(self, tokens: list[int]) -> np.ndarray:
        """Logits [n, n_vocab] of a whole sequence from position 0."""
        c = self.cfg
        n = len(tokens)
        pos = np.arange(n)
        x = self.rows("token_embd.weight", np.asarray(tokens)) * np.float64(np.float32(c.embd_scale))
        group = c.n_head // c.n_head_kv
        for il in range(c.n_layer):
            p = f"blk.{il}."
            h = self.rmsnorm(x, self.w(p + "attn_norm.weight"))
            qkv = h @ self.fused(p, "attn_{}.weight").T
            if c.qkv_bias:
                qkv = qkv + self.fused(p, "attn_{}.bias")
            q_width, kv_width = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
            q = qkv[:, :q_width].reshape(n, c.n_head, c.head_dim)
            k = qkv[:, q_width:q_width + kv_width].reshape(n, c.n_head_kv, c.head_dim)
            v = qkv[:, q_width + kv_width:].reshape(n, c.n_head_kv, c.head_dim)
            if c.qk_norm:
                q = self.rmsnorm(q, self.w(p + "attn_q_norm.weight"))
                k = self.rmsnorm(k, self.w(p + "attn_k_norm.weight"))
            local = c.layer_is_local(il)
            base = c.rope_base_swa if local else c.rope_base
            q, k = self.rope(q, pos, base), self.rope(k, pos, base)
            scores = np.einsum("thd,shd->hts", q, np.repeat(k, group, axis=1)) * c.attn_scale
            allowed = pos[None, :] <= pos[:, None]
            if local:
                allowed &= pos[:, None] - pos[None, :] < c.sliding_window
            scores = np.where(allowed[None], scores, -np.inf)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            att = np.einsum("hts,shd->thd", scores, np.repeat(v, group, axis=1)).reshape(n, -1)
            o = att @ self.w(p + "attn_output.weight").T
            if c.post_norms:
                o = self.rmsnorm(o, self.w(p + "post_attention_norm.weight"))
            x = x + o
            h = self.rmsnorm(x, self.w(p + "ffn_norm.weight"))
            if p + "ffn_gate.weight" in self.t:
                g, u = h @ self.w(p + "ffn_gate.weight").T, h @ self.w(p + "ffn_up.weight").T
            else:  # phi3: the gate's rows, then the up rows, in ffn_up
                g, u = np.split(h @ self.w(p + "ffn_up.weight").T, 2, axis=1)
            if c.gelu:  # tanh-form GELU, as ggml
                act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * g * (1 + 0.044715 * g * g)))
            else:
                act = g / (1 + np.exp(-g))
            d = (act * u) @ self.w(p + "ffn_down.weight").T
            if c.post_norms:
                d = self.rmsnorm(d, self.w(p + "post_ffw_norm.weight"))
            x = x + d
        h = self.rmsnorm(x, self.w("output_norm.weight"))
        return self.project_out(h, "token_embd.weight" if c.tied_output else "output.weight")


def _tiny_writer(path: Path, arch: str, n_embd: int, n_ff: int, n_layer: int, n_head: int, n_head_kv: int):
    """A GGUFWriter with a small model's hyper-parameters (context 128, RMS eps 1e-6, rope base 1e6)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    return w


def _tiny_vocab(w, n_vocab: int, pre: str) -> None:
    """A 64-token byte-level BPE vocabulary of "t0".."t63" (BOS 1, EOS 2)."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_token_merges(["t 1"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def _quantize(x: np.ndarray, qtype) -> np.ndarray:
    """gguf-py's quantizer where it has one, else llama.cpp's (ggml_quantize_chunk, the IQ
    formats) under a flat importance matrix."""
    from gguf.quants import quantize

    try:
        return quantize(x, qtype)
    except NotImplementedError:
        from ggml_ref import load_ggml

        flat = np.ones(x.shape[-1], dtype=np.float32)
        return load_ggml().quantize(x, int(qtype), flat).reshape(*x.shape[:-1], -1)


def _tensor_writer(w, rng):
    """tensor(name, shape, qtype or None (F32), scale, offset): Gaussian values written to w."""

    def tensor(name: str, shape: tuple[int, ...], qtype, scale: float, offset: float = 0.0) -> None:
        x = (rng.standard_normal(shape) * scale + offset).astype(np.float32)
        if qtype is None:
            w.add_tensor(name, x)
        else:
            blocks = _quantize(x, qtype)
            w.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)

    return tensor


def write_tiny_gemma3(path: Path, *, seed: int = 0, sliding_window: int = 4, pattern: int = 3,
                      extra: dict[str, np.ndarray] | None = None) -> Path:
    """A 4-layer gemma3-shaped GGUF (n_embd 128, 4 heads of 64 over 2 KV heads, a 64-token
    vocabulary) with a short sliding window, so local layers drop keys within a few tokens.
    Norm weights are near 1 (as Gemma's files, which hold 1 + w); `extra` tensors are added
    as they are.  Written with gguf.GGUFWriter."""
    import gguf

    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_vocab, n_layer, n_head, n_head_kv, head_dim = 128, 256, 64, 4, 4, 2, 64
    Q = gguf.GGMLQuantizationType
    w = _tiny_writer(path, "gemma3", n_embd, n_ff, n_layer, n_head, n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_sliding_window(sliding_window)
    w.add_uint32("gemma3.attention.sliding_window_pattern", pattern)
    _tiny_vocab(w, n_vocab, "default")
    tensor = _tensor_writer(w, rng)

    tensor("token_embd.weight", (n_vocab, n_embd), Q.Q8_0, 0.1)
    for i in range(n_layer):
        p = f"blk.{i}."
        tensor(p + "attn_norm.weight", (n_embd,), None, 0.1, 1.0)
        tensor(p + "attn_q.weight", (n_head * head_dim, n_embd), Q.Q5_0, 0.2)
        tensor(p + "attn_k.weight", (n_head_kv * head_dim, n_embd), Q.Q5_0, 0.2)
        tensor(p + "attn_v.weight", (n_head_kv * head_dim, n_embd), Q.Q8_0, 0.2)
        tensor(p + "attn_q_norm.weight", (head_dim,), None, 0.1, 1.0)
        tensor(p + "attn_k_norm.weight", (head_dim,), None, 0.1, 1.0)
        tensor(p + "attn_output.weight", (n_embd, n_head * head_dim), Q.Q8_0, 0.1)
        tensor(p + "post_attention_norm.weight", (n_embd,), None, 0.1, 1.0)
        tensor(p + "ffn_norm.weight", (n_embd,), None, 0.1, 1.0)
        tensor(p + "ffn_gate.weight", (n_ff, n_embd), Q.Q4_0, 0.2)
        tensor(p + "ffn_up.weight", (n_ff, n_embd), Q.Q4_1, 0.2)
        tensor(p + "ffn_down.weight", (n_embd, n_ff), Q.Q8_0, 0.1)
        tensor(p + "post_ffw_norm.weight", (n_embd,), None, 0.1, 1.0)
    tensor("output_norm.weight", (n_embd,), None, 0.1, 1.0)
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny(path: Path, arch: str, *, seed: int = 0, pre: str = "default", n_embd: int = 128,
               head_dim: int = 32, qkv_bias: bool = False, qk_norm: bool = False, fused_qkv: bool = False,
               fused_gate_up: bool = False, rope_freqs: bool = False, sliding_window: int = 0,
               types: dict[str, str] | None = None, override: dict[str, np.ndarray] | None = None) -> Path:
    """A 2-layer GGUF of `arch` (n_embd 128, 4 heads of head_dim over 2 KV heads, a 64-token
    vocabulary, a tied output) with the given features: q/k/v biases, per-head q/k norms, one
    fused attn_qkv, phi3's fused gate+up in ffn_up, llama3's rope_freqs (divisors 1..8) and a
    sliding-window key (which llama.cpp ignores for every architecture but gemma3).  The
    weights are of several types, Q4_0 (which llama.cpp repacks) among them; `types` gives
    other ones by role ({"ffn_down": "IQ2_XXS", ...}: attn_q .. ffn_down, attn_qkv and
    token_embd, which is also the output), `override` writes the given arrays in place of
    tensors of those names."""
    import gguf

    rng = np.random.default_rng(seed)
    n_ff, n_vocab, n_layer, n_head, n_head_kv = 2 * n_embd, 64, 2, 4, 2
    q_rows, kv_rows = n_head * head_dim, n_head_kv * head_dim
    Q = gguf.GGMLQuantizationType
    w = _tiny_writer(path, arch, n_embd, n_ff, n_layer, n_head, n_head_kv)
    if head_dim != n_embd // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if sliding_window:
        w.add_sliding_window(sliding_window)
    _tiny_vocab(w, n_vocab, pre)
    write = _tensor_writer(w, rng)

    def tensor(name: str, shape: tuple[int, ...], qtype, *args) -> None:
        role = name.removeprefix(f"blk.{name.split('.')[1]}.") if name.startswith("blk.") else name
        role = role.removesuffix(".weight")
        if override and name in override:
            w.add_tensor(name, override[name])
        else:
            if types and role in types:
                qtype = Q[types[role]]
            write(name, shape, qtype, *args)

    tensor("token_embd.weight", (n_vocab, n_embd), Q.Q8_0, 0.5)
    if rope_freqs:
        if override and "rope_freqs.weight" in override:
            w.add_tensor("rope_freqs.weight", override["rope_freqs.weight"])
        else:
            w.add_tensor("rope_freqs.weight", rng.uniform(1.0, 8.0, head_dim // 2).astype(np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        tensor(p + "attn_norm.weight", (n_embd,), None, 0.1, 1.0)
        if fused_qkv:
            tensor(p + "attn_qkv.weight", (q_rows + 2 * kv_rows, n_embd), Q.Q4_0, 0.2)
        else:
            tensor(p + "attn_q.weight", (q_rows, n_embd), Q.Q5_0, 0.2)
            tensor(p + "attn_k.weight", (kv_rows, n_embd), Q.Q4_1, 0.2)
            tensor(p + "attn_v.weight", (kv_rows, n_embd), Q.Q8_0, 0.2)
        if qkv_bias:
            tensor(p + "attn_q.bias", (q_rows,), None, 0.5)
            tensor(p + "attn_k.bias", (kv_rows,), None, 0.5)
            tensor(p + "attn_v.bias", (kv_rows,), None, 0.5)
        if qk_norm:
            tensor(p + "attn_q_norm.weight", (head_dim,), None, 0.1, 1.0)
            tensor(p + "attn_k_norm.weight", (head_dim,), None, 0.1, 1.0)
        tensor(p + "attn_output.weight", (n_embd, q_rows), Q.Q8_0, 0.1)
        tensor(p + "ffn_norm.weight", (n_embd,), None, 0.1, 1.0)
        if fused_gate_up:
            tensor(p + "ffn_up.weight", (2 * n_ff, n_embd), Q.Q4_0, 0.2)
        else:
            tensor(p + "ffn_gate.weight", (n_ff, n_embd), Q.Q4_0, 0.2)
            tensor(p + "ffn_up.weight", (n_ff, n_embd), Q.Q4_1, 0.2)
        tensor(p + "ffn_down.weight", (n_embd, n_ff), Q.Q8_0, 0.1)
    tensor("output_norm.weight", (n_embd,), None, 0.1, 1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


#: The tiny models of each architecture's features (write_tiny's keywords).
TINY_ARCHS = {
    "qwen2": dict(arch="qwen2", pre="qwen2", qkv_bias=True),
    "qwen3": dict(arch="qwen3", pre="qwen2", qk_norm=True, head_dim=64),
    "phi3": dict(arch="phi3", fused_qkv=True, fused_gate_up=True, sliding_window=4),
    "llama3": dict(arch="llama", pre="llama-bpe", rope_freqs=True),
    "mistral": dict(arch="llama", sliding_window=4),
    "llama-fused": dict(arch="llama", fused_qkv=True, qkv_bias=True),  # fused weights, separate biases
}


#: Tiny llamas whose matrices are in the IQ and TQ formats, a format per role (write_tiny's
#: keywords; n_embd 256, so every matrix divides into blocks of 256).  The IQ2 and IQ1 ones
#: are quantized under a flat importance matrix, as llama.cpp's quantizer needs one.
TINY_FORMATS = {
    "llama-iq2-iq3": dict(arch="llama", n_embd=256, head_dim=64, types={
        "attn_q": "IQ2_XXS", "attn_k": "IQ2_XS", "attn_v": "IQ2_S", "attn_output": "IQ3_XXS",
        "ffn_gate": "IQ3_S", "ffn_up": "IQ2_XS", "ffn_down": "IQ2_S", "token_embd": "IQ3_S"}),
    "llama-iq1-tq": dict(arch="llama", n_embd=256, head_dim=64, types={
        "attn_q": "IQ1_S", "attn_k": "IQ1_M", "attn_v": "TQ1_0", "attn_output": "TQ2_0",
        "ffn_gate": "IQ1_M", "ffn_up": "IQ1_S", "ffn_down": "TQ2_0", "token_embd": "TQ1_0"}),
}


def write_tiny_qwen2(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer qwen2-shaped GGUF with q, k and v biases (write_tiny)."""
    return write_tiny(path, seed=seed, **TINY_ARCHS["qwen2"])
