"""Seed corpora of the fuzz targets, generated (none is kept in the repository).

    python tests/fuzz/seeds.py reader|guest_parser|imports DIR

writes small valid inputs into DIR: GGUF files built with tests/gguf_helpers.py (every
metadata value type, nested arrays, one tensor of every ggml type, version 2 and 3, a
non-default alignment), the tiny llama of `write_tiny_llama` (needs gguf-py) with its
tensors shrunk, and -- where `realm.models.pull` has already cached them, nothing is
downloaded -- the headers of SmolLM2 and Gemma 3 with their arrays cut to a few items.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts tests/ on sys.path)

import numpy as np  # noqa: E402

from gguf_helpers import Arr, RawTensor, build_gguf  # noqa: E402
from realm.quants import GGMLType  # noqa: E402
from realm.reader import TYPE_GEOMETRY, GGUFFile, GGUFValueType as VT, StringArray  # noqa: E402

ARRAY_ITEMS = 24  # arrays of real headers are cut to this many items


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


def _tensor(name: str, ttype: GGMLType, rows: int = 1, rng: np.random.Generator | None = None) -> RawTensor:
    """A tensor of `rows` rows of one block, of random bytes whose fp16 scales stay finite-ish."""
    block, size = TYPE_GEOMETRY[ttype]
    rng = rng or _rng(name)
    data = rng.integers(0, 256, rows * size, dtype=np.uint8)
    if ttype not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.F64, GGMLType.I8, GGMLType.I16,
                     GGMLType.I32, GGMLType.I64):
        data[1::2] &= 0x3B  # keep f16 exponents small (most block scales are f16 at even offsets)
    ne = (block,) if rows == 1 else (block, rows)
    return RawTensor(name, ne, ttype, data.tobytes())


def synthetic() -> dict[str, bytes]:
    """Hand-made files covering the format."""
    out: dict[str, bytes] = {}
    scalars = [("u8", VT.UINT8, 7), ("i8", VT.INT8, -7), ("u16", VT.UINT16, 65535), ("i16", VT.INT16, -300),
               ("u32", VT.UINT32, 2**32 - 1), ("i32", VT.INT32, -2**31), ("f32", VT.FLOAT32, 1.5),
               ("b", VT.BOOL, True), ("s", VT.STRING, "héllo"), ("u64", VT.UINT64, 2**64 - 1),
               ("i64", VT.INT64, -2**63), ("f64", VT.FLOAT64, -0.25)]
    arrays = [(f"a.{VT(t).name.lower()}", VT.ARRAY, Arr(t, items)) for t, items in [
        (VT.UINT8, [0, 255]), (VT.INT32, [-1, 2, 3]), (VT.FLOAT32, [0.5, -1.0]), (VT.BOOL, [True, False]),
        (VT.UINT64, [1]), (VT.FLOAT64, []), (VT.STRING, ["a", "", "日本", "\u00e9"]), (VT.INT16, [1, -1])]]
    nested = [("nested", VT.ARRAY, Arr(VT.ARRAY, [Arr(VT.STRING, ["x"]), Arr(VT.ARRAY, [Arr(VT.BOOL, [False])])])),
              ("empty.nested", VT.ARRAY, Arr(VT.ARRAY, []))]
    out["all-values-v3"] = build_gguf([("general.architecture", VT.STRING, "llama"), *scalars, *arrays, *nested])[0]
    out["all-values-v2"] = build_gguf(scalars + arrays, version=2)[0]
    out["empty"] = build_gguf()[0]
    rng = _rng("every-type")
    out["every-type"] = build_gguf([("general.architecture", VT.STRING, "llama")],
                                   [_tensor(f"t.{t.name}", t, rows=2, rng=rng) for t in TYPE_GEOMETRY])[0]
    out["aligned-64"] = build_gguf([("general.alignment", VT.UINT32, 64)],
                                   [_tensor("a", GGMLType.Q8_0), _tensor("b", GGMLType.F32),
                                    RawTensor("z", (0,), GGMLType.F32, b"")], alignment=64)[0]
    out["aligned-1"] = build_gguf([("general.alignment", VT.UINT32, 1), ("general.name", VT.STRING, "xyzw")],
                                  [_tensor("b", GGMLType.F32), _tensor("a", GGMLType.Q8_0), _tensor("c", GGMLType.F16)],
                                  alignment=1)[0]
    out["three-tensors"] = build_gguf(
        [("general.architecture", VT.STRING, "llama"), ("n", VT.UINT32, 5),
         ("tok", VT.ARRAY, Arr(VT.STRING, ["a", "bc", "def"])), ("scores", VT.ARRAY, Arr(VT.FLOAT32, [0.5, 1.5, 2.5]))],
        [RawTensor("a", (64,), GGMLType.F32, bytes(range(256))), RawTensor("b", (32, 2), GGMLType.Q8_0, bytes(68)),
         RawTensor("c", (256,), GGMLType.Q4_K, bytes(144))])[0]
    out["4d"] = build_gguf([], [RawTensor("w", (32, 2, 1, 2), GGMLType.Q4_0, bytes(18 * 4))])[0]
    return out


# -- real-shaped headers -----------------------------------------------------------------------

def _as_build_value(value: Any, types: tuple[int, ...], n: int) -> Any:
    """A realm metadata value back in `build_gguf` form, arrays cut to n items."""
    if types[0] != VT.ARRAY:
        return value.encode("utf-8", "surrogateescape") if types[0] == VT.STRING else value
    etype = types[1] if len(types) > 1 else VT.UINT8
    if isinstance(value, StringArray):
        return Arr(VT.STRING, [value.raw(i) for i in range(min(len(value), n))])
    if isinstance(value, list):
        return Arr(VT.ARRAY, [_as_build_value(v, types[1:], n) for v in value[:n]])
    return Arr(etype, value[:n].tolist())


def shrunk(file: GGUFFile, *, n: int = ARRAY_ITEMS, header_only: bool = False) -> bytes:
    """A model's metadata (arrays cut to n items) and tensor infos.  header_only: the real shapes
    and offsets, cut at the start of tensor data (what a guest parses); else each tensor one
    block row of its type (a whole, valid file)."""
    kvs = []
    for key, value in file.metadata.items():
        types = file.value_types[key]
        if types[0] == VT.STRING:
            kvs.append((key, VT.STRING, _as_build_value(value, types, n)))
        else:
            kvs.append((key, types[0], _as_build_value(value, types, n)))
    tensors = []
    rng = _rng(str(file.path))
    for t in file.tensors.values():
        if header_only:
            tensors.append(RawTensor(t.name, tuple(reversed(t.shape)), t.dtype, b"", offset=t.offset - file.data_offset))
        else:
            tensors.append(_tensor(t.name, t.dtype, rows=2 if len(t.shape) > 1 else 1, rng=rng))
    raw, layout = build_gguf(kvs, tensors, version=file.version, alignment=file.alignment)
    return raw[:layout.data_offset] if header_only else raw


def tiny_llama() -> dict[str, bytes]:
    """gguf_helpers.write_tiny_llama's model (via gguf-py), shrunk, and its real header."""
    try:
        from gguf_helpers import write_tiny_llama

        with tempfile.TemporaryDirectory() as tmp:
            path = write_tiny_llama(Path(tmp) / "tiny.gguf")
            with GGUFFile.open(path) as f:
                return {"tiny-llama-shrunk": shrunk(f), "tiny-llama-header": f.header}
    except ImportError:  # no gguf-py
        return {}


