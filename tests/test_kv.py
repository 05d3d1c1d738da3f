"""The host's KV cache (realm.forward.KVCache): sizes and bounds, truncation and
re-decoding, f16 vs f32 rows, per-layer fill, and use from several threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import require
from forward_helpers import RefModel, write_tiny_gemma3
from realm import ModelStore
from realm.forward import DEFAULT_KV_MAX_BYTES, ContextFullError, ForwardError, HostModel


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with ModelStore() as store:
        with HostModel(store, store.load(smollm2_path), threads=2) as host:
            yield host


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    require("gguf")
    path = write_tiny_gemma3(tmp_path_factory.mktemp("kv") / "tiny-gemma3.gguf")
    with ModelStore() as store:
        with HostModel(store, store.load(path), threads=2) as host:
            yield host


TOKENS = [1, 504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 4521, 314]


def test_size_and_bounds(smollm2):
    cfg = smollm2.config
    kv = smollm2.new_kv_cache(100)
    assert (kv.n_ctx, kv.dtype, kv.length) == (100, "f16", 0)
    row = cfg.n_head_kv * cfg.head_dim
    assert kv.nbytes == 2 * cfg.n_layer * 100 * row * 2 + 8 * cfg.n_layer
    assert smollm2.new_kv_cache(100, "f32").nbytes == 2 * cfg.n_layer * 100 * row * 4 + 8 * cfg.n_layer
    assert smollm2.kv_cache_bytes(cfg.n_ctx_train) < DEFAULT_KV_MAX_BYTES
    smollm2.new_kv_cache(cfg.n_ctx_train)  # the whole training context fits the default cap

    with pytest.raises(ValueError, match="training context"):
        smollm2.new_kv_cache(cfg.n_ctx_train + 1)
    with pytest.raises(ValueError, match="cap"):
        smollm2.new_kv_cache(1024, max_bytes=smollm2.kv_cache_bytes(1024) - 1)
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="n_ctx"):
            smollm2.new_kv_cache(bad)
    with pytest.raises(ValueError, match="dtype"):
        smollm2.new_kv_cache(8, "bf16")


def test_truncate_then_redecode_reproduces_logits(smollm2):
    kv = smollm2.new_kv_cache(32)
    first = smollm2.forward(TOKENS, kv)
    assert kv.length == len(TOKENS)
    kv.truncate(5)
    assert kv.length == 5 and all(kv.filled(il) == 5 for il in range(smollm2.config.n_layer))
    again = smollm2.forward(TOKENS[5:], kv)
    np.testing.assert_array_equal(again, first[5:])
    # a different continuation after truncation, then back: the cache holds no stale rows
    kv.truncate(8)
    other = smollm2.forward([1000, 2000], kv)
    assert not np.array_equal(other, first[8:10])
    kv.truncate(8)
    np.testing.assert_array_equal(smollm2.forward(TOKENS[8:], kv), first[8:])
    kv.truncate(1000)  # past the end: nothing changes
    assert kv.length == len(TOKENS)
    kv.truncate(0)
    np.testing.assert_array_equal(smollm2.forward(TOKENS, kv), first)
    with pytest.raises(ValueError):
        kv.truncate(-1)


def test_layers_fill_independently(smollm2):
    """A layer call fills its own layer; the next token goes where every layer is filled."""
    kv = smollm2.new_kv_cache(8)
    hidden = smollm2.embed(TOKENS[:3])
    smollm2.layer(0, hidden, 0, kv)
    assert (kv.filled(0), kv.filled(1), kv.length) == (3, 0, 0)
    with pytest.raises(ForwardError, match="gap"):
        smollm2.layer(1, hidden, 1, kv)
    smollm2.layer(0, hidden[:1], 0, kv)  # rewriting position 0 drops the layer's later ones
    assert kv.filled(0) == 1
    with pytest.raises(IndexError):
        kv.filled(smollm2.config.n_layer)


def test_full_cache_is_refused_and_left_intact(smollm2):
    kv = smollm2.new_kv_cache(len(TOKENS))
    first = smollm2.forward(TOKENS[:-1], kv)
    with pytest.raises(ContextFullError):
        smollm2.forward(TOKENS[-1:] * 2, kv)
    assert kv.length == len(TOKENS) - 1
    last = smollm2.forward(TOKENS[-1:], kv)
    assert kv.length == kv.n_ctx
    with pytest.raises(ContextFullError):
        smollm2.forward([5], kv)
    whole = smollm2.forward(TOKENS, smollm2.new_kv_cache(len(TOKENS)))
    np.testing.assert_array_equal(np.concatenate([first, last]), whole)


def test_f32_cache_is_closer_to_float64_than_f16(tiny_gemma3):
    """f32 rows skip the f16 rounding of K and V: the logits move slightly, towards the
    float64 model (which keeps K and V exact)."""
    tokens = [1] + [int(t) for t in np.random.default_rng(9).integers(3, 64, 29)]
    f16 = tiny_gemma3.forward(tokens, tiny_gemma3.new_kv_cache(32, "f16"))
    f32 = tiny_gemma3.forward(tokens, tiny_gemma3.new_kv_cache(32, "f32"))
    exact = RefModel(tiny_gemma3.model, tiny_gemma3.config).forward(tokens)
    assert not np.array_equal(f16, f32)
    spread = exact.max(1) - exact.min(1)
    assert (np.abs(f16 - f32).max(1) / spread).max() < 0.02
    assert np.abs(f32 - exact).mean() < np.abs(f16 - exact).mean()


def test_caches_are_independent_and_threads_share_a_model(smollm2):
    """Several threads, each with its own cache, on one HostModel: the same logits as one by one."""
    prompts = [TOKENS, TOKENS[::-1], TOKENS[3:], [1, 2, 3, 4, 5, 6]]
    want = [smollm2.forward(p, smollm2.new_kv_cache(16)) for p in prompts]
    got: list = [None] * len(prompts)

    def run(i: int) -> None:
        kv = smollm2.new_kv_cache(16)
        for _ in range(3):
            kv.truncate(0)
            got[i] = smollm2.forward(prompts[i], kv)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_profile_counts_layer_time(smollm2_path, monkeypatch):
    monkeypatch.setenv("REALM_PROFILE", "1")
    with ModelStore() as store, HostModel(store, store.load(smollm2_path), threads=1) as host:
        kv = host.new_kv_cache(8)
        host.forward(TOKENS[:4], kv)
        prof = kv.profile()
        assert list(prof) == ["attn_norm", "qkv", "rope", "attention", "attn_output", "ffn_norm", "ffn_up", "gate",
                              "ffn_down", "residual"]
        assert all(v > 0 for v in prof.values())
        kv.reset_profile()
        assert not any(kv.profile().values())
