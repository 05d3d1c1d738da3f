"""The byte language of tests/fuzz/fuzz_imports.py: a fuzz input is a program of calls to the
realm_* imports, with arguments drawn from classes biased to the edges of the ABI.

A program is a sequence of ops; each op is one byte (its number modulo the op count) followed
by one selector byte per argument.  A selector picks one of that argument kind's choices
(modulo their count): a named edge value -- 0, 1, the last bytes of memory, 2^31, 2^32 - k,
2^32 / 4 + k, 2^32 / (4 n_embd) + k, the ids of models and KV caches made earlier in the same
program, a valid pointer -- or "raw", which reads the value from the next 4 (8) bytes.  The
program ends where the bytes do (an op cut short is dropped).  Besides the imports, ops write
into guest memory as a guest would (token ids, names, text, a GGUF model, raw bytes) or grow it.

`PUT_MODEL` writes a small llama GGUF built from knob bytes (`mini_model`): architecture,
hyper-parameter keys that may disagree with the tensors, tensor types, shapes and alignment,
so a guest-stored model can be hostile to the forward pass.  `Encoder` writes programs
(the seeds).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

import common  # noqa: F401  (puts tests/ on sys.path)
from gguf_helpers import RawTensor, build_gguf
from realm import abi
from realm.quants import GGMLType
from realm.reader import TYPE_GEOMETRY, GGUFValueType as VT

PAGE = 65536
PAGES = 3  # the guest's memory at the start of a program
MAX_PAGES = 4  # Limits.memory_bytes: memory.grow fails past it
TOK_AT, NAME_AT, OUT_AT, HID_AT, MODEL_AT = 1024, 256, 4096, 8192, PAGE
MAX_OPS = 24

IMPORT_ARGS: dict[str, tuple[str, ...]] = {  # the argument kinds of each import, in order
    "realm_store_model": ("ptr", "len"),
    "realm_get_tensor": ("model", "ptr", "len", "ptr", "len"),
    "realm_get_model_info": ("model", "ptr", "ptr"),
    "realm_remove_model": ("model",),
    "realm_get_metadata": ("model", "ptr", "len"),
    "realm_log": ("level", "ptr", "len"),
    "realm_forward_embedding": ("model", "ptr", "len", "ptr"),
    "realm_forward_layer": ("model", "layer", "ptr", "len", "position", "kv", "ptr"),
    "realm_forward_lm_head": ("model", "ptr", "len", "ptr", "len"),
    "realm_forward": ("model", "ptr", "len", "position", "kv", "ptr", "len"),
    "realm_kv_create": ("model", "n_ctx"),
    "realm_kv_free": ("kv",),
    "realm_kv_truncate": ("kv", "position"),
    "realm_emit_text": ("ptr", "len"),
}
assert set(IMPORT_ARGS) == set(abi.IMPORTS) and all(
    len(kinds) == len(abi.IMPORTS[name].params) for name, kinds in IMPORT_ARGS.items())

EXTRA_OPS = ("grow", "put_tokens", "put_name", "put_text", "put_model", "patch")
OPS: tuple[str, ...] = (*IMPORT_ARGS, *EXTRA_OPS)


class End(Exception):
    """The program's bytes ran out."""


class Bytes:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise End
        self.pos += 1
        return self.data[self.pos - 1]

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise End
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u32(self) -> int:
        return int.from_bytes(self.raw(4), "little")

    def i64(self) -> int:
        return int.from_bytes(self.raw(8), "little", signed=True)


@dataclass
class State:
    """What a program has made so far, for the choices that refer to it."""

    memory_size: Callable[[], int]
    shared: dict[str, int]  # "tiny", "ints" (visible to the guest), "other" (not)
    n_embd: int  # of the tiny llama
    n_vocab: int
    stored: list[int] = field(default_factory=list)  # model ids the guest stored (even removed)
    kvs: list[int] = field(default_factory=list)  # KV cache ids (even freed)
    model_len: int = 0  # bytes of the last PUT_MODEL


