"""The guest's tokenizer and sampler (guest/*.c), compiled natively for the tests.

`build(dir)` compiles guest/{unicode,tokenizer*,sampler}.c with tests/c/tokenizer_shim.c
into a shared library (gcc, -Werror; REALM_CFLAGS adds flags such as
-fsanitize=undefined) and `Native` wraps it with ctypes: `Tokenizer` takes a
tok_vocab filled from a GGUF file's metadata exactly as the guest's GGUF parser
fills it (pointers to the arrays as GGUF stores them), `Sampler` a sampler_params.
"""

from __future__ import annotations

import ctypes as C
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "guest"
SOURCES = ["unicode.c", "tokenizer.c", "tokenizer_bpe.c", "tokenizer_spm.c", "tokenizer_merge.c", "sampler.c", "softmax.c"]

TOK_KIND_BPE, TOK_KIND_SPM = 1, 2
TOK_GGUF_I32, TOK_GGUF_F32 = 5, 6
TOK_ERR = {
    "BAD_ARG": -1, "BAD_VOCAB": -2, "DUPLICATE_TOKEN": -3, "UNKNOWN_MODEL": -4, "UNKNOWN_PRE": -5,
    "NO_MERGES": -6, "MISSING_SPECIAL": -7, "NO_MEMORY": -8, "TOO_LONG": -9, "BUFFER_TOO_SMALL": -10,
    "BAD_TOKEN": -11, "NO_BYTE_TOKEN": -12,
}
TOK_MAX_TEXT_LEN = 256 * 1024


class GGUFStrings(C.Structure):
    _fields_ = [("data", C.c_void_p), ("size", C.c_uint32), ("count", C.c_uint32)]


class GGUFNumbers(C.Structure):
    _fields_ = [("data", C.c_void_p), ("count", C.c_uint32), ("type", C.c_uint32)]


_ID_FIELDS = ["bos_id", "eos_id", "eot_id", "eom_id", "unk_id", "sep_id", "pad_id", "mask_id",
              "fim_pre_id", "fim_suf_id", "fim_mid_id", "fim_pad_id", "fim_rep_id", "fim_sep_id"]


class TokVocab(C.Structure):
    _fields_ = [("kind", C.c_int), ("pre", C.c_char_p), ("pre_len", C.c_uint32),
                ("tokens", GGUFStrings), ("merges", GGUFStrings),
                ("scores", GGUFNumbers), ("token_types", GGUFNumbers),
                *[(name, C.c_int64) for name in _ID_FIELDS],
                ("add_bos", C.c_int32), ("add_eos", C.c_int32), ("add_space_prefix", C.c_int32)]


class TokenizerStruct(C.Structure):
    """The public head of `tokenizer` (tokenizer.h); the private tail is not mirrored."""

    _fields_ = [("kind", C.c_int), ("pre", C.c_int), ("n_vocab", C.c_uint32),
                *[(name, C.c_int32) for name in _ID_FIELDS],
                ("add_bos", C.c_int), ("add_eos", C.c_int), ("add_space_prefix", C.c_int),
                ("ignore_merges", C.c_int), ("eog", C.c_int32 * 32), ("n_eog", C.c_uint32)]


class SamplerParams(C.Structure):
    _fields_ = [("temperature", C.c_float), ("top_k", C.c_int32), ("top_p", C.c_float),
                ("min_p", C.c_float), ("repeat_penalty", C.c_float),
                ("frequency_penalty", C.c_float), ("presence_penalty", C.c_float),
                ("penalty_last_n", C.c_int32), ("seed", C.c_uint64)]


def build(out_dir: Path) -> Path:
    """Compile the guest sources and the shim into out_dir/libguest_native.so."""
    cc = os.environ.get("CC") or shutil.which("gcc") or "cc"
    lib = Path(out_dir) / "libguest_native.so"
    cmd = [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
           *os.environ.get("REALM_CFLAGS", "").split(), "-I", str(GUEST),
           *[str(GUEST / s) for s in SOURCES], str(ROOT / "tests" / "c" / "tokenizer_shim.c"),
           "-o", str(lib), "-lm"]
    subprocess.run(cmd, check=True)
    return lib


def gguf_strings(items: Sequence[bytes]) -> bytes:
    """A GGUF string array's payload: u64 length + bytes per item."""
    return b"".join(struct.pack("<Q", len(s)) + s for s in items)