def real_models() -> dict[str, bytes]:
    """SmolLM2's and Gemma 3's headers, shrunk, if pull() cached them already (never downloads)."""
    from realm.models import MODELS, model_path

    out = {}
    for name in MODELS:
        path = model_path(name)
        if not path.is_file() or path.stat().st_size != MODELS[name].size:
            continue
        with GGUFFile.open(path) as f:
            out[f"{name}-shrunk"] = shrunk(f)
            out[f"{name}-header"] = shrunk(f, header_only=True)
    return out


def gguf_seeds() -> dict[str, bytes]:
    return {**synthetic(), **tiny_llama(), **real_models()}


def write(seeds: dict[str, bytes], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in seeds.items():
        paths.append(folder / f"seed-{name}")
        paths[-1].write_bytes(data)
    return paths


def for_target(target: str) -> dict[str, bytes]:
    if target in ("reader", "guest_parser"):
        return gguf_seeds()
    if target == "imports":
        from imports_program import seed_programs

        return seed_programs()
    raise SystemExit(f"unknown target {target!r}")


def main(argv: Iterable[str]) -> None:
    args = list(argv)
    if len(args) != 2:
        raise SystemExit("usage: seeds.py reader|guest_parser|imports DIR")
    paths = write(for_target(args[0]), Path(args[1]))
    print(f"{len(paths)} seeds, {sum(p.stat().st_size for p in paths)} bytes in {args[1]}")


if __name__ == "__main__":
    main(sys.argv[1:])
