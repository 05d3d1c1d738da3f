"""Every realm_* import called with arguments from the edges -- 0, 1, page ends, 2^31,
2^32 - k, 2^32/4 + k, 2^32/(4 n_embd) + k, negative i64 ids -- by a guest in a child
process (tests/import_edges_child.py), so that a host crash is a failing test, not a
dead pytest.  The child must exit 0: each answer a documented success or one of the
import's negative codes, BAD_POINTER exactly when a span leaves memory, and guest memory
changed only inside the output buffer a success names."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

CHILD = Path(__file__).with_name("import_edges_child.py")


def run_child(*args: str) -> None:
    """Run the child with args; fail with the end of its output unless it exits 0."""
    proc = subprocess.run([sys.executable, "-u", "-X", "faulthandler", str(CHILD), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if proc.returncode:
        how = (f"was killed by {signal.Signals(-proc.returncode).name} (the host crashed)" if proc.returncode < 0
               else f"exited with status {proc.returncode}")
        tail = "\n".join(proc.stdout.splitlines()[-60:])
        pytest.fail(f"import_edges_child.py {' '.join(args)} {how}; the end of its output:\n{tail}", pytrace=False)


@pytest.fixture(params=["tiny", "smollm2"])
def model_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama of gguf_helpers (n_embd 256, 64 tokens) or SmolLM2 (n_embd 576, 49,152 tokens)."""
    if request.param == "smollm2":
        return Path(request.getfixturevalue("smollm2_path"))
    require("gguf")
    from gguf_helpers import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("edges") / "tiny.gguf")


def test_every_import_at_the_edges(model_path: Path) -> None:
    """Hypothesis draws each import's arguments from the edges (and valid values) against guests
    of 1, 2 and 4 pages; the host survives and keeps every contract (see import_edges_child.verify)."""
    run_child("properties", str(model_path))


@pytest.mark.parametrize("case", ["lm_head", "embedding", "layer"])
def test_span_that_wraps_u32_is_bad_pointer(case: str, smollm2_path: Path) -> None:
    """Spans whose byte size passes 2^32 were masked to u32 and so passed the bounds check; the C
    forward pass then wrote far outside guest memory.  On SmolLM2 (n_embd 576) each is BAD_POINTER:
    lm_head: realm_forward_lm_head(model, 0, 576, 65532, 2^30) from a one-page guest;
    embedding: 1,864,136 token ids, all in memory, whose 4 * n * 576 output bytes pass 2^32;
    layer: 1,864,136 rows of 576 values from a one-page guest."""
    run_child("regression", case, str(smollm2_path))


def test_layer_span_that_wraps_u32_in_a_wide_model() -> None:
    """realm_forward_layer with 2^16 rows of a 2^14-wide model, whose KV cache holds them all, so
    that no later check refuses the call: 4 * hidden_len is 2^32, and must be BAD_POINTER."""
    run_child("regression", "layer")