class Native:
    def __init__(self, path: Path):
        lib = self.lib = C.CDLL(str(path))
        lib.shim_tokenizer_new.restype = C.c_void_p
        lib.shim_tokenizer_new.argtypes = [C.POINTER(TokVocab), C.POINTER(C.c_int)]
        lib.shim_tokenizer_delete.argtypes = [C.c_void_p]
        lib.tokenizer_encode.argtypes = [C.c_void_p, C.c_char_p, C.c_uint32, C.c_int, C.c_int,
                                         C.POINTER(C.c_int32), C.c_uint32, C.POINTER(C.c_uint32)]
        lib.tokenizer_piece.argtypes = [C.c_void_p, C.c_int32, C.c_int, C.c_char_p, C.c_uint32]
        lib.tokenizer_piece.restype = C.c_int32
        lib.tokenizer_attr.argtypes = [C.c_void_p, C.c_int32]
        lib.tokenizer_attr.restype = C.c_uint32
        lib.tokenizer_is_eog.argtypes = [C.c_void_p, C.c_int32]
        lib.tokenizer_find.argtypes = [C.c_void_p, C.c_char_p, C.c_uint32]
        lib.tokenizer_find.restype = C.c_int32
        lib.tokenizer_strerror.restype = C.c_char_p
        lib.shim_all_pieces.argtypes = [C.c_void_p, C.c_int, C.c_char_p, C.c_uint64, C.POINTER(C.c_uint64)]
        lib.shim_all_pieces.restype = C.c_int64
        lib.shim_unicode_flags.argtypes = [C.c_uint32, C.c_uint32, C.POINTER(C.c_uint16)]
        lib.tok_utf8_stream_feed.argtypes = [C.c_void_p, C.c_char_p, C.c_uint32, C.c_char_p]
        lib.tok_utf8_stream_feed.restype = C.c_uint32
        lib.tok_utf8_stream_flush.argtypes = [C.c_void_p, C.c_char_p]
        lib.tok_utf8_stream_flush.restype = C.c_uint32
        lib.shim_sampler_new.restype = C.c_void_p
        lib.shim_sampler_new.argtypes = [C.POINTER(SamplerParams), C.POINTER(C.c_int)]
        lib.shim_sampler_delete.argtypes = [C.c_void_p]
        lib.sampler_accept.argtypes = [C.c_void_p, C.c_int32]
        lib.sampler_sample.argtypes = [C.c_void_p, C.POINTER(C.c_float), C.c_uint32]
        lib.sampler_sample.restype = C.c_int32
        lib.sampler_candidates.argtypes = [C.c_void_p, C.POINTER(C.c_float), C.c_uint32,
                                           C.POINTER(C.c_int32), C.POINTER(C.c_float), C.c_uint32]
        lib.sampler_candidates.restype = C.c_int32
        lib.sampler_uniform.argtypes = [C.c_void_p]
        lib.sampler_uniform.restype = C.c_double

    def unicode_flags(self, first: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.uint16)
        self.lib.shim_unicode_flags(first, n, out.ctypes.data_as(C.POINTER(C.c_uint16)))
        return out


class Tokenizer:
    """A guest tokenizer over a vocabulary given as GGUF arrays (kept alive here)."""

    def __init__(self, native: Native, vocab: TokVocab, keep: list[Any]):
        self.lib = native.lib
        self._keep = keep
        err = C.c_int(0)
        self.handle = self.lib.shim_tokenizer_new(C.byref(vocab), C.byref(err))
        self.error = err.value
        self.info = TokenizerStruct.from_address(self.handle) if self.handle else None

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.shim_tokenizer_delete(self.handle)
            self.handle = None

    def encode_raw(self, text: bytes, add_special: bool, parse_special: bool, out_max: int | None = None):
        """(return code, total count, ids written)."""
        cap = len(text) * 3 + 8 if out_max is None else out_max
        out = (C.c_int32 * max(cap, 1))()
        n = C.c_uint32(0)
        rc = self.lib.tokenizer_encode(self.handle, text, len(text), int(add_special), int(parse_special),
                                       out, cap, C.byref(n))
        return rc, n.value, list(out[:min(n.value, cap)])

    def encode(self, text: bytes, add_special: bool = False, parse_special: bool = False) -> list[int]:
        rc, _, ids = self.encode_raw(text, add_special, parse_special)
        if rc:
            raise RuntimeError(f"tokenizer_encode: {rc} ({self.lib.tokenizer_strerror(rc).decode()})")
        return ids

    def piece(self, token: int, special: bool = True) -> bytes:
        need = self.lib.tokenizer_piece(self.handle, token, int(special), None, 0)
        if need < 0:
            raise ValueError(f"tokenizer_piece({token}): {need}")
        buf = C.create_string_buffer(max(need, 1))
        n = self.lib.tokenizer_piece(self.handle, token, int(special), buf, need)
        assert n == need
        return buf.raw[:n]

    def all_pieces(self, special: bool) -> list[bytes]:
        n_vocab = self.info.n_vocab
        cap = 64 * n_vocab + 4096
        buf = C.create_string_buffer(cap)
        ends = (C.c_uint64 * n_vocab)()
        total = self.lib.shim_all_pieces(self.handle, int(special), buf, cap, ends)
        assert total >= 0
        raw, prev, out = buf.raw, 0, []
        for end in ends:
            out.append(raw[prev:end])
            prev = end
        return out

    def detokenize(self, ids: Sequence[int], special: bool = False) -> bytes:
        return b"".join(self.piece(i, special) for i in ids)

    def attr(self, token: int) -> int:
        return self.lib.tokenizer_attr(self.handle, token)

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.tokenizer_is_eog(self.handle, token))

    def find(self, text: bytes) -> int:
        return self.lib.tokenizer_find(self.handle, text, len(text))


