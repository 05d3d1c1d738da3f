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