U32 = 1 << 32
MAX_ROWS = U32 // (4 * 256)  # 2^32 / (4 n_embd): rows of the tiny llama that wrap a u32 byte count


def _choices() -> dict[str, list[tuple[str, Callable[[State, Bytes], int]]]]:
    def const(v: int):
        return lambda s, b: v

    def end(k: int):
        return lambda s, b: s.memory_size() - k

    stored = lambda i: (lambda s, b: s.stored[i] if len(s.stored) > i else 10**9 + i)  # noqa: E731
    kv = lambda i: (lambda s, b: s.kvs[i] if len(s.kvs) > i else 1 << 30)  # noqa: E731
    small = lambda s, b: b.byte()  # noqa: E731
    u32 = lambda s, b: b.u32()  # noqa: E731
    return {
        "model": [("tiny", lambda s, b: s.shared["tiny"]), ("ints", lambda s, b: s.shared["ints"]),
                  ("other", lambda s, b: s.shared["other"]), ("stored0", stored(0)), ("stored1", stored(1)),
                  ("stored_last", lambda s, b: s.stored[-1] if s.stored else -5),
                  ("zero", const(0)), ("minus1", const(-1)), ("i64max", const(2**63 - 1)), ("i64min", const(-2**63)),
                  ("tiny_plus_2^32", lambda s, b: s.shared["tiny"] + U32),
                  ("tiny|2^40", lambda s, b: s.shared["tiny"] | (1 << 40)),
                  ("raw", lambda s, b: b.i64())],
        "kv": [("kv0", kv(0)), ("kv1", kv(1)), ("kv_last", lambda s, b: s.kvs[-1] if s.kvs else 7),
               ("kv0_plus_2^32", lambda s, b: (s.kvs[0] if s.kvs else 1) + U32),
               ("zero", const(0)), ("minus1", const(-1)), ("i32max", const(2**31 - 1)), ("i32min", const(-2**31)),
               ("raw", u32)],
        "ptr": [("zero", const(0)), ("tok", const(TOK_AT)), ("name", const(NAME_AT)), ("out", const(OUT_AT)),
                ("hid", const(HID_AT)), ("model", const(MODEL_AT)), ("four", const(4)), ("odd", const(HID_AT + 2)),
                ("end", end(0)), ("end-1", end(1)), ("end-4", end(4)), ("end-8", end(8)),
                ("end-row", lambda s, b: s.memory_size() - 4 * s.n_embd),
                ("end-rows", lambda s, b: s.memory_size() - 4 * s.n_embd * (b.byte() % 8 + 1)),
                ("end-small", lambda s, b: s.memory_size() - b.byte()),
                ("page1", const(PAGE)), ("page-4", const(PAGE - 4)), ("2^31", const(1 << 31)),
                ("2^32-1", const(U32 - 1)), ("2^32-4", const(U32 - 4)), ("2^32-small", lambda s, b: U32 - b.byte()),
                ("raw", u32), ("small", lambda s, b: 4 * b.byte())],
        "len": [("zero", const(0)), ("one", const(1)), ("two", const(2)), ("three", const(3)),
                ("n_embd", lambda s, b: s.n_embd), ("n_embd*k", lambda s, b: s.n_embd * (b.byte() % 9)),
                ("n_embd-1", lambda s, b: s.n_embd - 1), ("n_embd+1", lambda s, b: s.n_embd + 1),
                ("mini_embd*k", lambda s, b: 32 * (b.byte() % 9)),
                ("vocab", lambda s, b: s.n_vocab), ("vocab-1", lambda s, b: s.n_vocab - 1),
                ("2^31", const(1 << 31)), ("2^32-1", const(U32 - 1)), ("2^32-small", lambda s, b: U32 - b.byte()),
                ("2^30+k", lambda s, b: (1 << 30) + b.byte() % 4),  # x4 bytes wraps a u32 to 0..12
                ("rows_wrap+k", lambda s, b: s.n_embd * (MAX_ROWS + b.byte() % 4)),  # rows x n_embd x 4 wraps
                ("vocab_wrap+k", lambda s, b: U32 // (4 * s.n_vocab) + b.byte() % 4),
                ("name_max", const(abi.NAME_MAX)), ("name_max+1", const(abi.NAME_MAX + 1)),
                ("log_max+1", const(abi.LOG_MAX + 1)), ("text_max+1", const(abi.TEXT_MAX + 1)),
                ("memory", lambda s, b: s.memory_size()), ("memory/4", lambda s, b: s.memory_size() // 4),
                ("memory/4-small", lambda s, b: s.memory_size() // 4 - b.byte()),
                ("model_len", lambda s, b: s.model_len), ("model_len-1", lambda s, b: max(s.model_len - 1, 0)),
                ("forward_max", const(abi.FORWARD_MAX_TOKENS)), ("forward_max+1", const(abi.FORWARD_MAX_TOKENS + 1)),
                ("small", small), ("raw", u32)],
        "level": [("debug", const(0)), ("info", const(1)), ("warning", const(2)), ("error", const(3)),
                  ("four", const(4)), ("minus1", const(U32 - 1)), ("2^31", const(1 << 31)), ("raw", u32)],
        "layer": [("zero", const(0)), ("one", const(1)), ("two", const(2)), ("2^32-1", const(U32 - 1)),
                  ("2^31", const(1 << 31)), ("raw", u32)],
        "position": [("zero", const(0)), ("one", const(1)), ("two", const(2)), ("small", small),
                     ("255", const(255)), ("256", const(256)), ("2^24", const(1 << 24)),
                     ("2^31", const(1 << 31)), ("2^32-1", const(U32 - 1)), ("raw", u32)],
        "n_ctx": [("16", const(16)), ("one", const(1)), ("zero", const(0)), ("256", const(256)), ("257", const(257)),
                  ("small", small), ("2^24", const(1 << 24)), ("2^24+1", const((1 << 24) + 1)),
                  ("2^32-1", const(U32 - 1)), ("raw", u32)],
    }


CHOICES = _choices()
TOKEN_CHOICES = [0, 1, 2, 15, 16, 63, 64, -1, 2**31 - 1, -2**31, None]  # None: raw 4 bytes
NAMES = [b"output_norm.weight", b"token_embd.weight", b"blk.0.attn_q.weight", b"blk.1.ffn_down.weight",
         b"blk.0.attn_output.weight", b"ids", b"", b"x" * (abi.NAME_MAX + 1), b"\xff", b"output_norm.weight\0",
         b"blk.0.ffn_gate.weight", None]  # None: raw bytes
TEXTS = ["h\u00e9llo", "\U0001F600", "stop", "", None]  # None: raw bytes


def decode_arg(kind: str, state: State, b: Bytes) -> int:
    choices = CHOICES[kind]
    return choices[b.byte() % len(choices)][1](state, b)


# -- the models a guest stores -------------------------------------------------------------------

WEIGHT_TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.BF16, GGMLType.Q4_1,
                GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.IQ4_NL, GGMLType.MXFP4, GGMLType.I32, GGMLType.Q8_1]
KNOBS = {  # index 0 is the consistent default
    "arch": ["llama", "gemma3", "gpt2", ""],
    "n_layer": [1, 2],  # layers the file holds
    "block_count": [None, 0, 2**32 - 1, 3, "missing"],  # None: the true value
    "embedding_length": [None, 0, 16, 64, 2**31, 2**32 - 1, "missing"],
    "head_count": [2, 1, 0, 3, 4, 32, 2**31, 2**32 - 1],
    "head_count_kv": [1, 2, 0, 3, 2**32 - 1, "missing"],
    "key_length": ["missing", 16, 8, 0, 32, 2**31],
    "rope_dims": ["missing", 16, 8, 0, 17, 2**32 - 1],
    "context_length": [64, 0, 1, 2**24, 2**32 - 1, "missing"],
    "feed_forward_length": [None, 0, 63, 128, 2**32 - 1],
    "rms_eps": [1e-5, 0.0, float("nan"), -1.0, float("inf")],
    "weight_type": list(range(len(WEIGHT_TYPES))),
    "embd_type": [GGMLType.Q8_0, GGMLType.F32, GGMLType.F16, GGMLType.Q4_0, GGMLType.I32],
    "tied": [False, True],
    "alignment": [None, 1, 2, 64, 4],
    "break": ["none", "transpose", "drop", "extra", "3d", "rows-1", "1d", "norm-2d"],
    "break_at": list(range(16)),
    "gemma_extras": [True, False],
    "name": [None, "x", "xy", "xyz"],  # shifts the data by 9-11 bytes (with alignment 1 or 2: misaligned)
}
N_EMBD, N_FF, N_VOCAB, N_HEAD_KV_DIM = 32, 64, 16, 16  # the tensors' true shapes (head_dim 16, 1 KV head)


def _data(ttype: GGMLType, ne: tuple[int, ...], rng: np.random.Generator) -> bytes:
    n = int(np.prod(ne, dtype=np.int64))
    if ttype == GGMLType.F32:
        return (rng.standard_normal(n) * 0.1).astype("<f4").tobytes()
    if ttype == GGMLType.F16:
        return (rng.standard_normal(n) * 0.1).astype("<f2").tobytes()
    if ttype == GGMLType.BF16:
        return ((rng.standard_normal(n) * 0.1).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    block, size = TYPE_GEOMETRY[ttype]
    if ne[0] % block:
        return b""
    raw = rng.integers(0, 256, n // block * size, dtype=np.uint8)
    raw[1::2] &= 0x3B  # f16 scales at even offsets stay small
    return raw.tobytes()


@lru_cache(maxsize=256)
def mini_model(knobs: tuple[int, ...]) -> bytes:
    """A llama-shaped GGUF of ~40 KB (n_embd 32, 2 heads of 16, 1 KV head, n_ff 64, 16 tokens)
    with the KNOBS picked by `knobs` (indices, modulo each knob's options; missing ones are 0)."""
    k = {name: opts[(knobs[i] if i < len(knobs) else 0) % len(opts)] for i, (name, opts) in enumerate(KNOBS.items())}
    rng = np.random.default_rng(sum(knobs) + 1)
    arch, n_layer = k["arch"], k["n_layer"]
    kvs: list = [("general.architecture", VT.STRING, arch)]

    def key(name: str, value, vtype=VT.UINT32, true=None):
        value = true if value is None else value
        if value != "missing":
            kvs.append((f"{arch}.{name}", vtype, value))

    key("block_count", k["block_count"], true=n_layer)
    key("context_length", k["context_length"])
    key("embedding_length", k["embedding_length"], true=N_EMBD)
    key("feed_forward_length", k["feed_forward_length"], true=N_FF)
    key("attention.head_count", k["head_count"])
    key("attention.head_count_kv", k["head_count_kv"])
    key("attention.key_length", k["key_length"])
    key("rope.dimension_count", k["rope_dims"])
    key("attention.layer_norm_rms_epsilon", k["rms_eps"], VT.FLOAT32)
    key("rope.freq_base", 10000.0, VT.FLOAT32)
    if arch == "gemma3":
        key("attention.sliding_window", 8)
    if k["name"] is not None:
        kvs.append(("general.name", VT.STRING, k["name"]))
    if k["alignment"] is not None:
        kvs.append(("general.alignment", VT.UINT32, k["alignment"]))

    wt, et = WEIGHT_TYPES[k["weight_type"]], k["embd_type"]
    shapes: list[tuple[str, tuple[int, ...], GGMLType]] = [("token_embd.weight", (N_EMBD, N_VOCAB), et),
                                                           ("output_norm.weight", (N_EMBD,), GGMLType.F32)]
    if not k["tied"]:
        shapes.append(("output.weight", (N_EMBD, N_VOCAB), wt))
    for il in range(n_layer):
        p = f"blk.{il}."
        shapes += [(p + "attn_norm.weight", (N_EMBD,), GGMLType.F32), (p + "attn_q.weight", (N_EMBD, N_EMBD), wt),
                   (p + "attn_k.weight", (N_EMBD, N_HEAD_KV_DIM), wt), (p + "attn_v.weight", (N_EMBD, N_HEAD_KV_DIM), wt),
                   (p + "attn_output.weight", (N_EMBD, N_EMBD), wt), (p + "ffn_norm.weight", (N_EMBD,), GGMLType.F32),
                   (p + "ffn_gate.weight", (N_EMBD, N_FF), wt), (p + "ffn_up.weight", (N_EMBD, N_FF), wt),
                   (p + "ffn_down.weight", (N_FF, N_EMBD), wt)]
        if arch == "gemma3" and k["gemma_extras"]:
            shapes += [(p + "attn_q_norm.weight", (16,), GGMLType.F32), (p + "attn_k_norm.weight", (16,), GGMLType.F32),
                       (p + "post_attention_norm.weight", (N_EMBD,), GGMLType.F32),
                       (p + "post_ffw_norm.weight", (N_EMBD,), GGMLType.F32)]
    at = k["break_at"] % len(shapes)
    name, ne, tt = shapes[at]
    brk = k["break"]
    if brk == "transpose" and len(ne) == 2:
        shapes[at] = (name, (ne[1], ne[0]), tt)
    elif brk == "drop":
        del shapes[at]
    elif brk == "extra":
        shapes.append(("blk.0.attn_q.bias", (N_EMBD,), GGMLType.F32))
    elif brk == "3d":
        shapes[at] = (name, (*ne, 1, 2)[:3], tt)
    elif brk == "rows-1" and len(ne) == 2:
        shapes[at] = (name, (ne[0], ne[1] - 1), tt)
    elif brk == "1d" and len(ne) == 2:
        shapes[at] = (name, (ne[0] * ne[1],), tt)
    elif brk == "norm-2d" and len(ne) == 1:
        shapes[at] = (name, (ne[0], 2), tt)
    tensors = [RawTensor(n, s, t, _data(t, s, rng)) for n, s, t in shapes]
    alignment = k["alignment"] or 32
    return build_gguf(kvs, tensors, alignment=alignment)[0]


# -- writing programs (the seeds) --------------------------------------------------------------

class Encoder:
    """Builds a program: `call(import, *args)` where each arg is a choice name, or an int
    for "raw"; `op(extra op, *bytes)` for the other ops."""

    def __init__(self):
        self.out = bytearray()

    def _arg(self, kind: str, value) -> None:
        names = [n for n, _ in CHOICES[kind]]
        if isinstance(value, str):
            self.out.append(names.index(value))
        else:
            self.out.append(names.index("raw"))
            self.out += struct.pack("<q" if kind == "model" else "<I", value)

    def call(self, name: str, *args) -> "Encoder":
        self.out.append(OPS.index(name))
        for kind, value in zip(IMPORT_ARGS[name], args, strict=True):
            if isinstance(value, tuple):  # (choice, extra byte)
                self._arg(kind, value[0])
                self.out.append(value[1])
            else:
                self._arg(kind, value)
        return self

    def op(self, name: str, *raw: int) -> "Encoder":
        self.out.append(OPS.index(name))
        self.out += bytes(raw)
        return self

    def bytes(self) -> bytes:
        return bytes(self.out)


def _ptr(name: str) -> int:
    return [n for n, _ in CHOICES["ptr"]].index(name)


def seed_programs() -> dict[str, bytes]:
    """Programs that do what a guest does, for the fuzzer to start from."""
    seeds = {}
    e = Encoder()  # tokens -> embedding -> 2 layers -> logits, on the shared tiny llama
    e.call("realm_kv_create", "tiny", "16")
    e.op("put_tokens", _ptr("tok"), 2, 1, 2, 3)  # 3 tokens: 1, 2, 15
    e.call("realm_forward_embedding", "tiny", "tok", "three", "hid")
    e.call("realm_forward_layer", "tiny", "zero", "hid", ("n_embd*k", 3), "zero", "kv0", "hid")
    e.call("realm_forward_layer", "tiny", "one", "hid", ("n_embd*k", 3), "zero", "kv0", "hid")
    e.call("realm_forward_lm_head", "tiny", "hid", "n_embd", "out", "vocab")
    e.call("realm_kv_truncate", "kv0", "one")
    e.call("realm_forward", "tiny", "tok", "one", "one", "kv0", "zero", "zero")  # a chunk: no logits
    e.call("realm_forward", "tiny", "tok", "one", "two", "kv0", "out", "vocab")  # and the last one
    e.call("realm_kv_free", "kv0")
    seeds["forward"] = e.bytes()

    e = Encoder()  # names, metadata, info, log, text
    e.op("put_name", _ptr("name"), 0)
    e.call("realm_get_tensor", "tiny", "name", ("small", 18), "hid", "zero")
    e.call("realm_get_tensor", "tiny", "name", ("small", 18), "hid", ("small", 255))
    e.call("realm_get_tensor", "tiny", "name", ("small", 18), "hid", "2^31")
    e.call("realm_get_metadata", "tiny", "out", "zero")
    e.call("realm_get_metadata", "tiny", "hid", "memory/4")
    e.call("realm_get_model_info", "tiny", "zero", "four")
    e.call("realm_get_model_info", "ints", "end-4", "end-8")
    e.op("put_text", _ptr("out"), 0)
    e.call("realm_log", "info", "out", "three")
    e.call("realm_emit_text", "out", "three")
    e.call("realm_remove_model", "tiny")
    seeds["read"] = e.bytes()

    for i, knobs in enumerate([(), (1,), (0, 1), (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2), (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1)]):
        e = Encoder()  # a guest stores its own model, runs it, removes it
        e.op("put_model", _ptr("model"), len(knobs), *knobs)
        e.call("realm_store_model", "model", "model_len")
        e.call("realm_kv_create", "stored0", "16")
        e.op("put_tokens", _ptr("tok"), 1, 1, 2)  # 2 tokens: 1, 2
        e.call("realm_forward_embedding", "stored0", "tok", "two", "hid")
        e.call("realm_forward_layer", "stored0", "zero", "hid", ("mini_embd*k", 2), "zero", "kv0", "hid")
        e.call("realm_forward_lm_head", "stored0", "hid", ("mini_embd*k", 1), "out", ("small", 16))
        e.call("realm_get_tensor", "stored0", "name", ("small", 18), "hid", ("small", 200))
        e.call("realm_remove_model", "stored0")
        e.call("realm_forward_layer", "stored0", "zero", "hid", ("mini_embd*k", 1), "one", "kv0", "hid")
        seeds[f"stored-model-{i}"] = e.bytes()

    e = Encoder()  # wrapping sizes against the end of memory
    e.call("realm_kv_create", "tiny", "256")
    e.call("realm_forward_embedding", "tiny", "tok", ("2^30+k", 1), "hid")
    e.call("realm_forward_layer", "tiny", "zero", "hid", ("rows_wrap+k", 0), "zero", "kv0", "hid")
    e.call("realm_forward_lm_head", "tiny", "hid", "n_embd", ("end-small", 8), ("vocab_wrap+k", 0))
    e.call("realm_forward", "tiny", "tok", ("2^30+k", 1), "zero", "kv0", "out", "vocab")
    e.call("realm_forward", "tiny", "tok", "one", "zero", "kv0", ("end-small", 8), ("vocab_wrap+k", 0))
    e.call("realm_get_tensor", "tiny", "name", "2^32-1", "out", "2^32-1")
    e.call("realm_store_model", "end", "2^32-1")
    e.op("grow", 1)
    e.call("realm_get_metadata", "tiny", ("end-small", 1), "memory")
    seeds["edges"] = e.bytes()
    return seeds