def vocab_from_metadata(md: Mapping[str, Any], *, pre: bytes | None = None) -> tuple[TokVocab, list[Any]]:
    """Fill a tok_vocab from GGUF metadata (realm.reader's), as the guest's parser would.

    Returns the struct and the buffers it points into (keep them alive)."""
    keep: list[Any] = []

    def strings(key: str) -> GGUFStrings:
        if key not in md:
            return GGUFStrings(None, 0, 0)
        arr = md[key]
        raw = [arr.raw(i) for i in range(len(arr))]
        blob = C.create_string_buffer(gguf_strings(raw), max(1, sum(8 + len(r) for r in raw)))
        keep.append(blob)
        return GGUFStrings(C.cast(blob, C.c_void_p), len(blob), len(raw))

    def numbers(key: str) -> GGUFNumbers:
        if key not in md:
            return GGUFNumbers(None, 0, 0)
        arr = np.ascontiguousarray(md[key])
        gtype = TOK_GGUF_F32 if arr.dtype == np.float32 else TOK_GGUF_I32
        keep.append(arr)
        return GGUFNumbers(arr.ctypes.data, len(arr), gtype)

    model = md["tokenizer.ggml.model"]
    v = TokVocab()
    v.kind = {"gpt2": TOK_KIND_BPE, "llama": TOK_KIND_SPM}.get(model, 0)
    pre_value = pre if pre is not None else md.get("tokenizer.ggml.pre", "").encode()
    if pre_value:
        keep.append(pre_value)
        v.pre, v.pre_len = pre_value, len(pre_value)
    v.tokens = strings("tokenizer.ggml.tokens")
    v.merges = strings("tokenizer.ggml.merges")
    v.scores = numbers("tokenizer.ggml.scores")
    v.token_types = numbers("tokenizer.ggml.token_type")
    keys = {"bos_id": "bos_token_id", "eos_id": "eos_token_id", "eot_id": "eot_token_id",
            "eom_id": "eom_token_id", "unk_id": "unknown_token_id", "sep_id": "seperator_token_id",
            "pad_id": "padding_token_id", "mask_id": "mask_token_id",
            "fim_pre_id": "fim_pre_token_id", "fim_suf_id": "fim_suf_token_id",
            "fim_mid_id": "fim_mid_token_id", "fim_pad_id": "fim_pad_token_id",
            "fim_rep_id": "fim_rep_token_id", "fim_sep_id": "fim_sep_token_id"}
    for field, key in keys.items():
        setattr(v, field, int(md.get(f"tokenizer.ggml.{key}", -1)))
    for field, key in {"add_bos": "add_bos_token", "add_eos": "add_eos_token",
                       "add_space_prefix": "add_space_prefix"}.items():
        value = md.get(f"tokenizer.ggml.{key}")
        setattr(v, field, -1 if value is None else int(bool(value)))
    return v, keep


class Sampler:
    def __init__(self, native: Native, **params: Any):
        self.lib = native.lib
        p = SamplerParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                          frequency_penalty=0.0, presence_penalty=0.0, penalty_last_n=64, seed=0)
        for k, v in params.items():
            setattr(p, k, v)
        err = C.c_int(0)
        self.handle = self.lib.shim_sampler_new(C.byref(p), C.byref(err))
        self.error = err.value

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.shim_sampler_delete(self.handle)
            self.handle = None

    def accept(self, token: int) -> None:
        self.lib.sampler_accept(self.handle, token)

    def sample(self, logits: np.ndarray) -> int:
        buf = np.array(logits, dtype=np.float32)  # a copy: penalties apply in place
        return self.lib.sampler_sample(self.handle, buf.ctypes.data_as(C.POINTER(C.c_float)), len(buf))

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        buf = np.array(logits, dtype=np.float32)
        ids = np.empty(len(buf), dtype=np.int32)
        probs = np.empty(len(buf), dtype=np.float32)
        n = self.lib.sampler_candidates(self.handle, buf.ctypes.data_as(C.POINTER(C.c_float)), len(buf),
                                        ids.ctypes.data_as(C.POINTER(C.c_int32)),
                                        probs.ctypes.data_as(C.POINTER(C.c_float)), len(buf))
        if n < 0:
            raise RuntimeError(f"sampler_candidates: {n}")
        return ids[:n], probs[:n]

    def uniform(self) -> float:
        return self.lib.sampler_uniform(self.handle)
