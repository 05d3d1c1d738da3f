"""Shared test helpers.  Under CI=true a missing reference (llama.cpp, gguf-py) is a
failure, not a skip: CI must compare against the real thing."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(module_name: str):
    """Import a reference package, or skip locally / fail under CI when it is missing."""
    try:
        return __import__(module_name)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"reference {module_name!r} is required under CI=true: {exc}")
        pytest.skip(f"reference {module_name!r} not installed")


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-for-bit equality of float32 or float16 arrays, except that any NaN equals any NaN
    (payloads may differ)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    np.testing.assert_array_equal(nan_a, nan_e)
    bits = {np.dtype(np.float32): np.uint32, np.dtype(np.float16): np.uint16}[actual.dtype]
    bad = actual[~nan_a].view(bits) != expected[~nan_e].view(bits)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        pytest.fail(f"{bad.sum()} elements differ; first at {i}: {actual[~nan_a][i]!r} != {expected[~nan_e][i]!r}")


def run_threads(jobs, timeout: float = 300.0) -> list:
    """Run callables on threads at once, each bounded by `timeout` seconds in all; their results
    in order (the first error is re-raised; a thread still running fails the test)."""
    results, errors = [None] * len(jobs), []

    def work(i):
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a job did not finish in time"
    if errors:
        raise errors[0]
    return results


def ggml():
    """llama.cpp's libggml-base (see ggml_ref.py), under the same skip/fail rule."""
    require("llama_cpp")
    from ggml_ref import load_ggml

    return load_ggml()


# -- models (issue 3: reader, store, cache, CLI) ----------------------------------

def _pulled(name: str):
    """A PyPI-carried model via realm.models.pull: fetched on first use, then cached."""
    from realm.errors import PullError
    from realm.models import pull

    try:
        return pull(name)
    except (PullError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"model {name!r} is required under CI=true: {exc}")
        pytest.skip(f"model {name!r} unavailable: {exc}")


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct Q4_1 (llama architecture)."""
    return _pulled("smollm2")


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma 3 270M Q4_K_M (gemma3 architecture, 262,144-token vocabulary)."""
    return _pulled("gemma3")


@pytest.fixture(scope="session")
def smollm2_quantized(smollm2_path):
    """SmolLM2 requantized by llama.cpp's quantizer: smollm2_quantized("Q4_K_M" | "Q3_K_M" | ...)
    -> path.  Cached as $REALM_HOME/quantized/<source sha256[:16]>-<ftype>.gguf, never in the repo."""
    from ggml_ref import requantize
    from realm.models import realm_home

    require("llama_cpp")

    def quantized(ftype: str) -> Path:
        try:
            return requantize(smollm2_path, ftype, realm_home() / "quantized")
        except RuntimeError as exc:
            pytest.fail(str(exc))

    return quantized


#: The IQ and TQ formats llama.cpp's file quantizer gives only with an importance matrix (or
#: not to SmolLM2's 576-column matrices), one ffn_down each (1536 columns: blocks of 256).
IQ_MIX = {0: "IQ2_XXS", 4: "IQ2_XS", 8: "IQ2_S", 12: "IQ3_XXS", 16: "IQ1_S", 20: "IQ1_M", 24: "TQ1_0",
          28: "TQ2_0"}


@pytest.fixture(scope="session")
def smollm2_iq_mix(smollm2_path):
    """SmolLM2 with the ffn_down of layers 0, 4, .. 28 requantized by llama.cpp's tensor
    quantizer to IQ_MIX's formats (under a flat importance matrix), the rest as it is."""
    import re

    from ggml_ref import requantize_tensors
    from gguf import GGMLQuantizationType
    from realm.models import realm_home

    require("llama_cpp")

    def types(name: str):
        m = re.fullmatch(r"blk\.(\d+)\.ffn_down\.weight", name)
        qtype = IQ_MIX.get(int(m.group(1))) if m else None
        return None if qtype is None else GGMLQuantizationType[qtype]

    return requantize_tensors(smollm2_path, "IQ-mix", types, realm_home() / "quantized")


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_path):
    """gguf-py's GGUFReader on SmolLM2: seconds to open, so shared by the session."""
    return require("gguf").GGUFReader(smollm2_path)


@pytest.fixture(scope="module")
def rt(smollm2_path, gemma3_path):
    """A Realm with both PyPI models loaded (SmolLM2 the default)."""
    from realm import Realm

    with Realm(threads=2) as r:
        r.load_model(smollm2_path)
        r.load_model(gemma3_path)
        yield r


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    """The guest's C sources compiled natively (guest_native.py), once a session."""
    import guest_native as gn

    return gn.Native(gn.build(tmp_path_factory.mktemp("guest_native")))


@pytest.fixture
def tiny_gguf(tmp_path):
    """A small llama-shaped GGUF written with gguf.GGUFWriter (see gguf_helpers.write_tiny_llama)."""
    require("gguf")
    from gguf_helpers import write_tiny_llama

    return write_tiny_llama(tmp_path / "tiny-llama.gguf")
