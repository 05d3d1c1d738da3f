"""Fuzz realm's Python GGUF reader (realm/reader.py) and the model store on top of it.

    python tests/fuzz/fuzz_reader.py -max_total_time=600 -artifact_prefix=/tmp/f/ CORPUS_DIR

Each input is parsed by `GGUFFile.from_buffer` and stored with `ModelStore.store_bytes`.
Contract: a GGUFError (or nothing) and never any other exception; both accept the same inputs;
an accepted file holds together -- every metadata value is readable (every string of a
StringArray decodes), every tensor view lies inside the file, whole, aligned, and overlaps no
other, the header is the file's first data_offset bytes -- and every tensor of a type realm
can dequantize dequantizes (the C kernels on hostile bytes).  Every REALM_FUZZ_TRACEMALLOC_EVERY
-th input (default 64; 0: never) the parse runs under tracemalloc, and its peak must stay under
8 x the input + 1 MiB (tests/test_corrupt_gguf.py's rule).

Coverage: realm's Python modules are instrumented by atheris (instrument_imports); the C
parts (string_ends in realm/_quant.pxi, the dequantizers in csrc/) run uninstrumented.
"""

from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Finding  # noqa: E402

import atheris  # noqa: E402
import numpy as np  # noqa: E402

with atheris.instrument_imports(include=["realm"]):
    from realm.cache import LayerCache
    from realm.errors import GGUFError
    from realm.reader import GGUFFile, GGUFValueType as VT, StringArray
    from realm.store import ModelStore

TRACE_EVERY = int(os.environ.get("REALM_FUZZ_TRACEMALLOC_EVERY", "64"))
MAX_DEQUANT_ELEMENTS = 1 << 16  # per tensor: bounds the work of one input
_SCALAR_TYPES = {VT.UINT8: int, VT.INT8: int, VT.UINT16: int, VT.INT16: int, VT.UINT32: int, VT.INT32: int,
                 VT.UINT64: int, VT.INT64: int, VT.FLOAT32: float, VT.FLOAT64: float, VT.BOOL: bool, VT.STRING: str}


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Finding(what)


def _chain(item) -> tuple:
    """A plausible type chain for an item of a nested array (the file records only the first's)."""
    if isinstance(item, StringArray):
        return (VT.ARRAY, VT.STRING)
    if isinstance(item, np.ndarray):
        return (VT.ARRAY, VT.UINT8)
    return (VT.ARRAY, VT.ARRAY, *(_chain(item[0])[1:] if item else ()))


def touch_value(key: str, value, types: tuple) -> None:
    """Read a metadata value the way a caller would, checking it matches its type chain."""
    if types[0] != VT.ARRAY:
        check(type(value) is _SCALAR_TYPES[types[0]], f"{key}: {type(value).__name__} for {types}")
        return
    if isinstance(value, StringArray):
        check(types[1:] == (VT.STRING,), f"{key}: a StringArray for {types}")
        items = value.tolist()
        check(len(items) == len(value) and all(isinstance(s, str) for s in items), f"{key}: StringArray items")
        if len(value):
            check(value.raw(-1) == value[-1].encode("utf-8", "surrogateescape"), f"{key}: raw(-1)")
            check(value[:2] == items[:2] and value == items, f"{key}: slicing / equality")
        repr(value)
        check(value.nbytes >= 0, f"{key}: nbytes")
    elif isinstance(value, np.ndarray):
        check(len(types) == 2 and types[1] not in (VT.STRING, VT.ARRAY), f"{key}: an ndarray for {types}")
        check(not value.flags.writeable and value.ndim == 1, f"{key}: arrays are read-only vectors")
        value.tolist()
    else:
        # an empty array of arrays records no element type: (ARRAY,) (see the report of tests/fuzz)
        check(isinstance(value, list) and (types[1:2] == (VT.ARRAY,) or (not value and types == (VT.ARRAY,))),
              f"{key}: a list for {types}")
        for i, item in enumerate(value):  # the type chain is the first item's; others may differ
            touch_value(key, item, types[1:] if i == 0 else _chain(item))


def touch_file(f: GGUFFile, data: bytes) -> None:
    size = len(data)
    check(f.version in (2, 3) and f.alignment > 0 and f.alignment & (f.alignment - 1) == 0, "version/alignment")
    check(f.header == data[:min(f.data_offset, size)], "header is the file's first data_offset bytes")
    check(f.held_bytes >= 0 and list(f.metadata) == list(f.value_types), "held bytes, value types")
    for key, value in f.metadata.items():
        touch_value(key, value, f.value_types[key])
    spans = []
    for name, t in f.tensors.items():
        check(t.name == name and t.offset >= f.data_offset and (t.offset - f.data_offset) % f.alignment == 0,
              f"tensor {name!r}: offset {t.offset} (data at {f.data_offset}, alignment {f.alignment})")
        check(0 <= t.nbytes and t.offset + t.nbytes <= size, f"tensor {name!r} lies outside the file")
        view = f.view(name)
        check(view.nbytes == t.nbytes and view.shape == t.byte_shape and not view.flags.writeable,
              f"tensor {name!r}: view {view.shape} / {t.byte_shape}")
        check(view.tobytes() == data[t.offset:t.offset + t.nbytes], f"tensor {name!r}: view bytes")
        spans.append((t.offset, t.offset + t.nbytes, name))
    spans.sort()
    for (s, e, a), (s2, _, b) in zip(spans, spans[1:]):
        check(e <= s2, f"tensors {a!r} and {b!r} overlap")
    check(f.tensor_data_size == sum(t.nbytes for t in f.tensors.values()), "tensor_data_size")
    repr(f)


def touch_stored(store: ModelStore, model_id: int, f: GGUFFile) -> None:
    model = store.get(model_id)
    check(list(model.tensors) == list(f.tensors) and model.header == f.header, "stored model = parsed file")
    info = model.info()
    check(info.tensor_count == len(f.tensors) and info.total_size == f.tensor_data_size, "model info")
    for t in model.tensors.values():
        if t.dequantizable and t.n_elements <= MAX_DEQUANT_ELEMENTS:
            out = t.dequantize(threads=1)  # any exception here (a misaligned tensor...) is a finding
            check(out.dtype == np.float32 and out.shape == t.shape, f"dequantized {t.name!r}: {out.shape}")


store = ModelStore(LayerCache(1 << 20))
runs = 0


def test_one_input(data: bytes) -> None:
    global runs
    runs += 1
    traced = TRACE_EVERY > 0 and runs % TRACE_EVERY == 0
    if traced:
        tracemalloc.start()
    try:
        f = GGUFFile.from_buffer(data)
    except GGUFError:
        f = None
    finally:
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            check(peak < 8 * len(data) + (1 << 20), f"parsing {len(data)} bytes allocated {peak} bytes at the peak")
    if f is not None:
        touch_file(f, data)
    try:
        model_id = store.store_bytes(bytearray(data))  # a buffer the store must copy
    except GGUFError:
        check(f is None, "store_bytes refused a file from_buffer accepted")
        return
    try:
        check(f is not None, "store_bytes accepted a file from_buffer refused")
        touch_stored(store, model_id, f)
    finally:
        store.remove(model_id)
    check(len(store) == 0, "the store keeps a removed model")


def main(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
