"""realm's own GGUF reader: a strict header parser over a memory-mapped file.

A GGUF file is a header (magic, version, counts, metadata key/values, tensor
infos) followed, after padding to `general.alignment`, by the tensor data.
Opening a file parses the header only; tensor data is exposed as read-only
numpy views into the mapping, so nothing proportional to the weights is read or
copied until a caller touches it.

Every count and length in the header is untrusted: each is checked against the
bytes that remain before anything is allocated from it, so a hostile file gets
a `GGUFError` naming the problem, never a crash or a huge allocation.

Metadata values are returned as:
  * integers, floats, bools and strings as Python scalars (strings are UTF-8
    decoded with "surrogateescape", so any bytes round-trip);
  * arrays of numbers or bools as read-only numpy arrays (copied out of the
    file, so metadata never pins the mapping);
  * arrays of strings as a `StringArray`, a lazy sequence that decodes an item
    when it is accessed (Gemma 3's 262,144 tokens cost one pass over their
    length prefixes at open, no string objects);
  * arrays of arrays as Python lists of the above.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Sequence, overload

import numpy as np

from .errors import ClosedError, GGUFError, file_error
from ._native import string_ends
from .quants import GGMLType, can_dequantize, quant_info

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS; llama.cpp rejects more
# Largest product of a tensor's non-zero dimensions: any byte or float32 shape of it fits int64
# (and numpy), also when another dimension is 0 -- such a tensor holds nothing, but its shape is real.
MAX_TENSOR_ELEMENTS = 1 << 59
MAX_ARRAY_DEPTH = 8  # arrays nested deeper than this are refused (no real file nests at all)
# Caps on what a header may declare, far above any real file (a few hundred keys and at most a
# few thousand tensors): each is a Python object the parse makes, so they bound its time and memory.
MAX_METADATA_KEYS = 1 << 16
MAX_TENSORS = 1 << 16
MAX_NESTED_ARRAYS = 1 << 12  # arrays inside arrays, in the whole header (llama.cpp reads none)


class GGUFValueType(enum.IntEnum):
    """Metadata value types as numbered in GGUF files."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALARS: dict[int, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<B"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}

_ARRAY_DTYPES: dict[int, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),  # checked to hold only 0/1, then viewed as bool
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}

# Smallest encoding of one item, used to bound counts before looping over them.
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset
_MIN_STRING_BYTES = 8
_MIN_ARRAY_BYTES = 4 + 8

