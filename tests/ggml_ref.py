"""llama.cpp's own quantizers and dequantizers, reached through ctypes in the
libggml-base that llama-cpp-python installs: the reference for bit-exactness,
shared by the tests and the benchmarks."""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_ROW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
F32, Q8_K = 0, 15


class GGML:
    """The subset of libggml-base used as a reference."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
        lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
        ]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.dequantize_row_q8_K.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.quantize_row_q8_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

    def traits(self, qtype: int) -> _TypeTraits:
        return self.lib.ggml_get_type_traits(int(qtype)).contents

    def to_float(self, data: np.ndarray, qtype: int, out: np.ndarray | None = None) -> np.ndarray:
        """llama.cpp's dequantizer for `qtype` over a flat uint8 array of whole blocks."""
        tr = self.traits(qtype)
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        n = data.size // tr.type_size * tr.blck_size
        if out is None:
            out = np.empty(n, dtype=np.float32)
        assert out.dtype == np.float32 and out.flags.c_contiguous and out.size == n
        if int(qtype) == Q8_K:
            self.lib.dequantize_row_q8_K(data.ctypes.data, out.ctypes.data, n)
        elif int(qtype) == F32:  # ggml has no converter for its native type
            out[:] = data.view(np.float32)
        else:
            _ROW_FN(tr.to_float)(data.ctypes.data, out.ctypes.data, n)
        return out

    def requires_imatrix(self, qtype: int) -> bool:
        """Whether llama.cpp's quantizer for `qtype` needs an importance matrix (IQ2_XXS, IQ2_XS,
        IQ2_S, IQ1_S, IQ1_M): without one ggml_quantize_chunk aborts the process."""
        return bool(self.lib.ggml_quantize_requires_imatrix(int(qtype)))

    def quantize(self, values: np.ndarray, qtype: int, imatrix: np.ndarray | None = None) -> np.ndarray:
        """llama.cpp's quantizer: float32 rows (last axis a multiple of the block) to blocks.
        imatrix: n_per_row positive float32 importances, as llama-imatrix makes them; required
        by the types `requires_imatrix` names, optional for the other IQ types."""
        tr = self.traits(qtype)
        values = np.ascontiguousarray(values, dtype=np.float32)
        n_per_row = values.shape[-1]
        if n_per_row % tr.blck_size:  # llama.cpp would write whole blocks past `out`
            raise ValueError(f"rows of {n_per_row} values are not whole {tr.type_name.decode()} blocks of {tr.blck_size}")
        nrows = values.size // n_per_row
        if imatrix is not None:
            imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
            if imatrix.shape != (n_per_row,):
                raise ValueError(f"imatrix holds {imatrix.shape} values, ({n_per_row},) needed")
        elif int(qtype) != Q8_K and self.requires_imatrix(qtype):
            raise ValueError(f"llama.cpp's {tr.type_name.decode()} quantizer needs an imatrix")
        out = np.empty(nrows * (n_per_row // tr.blck_size) * tr.type_size, dtype=np.uint8)
        if int(qtype) == Q8_K:
            self.lib.quantize_row_q8_K_ref(values.ctypes.data, out.ctypes.data, values.size)
        else:
            im = None if imatrix is None else imatrix.ctypes.data
            self.lib.ggml_quantize_chunk(int(qtype), values.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, im)
        return out


def requantize(source: str | os.PathLike, ftype: str, folder: str | os.PathLike) -> Path:
    """`source` requantized by llama.cpp's quantizer (llama-cpp-python's llama_model_quantize)
    to `ftype` ("Q3_K_M", "IQ4_XS", ...: its LLAMA_FTYPE_MOSTLY_* name), cached in `folder` as
    <source sha256[:16]>-<ftype>.gguf; RuntimeError if llama.cpp refuses."""
    import hashlib

    import llama_cpp

    source, folder = Path(source), Path(folder)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    dest = folder / f"{digest}-{ftype}.gguf"
    if not dest.exists():
        folder.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
        params.allow_requantize = True  # the PyPI models are quantized already
        params.nthread = 2
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")  # parallel runs never see half a file
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.exists():
            raise RuntimeError(f"llama.cpp could not quantize {source.name} to {ftype} (code {rc})")
        os.replace(tmp, dest)
    return dest


def requantize_tensors(source: str | os.PathLike, name: str, types: Callable[[str], int | None],
                       folder: str | os.PathLike) -> Path:
    """`source` with some of its matrices requantized by llama.cpp's tensor quantizer
    (ggml_quantize_chunk over the values its to_float gives) under a flat importance matrix:
    types(tensor name) is the new GGML type, or None to copy the tensor as it is.  For the
    formats llama.cpp's file quantizer takes only with an importance matrix, which
    llama_model_quantize cannot be handed from Python.  Cached in `folder` as
    <source sha256[:16]>-<name>.gguf."""
    import hashlib

    import gguf

    source, folder = Path(source), Path(folder)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    dest = folder / f"{digest}-{name}.gguf"
    if dest.exists():
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    ggml = load_ggml()
    reader = gguf.GGUFReader(source)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")  # parallel runs never see half a file
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(str(tmp), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.alignment"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub)
    for t in reader.tensors:
        qtype = types(t.name)
        if qtype is None:
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
            continue
        n_per_row = int(t.shape[0])
        values = ggml.to_float(t.data.reshape(-1).view(np.uint8), int(t.tensor_type)).reshape(-1, n_per_row)
        blocks = ggml.quantize(values, qtype, np.ones(n_per_row, dtype=np.float32)).reshape(values.shape[0], -1)
        w.add_tensor(t.name, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType(int(qtype)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, dest)
    return dest


def _libdir() -> str:
    import llama_cpp

    return os.path.join(os.path.dirname(llama_cpp.__file__), "lib")


@lru_cache(maxsize=1)
def load_ggml() -> GGML:
    """The reference library; ImportError when llama-cpp-python is not installed."""
    return GGML(ctypes.CDLL(os.path.join(_libdir(), "libggml-base.so")))


@lru_cache(maxsize=1)
def load_ggml_cpu() -> ctypes.CDLL:
    """llama.cpp's CPU backend (libggml-cpu, as llama-cpp-python built it), initialized;
    ImportError when llama-cpp-python is not installed."""
    lib = ctypes.CDLL(os.path.join(_libdir(), "libggml-cpu.so"))
    lib.ggml_cpu_init()
    return lib
