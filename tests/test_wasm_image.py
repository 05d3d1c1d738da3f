"""realm/wasm_image.py: a module whose memory starts as an image, checked by instantiating the
rewritten module in Wasmtime and reading its memory back."""

from __future__ import annotations

import numpy as np
import pytest
import wasmtime
from hypothesis import given, settings, strategies as st

from realm.errors import InternalError
from realm.wasm_image import _put_sleb, _put_uleb, with_memory_image

PAGE = 65536


def _memory_after(wasm: bytes) -> bytes:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wasm), [])
    memory = instance.exports(store)["memory"]
    return bytes(memory.read(store, 0, memory.data_len(store)))


def _image(size: int, runs: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(size)
    for offset, data in runs:
        out[offset:offset + len(data)] = data
    return bytes(out)


WITH_DATA = wasmtime.wat2wasm("""(module (memory (export "memory") 1)
  (data (i32.const 16) "old bytes") (data (i32.const 4096) "more")
  (func (export "f") (result i32) (i32.load (i32.const 16))))""")
WITHOUT_DATA = wasmtime.wat2wasm("""(module (memory (export "memory") 2)
  (func (export "f") (result i32) (i32.const 1)))""")


@settings(max_examples=60, deadline=None)
@given(pages=st.integers(1, 4), seed=st.integers(0, 2**32 - 1), n_runs=st.integers(0, 6),
       original=st.sampled_from([WITH_DATA, WITHOUT_DATA]))
def test_the_memory_starts_as_the_image(pages, seed, n_runs, original):
    """Whatever the runs (anywhere in the memory, touching its end), the instance's memory is
    the image: the runs' bytes, zeros elsewhere -- the module's own data segments gone -- and
    at least the module's own size."""
    rng = np.random.default_rng(seed)
    size = pages * PAGE
    runs = []
    for _ in range(n_runs):
        offset = int(rng.integers(0, size))
        length = int(rng.integers(0, min(3 * PAGE, size - offset) + 1))
        runs.append((offset, rng.integers(0, 256, length, dtype=np.uint8).tobytes()))
    memory = _memory_after(with_memory_image(original, size, runs))
    minimum = PAGE if original is WITH_DATA else 2 * PAGE
    assert len(memory) == max(size, minimum)
    assert memory == _image(len(memory), runs)


def _sleb_reference(data: bytes) -> int:
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value - (1 << shift) if byte & 0x40 else value
    raise AssertionError("unterminated")


@given(st.integers(-(2**31), 2**31 - 1))
def test_sleb_encodes_every_i32(value):
    encoded = _put_sleb(value)
    assert encoded[-1] < 0x80 and all(b >= 0x80 for b in encoded[:-1]) and len(encoded) <= 5
    assert _sleb_reference(encoded) == value


@given(st.integers(0, 2**32 - 1))
def test_uleb_encodes_every_u32(value):
    encoded = _put_uleb(value)
    assert sum((b & 0x7F) << (7 * i) for i, b in enumerate(encoded)) == value and len(encoded) <= 5


@pytest.mark.parametrize("wat, why", [
    ('(module (import "env" "memory" (memory 1)) (func (export "f")))', "imports its memory"),
    ('(module (memory 1) (data "passive") (func (export "f") (memory.init 0 (i32.const 0) (i32.const 0) '
     '(i32.const 1))))', "counts its data segments"),
    ('(module (memory 1 1) (func (export "f")))', "maximum"),
    ('(module (memory 1))', "no code section"),
    ('(module (func (export "f")))', "no memory"),
])
def test_modules_it_cannot_rewrite_are_refused(wat, why):
    with pytest.raises(InternalError, match=why):
        with_memory_image(wasmtime.wat2wasm(wat), 2 * PAGE, [(0, b"x")])


def test_runs_outside_the_image_and_other_bytes_are_refused():
    with pytest.raises(InternalError, match="outside"):
        with_memory_image(WITH_DATA, PAGE, [(PAGE - 1, b"ab")])
    with pytest.raises(InternalError, match="not a wasm module"):
        with_memory_image(b"\0asm\x02\0\0\0", PAGE, [])
