"""Test helpers: GGUF files written two independent ways, and the gguf-py comparison.

* `build_gguf` is a tiny byte-level encoder of the GGUF format (test code, kept
  apart from realm's reader) that can write what `gguf.GGUFWriter` will not:
  version 2, empty arrays, nested arrays of any element type, and broken files.
* `write_tiny_llama` writes a small llama-shaped model with `gguf.GGUFWriter`.
* `assert_matches_gguf_py` checks realm's reading of a file against gguf-py's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realm.quants import GGMLType
from realm.reader import TYPE_GEOMETRY, GGUFValueType as VT, StringArray

SCALAR_FORMATS = {
    VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I",
    VT.INT32: "<i", VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q",
    VT.FLOAT64: "<d",
}
NUMPY_DTYPES = {
    VT.UINT8: np.uint8, VT.INT8: np.int8, VT.UINT16: np.uint16, VT.INT16: np.int16,
    VT.UINT32: np.uint32, VT.INT32: np.int32, VT.FLOAT32: np.float32, VT.BOOL: np.bool_,
    VT.UINT64: np.uint64, VT.INT64: np.int64, VT.FLOAT64: np.float64,
}
INT_RANGES = {
    VT.UINT8: (0, 2**8 - 1), VT.INT8: (-2**7, 2**7 - 1), VT.UINT16: (0, 2**16 - 1),
    VT.INT16: (-2**15, 2**15 - 1), VT.UINT32: (0, 2**32 - 1), VT.INT32: (-2**31, 2**31 - 1),
    VT.UINT64: (0, 2**64 - 1), VT.INT64: (-2**63, 2**63 - 1),
}


@dataclass
class Arr:
    """An array value for `build_gguf`: element type and items (nested `Arr`s for ARRAY)."""

    etype: int
    items: list


def encode_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def encode_value(vtype: int, value: Any) -> bytes:
    """The bytes of one value (without its type tag)."""
    if vtype in SCALAR_FORMATS:
        return struct.pack(SCALAR_FORMATS[vtype], value)
    if vtype == VT.STRING:
        return encode_string(value)
    if vtype == VT.ARRAY:
        body = b"".join(encode_value(value.etype, item) for item in value.items)
        return struct.pack("<IQ", value.etype, len(value.items)) + body
    raise ValueError(vtype)


@dataclass
class RawTensor:
    name: str
    ne: tuple[int, ...]  # GGUF order: innermost first
    ttype: int
    data: bytes = b""
    offset: int | None = None  # relative to the data section; None: packed in order


@dataclass
class Layout:
    """Where things landed in a file made by `build_gguf` (absolute offsets)."""

    kv_offsets: list[int] = field(default_factory=list)
    tensor_info_offsets: list[int] = field(default_factory=list)
    header_end: int = 0
    data_offset: int = 0


def build_gguf(kvs: list[tuple[str, int, Any]] = (), tensors: list[RawTensor] = (), *,
               version: int = 3, alignment: int = 32, magic: bytes = b"GGUF",
               tensor_count: int | None = None, kv_count: int | None = None) -> tuple[bytes, Layout]:
    """Encode a GGUF file.  `alignment` only places the data (add a general.alignment kv to declare it)."""
    layout = Layout()
    out = bytearray(magic + struct.pack("<IQQ", version,
                                        len(tensors) if tensor_count is None else tensor_count,
                                        len(kvs) if kv_count is None else kv_count))
    for key, vtype, value in kvs:
        layout.kv_offsets.append(len(out))
        out += encode_string(key) + struct.pack("<I", vtype) + encode_value(vtype, value)
    offsets, cursor = [], 0
    for t in tensors:
        off = cursor if t.offset is None else t.offset
        offsets.append(off)
        cursor = off + len(t.data)
        cursor += -cursor % alignment
    for t, off in zip(tensors, offsets):
        layout.tensor_info_offsets.append(len(out))
        out += encode_string(t.name) + struct.pack("<I", len(t.ne)) + struct.pack(f"<{len(t.ne)}Q", *t.ne)
        out += struct.pack("<IQ", t.ttype, off)
    layout.header_end = len(out)
    out += bytes(-len(out) % alignment)
    layout.data_offset = len(out)
    data = bytearray()
    for t, off in zip(tensors, offsets):
        if len(data) < off:
            data += bytes(off - len(data))
        data[off:off + len(t.data)] = t.data
    data += bytes(-len(data) % alignment)
    return bytes(out + data), layout


def tensor_bytes(ttype: GGMLType, ne: tuple[int, ...]) -> int:
    block, size = TYPE_GEOMETRY[ttype]
    return int(np.prod(ne, dtype=object)) // block * size


def random_blocks(qtype: GGMLType, n_elements: int, rng: np.random.Generator) -> np.ndarray:
    """Valid-looking blocks of `qtype` whose fp16 scales are finite (random bytes elsewhere)."""
    block, size = TYPE_GEOMETRY[qtype]
    blocks = rng.integers(0, 256, size=(n_elements // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    scale_at = {GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2), GGMLType.Q2_K: (80, 82),
                GGMLType.Q3_K: (108,), GGMLType.Q6_K: (208,)}[qtype]
    for at in scale_at:
        blocks[:, at:at + 2] = scale
    return blocks.reshape(-1)


def write_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer llama-shaped GGUF (n_embd 256) with Q8_0, Q4_0, Q4_1, Q5_0, Q4_K,
    Q6_K, F16, BF16 and F32 tensors and a 64-token BPE vocabulary, via gguf.GGUFWriter."""
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_vocab, n_layer, n_head, n_head_kv = 256, 512, 64, 2, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(2)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_token_merges(["t 1", "t 2"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def q(name: str, shape: tuple[int, ...], qtype: GGMLType) -> None:
        x = rng.standard_normal(shape, dtype=np.float32)
        gtype = gguf.GGMLQuantizationType(int(qtype))
        if qtype in (GGMLType.Q4_K, GGMLType.Q6_K):
            blocks = random_blocks(qtype, x.size, rng).reshape(*shape[:-1], -1)
        elif qtype == GGMLType.F32:
            w.add_tensor(name, x)
            return
        elif qtype == GGMLType.F16:
            w.add_tensor(name, x.astype(np.float16))
            return
        else:
            blocks = quantize(x, gtype)
        w.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=gtype)

    q("token_embd.weight", (n_vocab, n_embd), GGMLType.Q8_0)
    for i in range(n_layer):
        q(f"blk.{i}.attn_norm.weight", (n_embd,), GGMLType.F32)
        q(f"blk.{i}.attn_q.weight", (n_embd, n_embd), GGMLType.Q4_0)
        q(f"blk.{i}.attn_k.weight", (n_embd // n_head * n_head_kv, n_embd), GGMLType.Q4_1)
        q(f"blk.{i}.attn_v.weight", (n_embd // n_head * n_head_kv, n_embd), GGMLType.Q5_0)
        q(f"blk.{i}.attn_output.weight", (n_embd, n_embd), GGMLType.BF16)
        q(f"blk.{i}.ffn_norm.weight", (n_embd,), GGMLType.F32)
        q(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd), GGMLType.Q4_K)
        q(f"blk.{i}.ffn_up.weight", (n_ff, n_embd), GGMLType.F16)
        q(f"blk.{i}.ffn_down.weight", (n_embd, n_ff), GGMLType.Q6_K)
    q("output_norm.weight", (n_embd,), GGMLType.F32)
    q("output.weight", (n_vocab, n_embd), GGMLType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def flatten(value: Any) -> list:
    """A realm metadata array flattened to leaves, as gguf-py's `contents()` returns nested arrays."""
    if isinstance(value, (np.ndarray, StringArray)):
        return value.tolist()
    if isinstance(value, list):
        return [leaf for item in value for leaf in flatten(item)]
    return value


def assert_matches_gguf_py(gguf_file, path: Path, reference=None) -> None:
    """realm's `GGUFFile` for `path` holds what gguf-py's GGUFReader finds there."""
    import gguf

    ref = reference if reference is not None else gguf.GGUFReader(path)
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(gguf_file.metadata) == list(fields)
    assert gguf_file.version == ref.fields["GGUF.version"].contents()
    for key, f in fields.items():
        ours = gguf_file.metadata[key]
        types = gguf_file.value_types[key]
        assert int(types[0]) == int(f.types[0]), key
        if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.types) > 1:
            assert [int(t) for t in types] == [int(t) for t in f.types], key
        theirs = f.contents()
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            assert flatten(ours) == theirs, key
        else:
            assert type(ours) is type(theirs) and ours == theirs, key
    assert gguf_file.alignment == ref.alignment
    assert gguf_file.data_offset == ref.data_offset
    assert list(gguf_file.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        ours = gguf_file.tensors[t.name]
        assert int(ours.dtype) == int(t.tensor_type)
        assert ours.shape == tuple(reversed(t.shape.tolist()))
        assert ours.n_elements == t.n_elements
        assert ours.nbytes == t.n_bytes
        assert ours.offset == t.data_offset
        view = gguf_file.view(ours)
        assert view.shape == ours.byte_shape
        assert np.array_equal(view.reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))
