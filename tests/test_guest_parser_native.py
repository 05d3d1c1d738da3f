"""The guest's GGUF parser (guest/gguf_meta.c, guest/model_config.c) built natively
under AddressSanitizer and UBSan and run over truncated and mutated headers.

In wasm an over-read inside the guest's own memory does not trap, so the wasm
tests alone cannot prove the parser never reads past its buffer; the native
harness (tests/c/guest_parser.c) gives every file a buffer of exactly its size."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import IN_CI
from gguf_helpers import Arr, RawTensor, build_gguf
from realm.abi import Err
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT
from realm.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "guest/gguf_meta.c", ROOT / "guest/model_config.c", ROOT / "tests/c/guest_parser.c"]
FLAGS = ["-O1", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'guest'}"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        if IN_CI:
            pytest.fail("no C compiler")
        pytest.skip("no C compiler")
    exe = tmp_path_factory.mktemp("native") / "guest_parser"
    build = [cc, *FLAGS, *map(str, SOURCES), "-o", str(exe)]
    if subprocess.run(build[:1] + SANITIZE + build[1:], capture_output=True).returncode != 0:
        if IN_CI:
            pytest.fail("the C compiler has no AddressSanitizer/UBSan")
        subprocess.run(build, check=True)  # still catches crashes, without the sanitizers
    return exe


def run(harness: Path, files: list[Path]) -> dict[str, int]:
    result = subprocess.run([str(harness)], input="".join(f"{f}\n" for f in files),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    codes = {}
    for line in result.stdout.splitlines():
        rc, path = line.split(" ", 1)
        codes[path] = int(rc)
    assert len(codes) == len(files)
    return codes


def _sample() -> tuple[bytes, int]:
    kvs = [("general.architecture", VT.STRING, "llama"), ("llama.block_count", VT.UINT32, 4),
           ("llama.rope.freq_base", VT.FLOAT64, 5e5), ("tokenizer.ggml.model", VT.STRING, "llama"),
           ("tokenizer.ggml.tokens", VT.ARRAY, Arr(VT.STRING, ["<s>", "é", "", "日本"])),
           ("tokenizer.ggml.add_bos_token", VT.BOOL, True),
           ("nested", VT.ARRAY, Arr(VT.ARRAY, [Arr(VT.STRING, ["a"]), Arr(VT.ARRAY, [Arr(VT.BOOL, [False])])]))]
    tensors = [RawTensor("a", (32,), GGMLType.F32, bytes(128)), RawTensor("b", (32, 3), GGMLType.Q8_0, bytes(102))]
    raw, layout = build_gguf(kvs, tensors, version=2)
    return raw, layout.data_offset


def test_every_prefix(harness, tmp_path):
    raw, data_offset = _sample()
    files = []
    for n in range(data_offset + 1):
        files.append(tmp_path / f"prefix{n}")
        files[-1].write_bytes(raw[:n])
    codes = run(harness, files)
    assert [codes[str(f)] for f in files] == [Err.BAD_GGUF] * data_offset + [0]


def test_mutations(harness, tmp_path):
    """Random byte, length-field and splice mutations: never a sanitizer report."""
    raw, data_offset = _sample()
    rng = np.random.default_rng(1)
    files = []
    for i in range(1500):
        b = bytearray(raw[:data_offset])
        kind = i % 3
        if kind == 0:  # a few random bytes
            for at in rng.integers(0, len(b), rng.integers(1, 5)):
                b[at] = rng.integers(0, 256)
        elif kind == 1:  # a huge or off-by-a-little 8-byte field anywhere (lengths, counts, dims)
            at = int(rng.integers(0, len(b) - 8))
            old = int.from_bytes(b[at:at + 8], "little")
            choices = [2**64 - 1, 2**63, 2**32, (old + 1) % 2**64, max(old - 1, 0), len(b)]
            b[at:at + 8] = choices[rng.integers(len(choices))].to_bytes(8, "little")
        else:  # cut out or repeat a slice
            at, n = int(rng.integers(0, len(b))), int(rng.integers(1, 16))
            b = b[:at] + b[at + n:] if rng.random() < 0.5 else b[:at] + b[at:at + n] * 2 + b[at + n:]
        files.append(tmp_path / f"m{i}")
        files[-1].write_bytes(bytes(b))
    codes = run(harness, files)
    assert set(codes.values()) <= {0, Err.BAD_GGUF}
    assert 0 in codes.values() and Err.BAD_GGUF in codes.values()


def test_real_headers(harness, tmp_path, smollm2_path, gemma3_path):
    """The two real headers parse, and each survives a few mutations."""
    store = ModelStore()
    rng = np.random.default_rng(2)
    files = []
    for path in (smollm2_path, gemma3_path):
        header = store.get(store.load(path)).header
        files.append(tmp_path / f"{path.name}.header")
        files[-1].write_bytes(header)
        for i in range(4):
            b = bytearray(header)
            for at in rng.integers(0, len(b), 3):
                b[at] = rng.integers(0, 256)
            files.append(tmp_path / f"{path.name}.m{i}")
            files[-1].write_bytes(bytes(b))
    store.close()
    codes = run(harness, files)
    assert codes[str(files[0])] == 0 and codes[str(files[5])] == 0
    assert set(codes.values()) <= {0, Err.BAD_GGUF}


def _fnv1a(name: bytes) -> int:
    h = 2166136261
    for b in name:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def _names(n: int, mask: int, window: int) -> list[str]:
    """n metadata keys whose FNV-1a hashes fall in slots [0, window) of a table of mask + 1
    (window = mask + 1: any slot)."""
    names, i = [], 0
    while len(names) < n:
        name = f"k{i}"
        if _fnv1a(name.encode()) & mask < window:
            names.append(name)
        i += 1
    return names


def test_colliding_names_are_refused(harness, tmp_path):
    """Names chosen to share one run of the guest's name index (a fixed hash a file can aim at)
    would make parsing quadratic: the file is refused.  The same number of ordinary names parses."""
    n = 1100  # > the 1024-slot probe bound; the index has 4096 slots (mask 0xFFF)
    files = {}
    for kind, window in (("colliding", 8), ("ordinary", 4096)):
        kvs = [("general.architecture", VT.STRING, "llama")]
        kvs += [(name, VT.UINT8, 1) for name in _names(n - 1, 0xFFF, window)]
        raw, _ = build_gguf(kvs)
        files[kind] = tmp_path / kind
        files[kind].write_bytes(raw)
    codes = run(harness, list(files.values()))
    assert codes[str(files["colliding"])] == Err.BAD_GGUF
    assert codes[str(files["ordinary"])] == 0
