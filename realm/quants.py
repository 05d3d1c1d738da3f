"""GGML tensor types and `dequantize`, realm's NumPy-style front end to the C kernels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import _native
from .errors import ArgumentTypeError, InvalidArgumentError
from .fresh import empty_float32
from .ggml_types import GGMLType, as_qtype  # re-exported: realm.quants is where callers find them
from .threads import check_threads


@dataclass(frozen=True)
class QuantInfo:
    """Block geometry of a type: `block_size` elements are stored in `type_size` bytes,
    at an address that is a multiple of `align`."""

    qtype: GGMLType
    name: str
    block_size: int
    type_size: int
    align: int


def _build_info() -> dict[GGMLType, QuantInfo]:
    table = {}
    for t in GGMLType:
        traits = _native.type_traits(int(t))
        if traits is not None:
            table[t] = QuantInfo(t, *traits)
    return table


_INFO = _build_info()

#: The types `dequantize` accepts, in ggml's numbering order.
SUPPORTED_TYPES: tuple[GGMLType, ...] = tuple(sorted(_INFO))

#: The weight types the forward pass multiplies (a table row with dot kernels, csrc/traits.c);
#: a model holding any other type in a weight matrix is refused (UnsupportedModelError).
FORWARD_TYPES: tuple[GGMLType, ...] = tuple(
    GGMLType(t) for t, row in sorted(_native.formats().items()) if row["act"] is not None)


def can_dequantize(dtype: GGMLType) -> bool:
    """Whether `dequantize` has a kernel for `dtype`."""
    return dtype in _INFO


def quant_info(qtype: GGMLType | int | str) -> QuantInfo:
    """Block size, bytes per block and name of a type realm can dequantize."""
    t = as_qtype(qtype)
    try:
        return _INFO[t]
    except KeyError:
        supported = ", ".join(i.name for i in _INFO.values())
        raise InvalidArgumentError(f"{t.name} is not supported by realm (supported: {supported})") from None


def _byte_view(data: Any) -> np.ndarray:
    """`data` as a uint8 ndarray sharing its memory; never a copy."""
    if isinstance(data, np.ndarray):
        arr = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        arr = np.asarray(memoryview(data))  # a view with the buffer's shape and format
    else:
        raise ArgumentTypeError(
            f"data must be bytes, bytearray, memoryview or a uint8 numpy array, not {type(data).__name__}"
        )
    if arr.dtype != np.uint8:
        raise ArgumentTypeError(f"data must hold uint8 bytes, not {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise InvalidArgumentError("data must be C-contiguous (pass np.ascontiguousarray(data) to copy it)")
    return arr


def dequantize(
    data: Any,
    qtype: GGMLType | int | str,
    shape: Sequence[int] | None = None,
    *,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Dequantize GGML blocks to float32, bit-exact with llama.cpp.

    data: bytes, bytearray, memoryview or a C-contiguous uint8 array, never copied;
        it must be aligned as the block struct needs (`quant_info(qtype).align`: 2 bytes;
        4 for F32 and Q8_K; 1 for MXFP4 and IQ1_M).
        As in `gguf.quants.dequantize`, the last axis holds the bytes of whole
        blocks and becomes that many elements; leading axes are kept.
    qtype: a `GGMLType`, `gguf.GGMLQuantizationType`, its int value or its name.
    shape: the element shape of the result (e.g. a GGUF tensor's shape, outermost
        first); it must hold exactly the elements in `data`, with a last axis of
        whole blocks.
    out: a writable C-contiguous float32 array with exactly that many elements,
        filled in place and returned.
    threads: None uses every core, 1 stays on the calling thread.  The GIL is
        released while the kernel runs.
    """
    info = quant_info(qtype)
    raw = _byte_view(data)
    nthreads = check_threads(threads)  # the C driver takes 0 as "every core"

    if raw.ndim == 0:
        raise InvalidArgumentError("data must have at least one axis")
    row_bytes = raw.shape[-1]
    if row_bytes % info.type_size:
        raise InvalidArgumentError(
            f"the last axis holds {row_bytes} bytes, not a whole number of "
            f"{info.name} blocks of {info.type_size} bytes"
        )
    if raw.ctypes.data % info.align:
        raise InvalidArgumentError(
            f"{info.name} data must start at a multiple of {info.align} bytes (as GGUF tensors do); "
            f"this buffer starts at {raw.ctypes.data % info.align} past one; copy it to align it"
        )
    result_shape: tuple[int, ...] = (*raw.shape[:-1], row_bytes // info.type_size * info.block_size)
    n_elements = int(np.prod(result_shape, dtype=np.int64))

    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise InvalidArgumentError(f"shape {shape} has a negative axis")
        if int(np.prod(shape, dtype=np.int64)) != n_elements:
            raise InvalidArgumentError(f"shape {shape} does not hold the {n_elements} elements in data")
        if shape and shape[-1] % info.block_size:
            raise InvalidArgumentError(f"the last axis of shape {shape} is not a whole number of {info.block_size}-element blocks")
        result_shape = shape

    if out is None:
        out = empty_float32(result_shape)  # large ones on huge pages, recycled once dropped: see realm/fresh.py
    else:
        if not isinstance(out, np.ndarray):
            raise ArgumentTypeError(f"out must be a numpy array, not {type(out).__name__}")
        if out.dtype != np.float32:
            raise ArgumentTypeError(f"out must be float32, not {out.dtype}")
        if not out.flags.c_contiguous:
            raise InvalidArgumentError("out must be C-contiguous")
        if not out.flags.writeable:
            raise InvalidArgumentError("out is read-only")
        if out.size != n_elements:
            raise InvalidArgumentError(f"out holds {out.size} elements, {n_elements} needed")
        if np.may_share_memory(out, raw):
            raise InvalidArgumentError("out overlaps data")

    _native.dequantize_into(raw.reshape(-1), int(info.qtype), out.reshape(-1), nthreads)
    return out