# Host memory one parsed item keeps beyond its own bytes (measured with tracemalloc, rounded
# up; tests/test_reader.py checks them): a metadata key with its value and type chain, a
# tensor with its TensorInfo and the store's QuantizedTensor view, an array inside an array.
_KEY_COST = 256
_TENSOR_COST = 1024
_NESTED_ARRAY_COST = 400

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: Block geometry of every type ggml defines: (elements per block, bytes per block).
#: realm can read tensors of all of them; `realm.SUPPORTED_TYPES` says which it can dequantize.
TYPE_GEOMETRY: Mapping[GGMLType, tuple[int, int]] = MappingProxyType({
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 40),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
})


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class StringArray(Sequence[str]):
    """A GGUF array of strings, decoded on access.

    Holds one copy of the array's bytes as the file stores them -- each string
    after its u64 length -- (not a view of the file, so it outlives the mapping)
    and where every string ends in it (one int64 each).  Indexing decodes one
    string; `tolist()` decodes all; `raw(i)` gives the undecoded bytes.
    Compares equal to any sequence of the same strings.
    """

    __slots__ = ("_blob", "_ends")

    def __init__(self, blob: bytes, ends: np.ndarray):
        self._blob = blob
        self._ends = ends

    def __len__(self) -> int:
        return len(self._ends)

    @property
    def nbytes(self) -> int:
        """Memory the array holds: its bytes and its index."""
        return len(self._blob) + self._ends.nbytes

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _decode(self.raw(index))

    def raw(self, index: int) -> bytes:
        """The bytes of string `index`, undecoded."""
        i = range(len(self))[index]  # normalises negatives, raises IndexError
        start = int(self._ends[i - 1]) + 8 if i else 8
        return self._blob[start:int(self._ends[i])]

    def __iter__(self) -> Iterator[str]:
        blob, start = self._blob, 8
        for end in self._ends.tolist():
            yield _decode(blob[start:end])
            start = end + 8

    def tolist(self) -> list[str]:
        """Every string, decoded."""
        return list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self.tolist() == other.tolist()
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StringArray([{head}{', ...' if len(self) > 3 else ''}], len={len(self)})"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a GGUF file.

    shape is in numpy order (outermost first), i.e. GGUF's `ne` reversed;
    offset is absolute (from the start of the file).
    """

    name: str
    dtype: GGMLType
    shape: tuple[int, ...]
    offset: int
    n_elements: int
    nbytes: int

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """The shape of the raw data: `shape` with the last axis in bytes (as gguf-py's views)."""
        block_size, type_size = TYPE_GEOMETRY[self.dtype]
        return (*self.shape[:-1], self.shape[-1] // block_size * type_size)


class _Parser:
    """A cursor over the header bytes; every read checks what remains first."""

    __slots__ = ("buf", "size", "pos", "nested", "held")

    def __init__(self, buf: Any, size: int):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.nested = 0  # arrays inside arrays so far (MAX_NESTED_ARRAYS)
        self.held = 0  # bytes of metadata values the parse keeps (see _Header.held_bytes)

    def need(self, n: int, what: str) -> None:
        remaining = self.size - self.pos
        if n > remaining:
            raise GGUFError(
                f"truncated: {what} at offset {self.pos} needs {n} bytes, the file has {remaining} left"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        start = self.pos
        self.pos += n
        return bytes(self.buf[start:self.pos])

    def name(self, what: str) -> str:
        """A key or tensor name: must be valid UTF-8."""
        start = self.pos
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{what} at offset {start} is not valid UTF-8: {raw[:40]!r}") from None

    def value(self, vtype: int, key: str, depth: int = 0) -> tuple[Any, tuple[GGUFValueType, ...]]:
        """One metadata value and its type chain (ARRAY, element type, ...)."""
        scalar = _SCALARS.get(vtype)
        if scalar is not None:
            self.need(scalar.size, f"value of {key!r}")
            (v,) = scalar.unpack_from(self.buf, self.pos)
            if vtype == GGUFValueType.BOOL:
                if v > 1:
                    raise GGUFError(f"bool value of {key!r} at offset {self.pos} is {v}, not 0 or 1")
                v = bool(v)
            self.pos += scalar.size
            return v, (GGUFValueType(vtype),)
        if vtype == GGUFValueType.STRING:
            raw = self.raw_string(f"string value of {key!r}")
            self.held += len(raw)
            return _decode(raw), (GGUFValueType.STRING,)
        if vtype == GGUFValueType.ARRAY:
            return self.array(key, depth)
        raise GGUFError(f"metadata {key!r} at offset {self.pos - 4} has unknown value type {vtype}")

    def array(self, key: str, depth: int) -> tuple[Any, tuple[GGUFValueType, ...]]:
        if depth >= MAX_ARRAY_DEPTH:
            raise GGUFError(f"metadata {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
        at = self.pos
        etype = self.u32(f"element type of array {key!r}")
        count = self.u64(f"length of array {key!r}")
        try:
            etype = GGUFValueType(etype)
        except ValueError:
            raise GGUFError(f"array {key!r} at offset {at} has unknown element type {etype}") from None

        dtype = _ARRAY_DTYPES.get(etype)
        if dtype is not None:
            self.need(count * dtype.itemsize, f"{count} x {etype.name} of array {key!r}")
            if count:
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
            else:
                arr = np.empty(0, dtype)
            if etype == GGUFValueType.BOOL:
                if count and arr.max() > 1:
                    raise GGUFError(f"bool array {key!r} at offset {at} holds values other than 0 and 1")
                arr = arr.view(np.bool_)
            arr.flags.writeable = False
            self.pos += count * dtype.itemsize
            self.held += arr.nbytes
            return arr, (GGUFValueType.ARRAY, etype)

        if etype == GGUFValueType.STRING:
            self.need(count * _MIN_STRING_BYTES, f"{count} strings of array {key!r}")
            strings = self.strings(count, key)
            self.held += strings.nbytes
            return strings, (GGUFValueType.ARRAY, etype)

        # an array of arrays
        self.need(count * _MIN_ARRAY_BYTES, f"{count} nested arrays of {key!r}")
        self.nested += count
        if self.nested > MAX_NESTED_ARRAYS:
            raise GGUFError(f"metadata {key!r}: more than {MAX_NESTED_ARRAYS} arrays inside arrays in the header")
        self.held += count * _NESTED_ARRAY_COST
        items, sub = [], ()
        for i in range(count):
            item, types = self.array(key, depth + 1)
            if i == 0:
                sub = types
            items.append(item)
        return items, (GGUFValueType.ARRAY, *sub)

    def strings(self, count: int, key: str) -> StringArray:
        """Walk `count` length-prefixed strings (in C: one pass, no string objects)."""
        first = self.pos
        ends = string_ends(self.buf, first, count, self.size) if count else np.empty(0, np.int64)
        if ends is None:
            raise GGUFError(f"truncated: the strings of array {key!r} (from offset {first}) run past the end of the file")
        end = int(ends[-1]) if count else first
        ends -= first
        self.pos = end
        return StringArray(bytes(self.buf[first:end]), ends)


@dataclass(frozen=True)
class _Header:
    version: int
    alignment: int
    data_offset: int
    metadata: Mapping[str, Any]
    value_types: Mapping[str, tuple[GGUFValueType, ...]]
    tensors: Mapping[str, TensorInfo]
    held_bytes: int  # an upper estimate of the host memory the parsed header keeps



def parse_header(buf: Any, size: int | None = None) -> _Header:
    """Parse and validate a GGUF header in `buf` (any object with the buffer protocol).

    `size` is the length of the whole file (defaults to len(buf)); the tensor
    data must lie inside it.  Raises `GGUFError` on anything malformed.
    """
    size = len(buf) if size is None else size
    p = _Parser(buf, size)
    p.need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}")
    p.pos = 4
    version = p.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
            raise GGUFError("big-endian GGUF files are not supported")
        raise GGUFError(f"GGUF version {version} is not supported (realm reads versions 2 and 3)")
    tensor_count = p.u64("tensor count")
    kv_count = p.u64("metadata count")
    p.need(kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES,
           f"{kv_count} metadata entries and {tensor_count} tensor infos")
    if kv_count > MAX_METADATA_KEYS or tensor_count > MAX_TENSORS:
        raise GGUFError(f"the header declares {kv_count} metadata keys and {tensor_count} tensors "
                        f"(realm reads at most {MAX_METADATA_KEYS} and {MAX_TENSORS})")

    metadata: dict[str, Any] = {}
    value_types: dict[str, tuple[GGUFValueType, ...]] = {}
    for _ in range(kv_count):
        at = p.pos
        key = p.name("metadata key")
        if key in metadata:
            raise GGUFError(f"duplicate metadata key {key!r} at offset {at}")
        vtype = p.u32(f"value type of {key!r}")
        metadata[key], value_types[key] = p.value(vtype, key)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        alignment = metadata["general.alignment"]
        if value_types["general.alignment"] != (GGUFValueType.UINT32,):
            raise GGUFError("general.alignment must be a UINT32")
        if alignment == 0 or alignment & (alignment - 1):
            raise GGUFError(f"general.alignment {alignment} is not a power of two")

    infos = []
    names: set[str] = set()
    for _ in range(tensor_count):
        at = p.pos
        name = p.name("tensor name")
        if name in names:
            raise GGUFError(f"duplicate tensor name {name!r} at offset {at}")
        names.add(name)
        n_dims = p.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        p.need(8 * n_dims, f"dimensions of tensor {name!r}")
        ne = struct.unpack_from(f"<{n_dims}Q", buf, p.pos)
        p.pos += 8 * n_dims
        raw_type = p.u32(f"type of tensor {name!r}")
        rel_offset = p.u64(f"data offset of tensor {name!r}")
        infos.append((name, ne, raw_type, rel_offset))
    header_end = p.pos
    data_offset = -(-header_end // alignment) * alignment
    if tensor_count and data_offset > size:
        raise GGUFError(f"truncated: tensor data would start at offset {data_offset}, past the end of the file ({size} bytes)")

    tensors: dict[str, TensorInfo] = {}
    for name, ne, raw_type, rel_offset in infos:
        try:
            dtype = GGMLType(raw_type)
        except ValueError:
            raise GGUFError(f"tensor {name!r} has unknown type {raw_type}") from None
        block_size, type_size = TYPE_GEOMETRY[dtype]
        spanned = 1  # the product of the non-zero dimensions
        for d in ne:
            spanned *= d or 1
        if spanned > MAX_TENSOR_ELEMENTS:
            raise GGUFError(f"tensor {name!r} has absurd dimensions {list(ne)}")
        n_elements = 0 if 0 in ne else spanned
        if ne[0] % block_size:
            raise GGUFError(f"tensor {name!r}: row length {ne[0]} is not a multiple of the {dtype.name} block size {block_size}")
        nbytes = n_elements // block_size * type_size
        if rel_offset % alignment:
            raise GGUFError(f"tensor {name!r}: data offset {rel_offset} is not a multiple of the alignment {alignment}")
        start = data_offset + rel_offset
        if start + nbytes > size:
            raise GGUFError(
                f"tensor {name!r}: data [{start}, {start + nbytes}) lies outside the file ({size} bytes)"
            )
        if nbytes and can_dequantize(dtype) and start % quant_info(dtype).align:  # a small general.alignment
            raise GGUFError(f"tensor {name!r}: {dtype.name} data at offset {start} is not aligned to "
                            f"{quant_info(dtype).align} bytes, as realm's kernels read it")
        tensors[name] = TensorInfo(name, dtype, tuple(reversed(ne)), start, n_elements, nbytes)

    by_offset = sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes))
    for a, b in zip(by_offset, by_offset[1:]):
        if a.offset + a.nbytes > b.offset:
            raise GGUFError(f"tensors {a.name!r} and {b.name!r} overlap in the file")

    held = (p.held + min(data_offset, size) + sum(_KEY_COST + len(k) for k in metadata)
            + sum(_TENSOR_COST + len(name) for name in tensors))
    return _Header(version, alignment, data_offset, MappingProxyType(metadata),
                   MappingProxyType(value_types), MappingProxyType(tensors), held)


class GGUFFile:
    """A parsed GGUF file whose tensor data stays in a read-only mapping.

    Open one with `GGUFFile.open(path)` (memory-maps the file) or
    `GGUFFile.from_buffer(data)` (parses a bytes-like object in place, no copy).
    """

    def __init__(self, buf: Any, size: int, header: _Header, path: Path | None,
                 stat: os.stat_result | None = None):
        self._buf = buf
        self.size = size
        self.path = path
        #: the opened file's fstat (None for buffers): identifies the mapping
        self.stat = stat
        self.version = header.version
        self.alignment = header.alignment
        self.data_offset = header.data_offset
        self.metadata: Mapping[str, Any] = header.metadata
        #: key -> (type,) or (ARRAY, element type, ...) as stored in the file
        self.value_types: Mapping[str, tuple[GGUFValueType, ...]] = header.value_types
        #: tensor infos in file order
        self.tensors: Mapping[str, TensorInfo] = header.tensors
        #: host memory the parsed header keeps (an upper estimate): its metadata values, keys,
        #: tensor infos and a copy of the header bytes; a model store counts it per model
        self.held_bytes: int = header.held_bytes

    @classmethod
    def open(cls, path: str | os.PathLike) -> "GGUFFile":
        """Memory-map and parse a GGUF file."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                size = stat.st_size
                buf: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as exc:
            raise file_error(exc, path) from None
        try:
            header = parse_header(buf, size)
        except GGUFError as exc:
            if isinstance(buf, mmap.mmap):
                buf.close()
            raise GGUFError(f"{path}: {exc}") from None
        return cls(buf, size, header, path, stat)

    @classmethod
    def from_buffer(cls, data: Any) -> "GGUFFile":
        """Parse a GGUF held in memory (bytes, bytearray, memoryview, mmap); views share its memory."""
        if isinstance(data, memoryview):
            data = data.cast("B") if data.c_contiguous else data.tobytes()
        elif not isinstance(data, (bytes, bytearray, mmap.mmap)):
            data = memoryview(data).cast("B")
        header = parse_header(data, len(data))
        return cls(data, len(data), header, None)

    @property
    def closed(self) -> bool:
        return self._buf is None

    @property
    def header(self) -> bytes:
        """The file's bytes from 0 up to the start of tensor data."""
        return bytes(self._live()[: min(self.data_offset, self.size)])

    @property
    def tensor_data_size(self) -> int:
        """Bytes of tensor data (padding excluded)."""
        return sum(t.nbytes for t in self.tensors.values())

    def _live(self) -> Any:
        if self._buf is None:
            raise ClosedError("the GGUF file is closed")
        return self._buf

    def view(self, info: TensorInfo | str) -> np.ndarray:
        """A zero-copy uint8 view of a tensor's data, shaped `info.byte_shape`.

        Read-only when the underlying buffer is (always for files and bytes).
        """
        if isinstance(info, str):
            info = self.tensors[info]
        return np.frombuffer(self._live(), dtype=np.uint8, count=info.nbytes,
                             offset=info.offset).reshape(info.byte_shape)

    def page_in(self, offset: int, length: int) -> None:
        """Ask the kernel to start reading [offset, offset+length) of the mapping (non-blocking)."""
        buf = self._buf
        if not isinstance(buf, mmap.mmap) or not hasattr(mmap, "MADV_WILLNEED") or length <= 0:
            return
        start = offset - offset % mmap.PAGESIZE
        end = min(offset + length, self.size)
        if end > start:
            try:
                buf.madvise(mmap.MADV_WILLNEED, start, end - start)
            except (OSError, ValueError):  # advice only; a closed or odd mapping is not an error
                pass

    def close(self) -> None:
        """Drop the mapping.  Views still held elsewhere keep their pages alive
        until they are garbage-collected (then the mapping is unmapped)."""
        buf, self._buf = self._buf, None
        if isinstance(buf, mmap.mmap):
            try:
                buf.close()
            except BufferError:  # exported views remain; the mmap closes when they are freed
                pass

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "<buffer>"
        return (f"GGUFFile({where!r}, version={self.version}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors{', closed' if self.closed else ''})")


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Memory-map and parse a GGUF file (see `GGUFFile`)."""
    return GGUFFile.open(path)
