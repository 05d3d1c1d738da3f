"""One exception tree: every error realm raises is a RealmError, through the Python API and
the CLI (one line on stderr, a non-zero exit, never a traceback).  The inputs are issue 10's:
each escaped as a TypeError, struct.error, OverflowError or AttributeError, or printed a
traceback, before."""

from __future__ import annotations

import logging

import pytest
import wasmtime

import realm
from gguf_helpers import RawTensor, build_gguf
from realm.abi import Err
from realm.cli import main
from realm.errors import RealmError
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT


@pytest.fixture(scope="module")
def smol(smollm2_path):
    with realm.Realm(threads=1) as rt:
        rt.load_model(smollm2_path)
        yield rt


@pytest.mark.parametrize("call", [
    lambda rt: rt.generate(42),
    lambda rt: rt.generate(b"bytes are not a prompt"),
    lambda rt: rt.complete("x", max_tokens=2**40),
    lambda rt: rt.complete("x", seed=2**64),
    lambda rt: rt.complete("x", stop=5),
    lambda rt: rt.complete("x", stop=[""]),
    lambda rt: rt.complete("x", n_ctx=1),
    lambda rt: rt.complete("x", temperature="hot"),
    lambda rt: rt.complete("x", bogus=1),
    lambda rt: rt.complete("\ud800"),
    lambda rt: rt.complete("x", stop=["\udfff"]),
    lambda rt: rt.chat([{"role": "user", "content": "x\ud800"}]),
    lambda rt: rt.chat([{"role": "us\udc80er", "content": "x"}]),
    lambda rt: rt.detokenize([-5]),
    lambda rt: rt.detokenize([2**40]),
    lambda rt: rt.detokenize(["a"]),
    lambda rt: rt.detokenize(object()),
    lambda rt: rt.tokenize(3.5),
    lambda rt: rt.chat("not a list of messages"),
    lambda rt: rt.model(3.5),
], ids=["int-prompt", "bytes-prompt", "max_tokens", "seed", "stop-type", "empty-stop", "n_ctx", "temperature",
        "option", "surrogate", "surrogate-stop", "surrogate-message",
        "surrogate-role", "negative-id", "huge-id", "str-id", "object-ids", "float-text", "chat-str", "model"])
def test_bad_calls_raise_realm_errors(smol, call):
    with pytest.raises(RealmError):
        call(smol)


@pytest.mark.parametrize("threads", [0, 10**9, 1000, 2.5, True])
def test_thread_counts_are_capped(threads):
    with pytest.raises(RealmError, match="threads"):
        realm.Realm(threads=threads)


def _odd_model(tmp_path, **overrides):
    """A llama-shaped header with metadata of the wrong kinds (scalar token list, array name)."""
    kvs = {"general.architecture": (VT.STRING, "llama"), "general.name": (VT.ARRAY, None),
           "tokenizer.ggml.tokens": (VT.UINT32, 7), "tokenizer.ggml.bos_token_id": (VT.UINT32, 0),
           "llama.context_length": (VT.UINT32, 64)}
    kvs.update(overrides)
    from gguf_helpers import Arr

    items = [(k, t, Arr(VT.INT32, [1, 2]) if v is None else v) for k, (t, v) in kvs.items()]
    raw, _ = build_gguf(items, [RawTensor("token_embd.weight", (4, 32), GGMLType.F32, bytes(4 * 4 * 32))])
    path = tmp_path / "odd.gguf"
    path.write_bytes(raw)
    return path


def test_metadata_of_the_wrong_kind(tmp_path, capsys):
    path = _odd_model(tmp_path)
    with realm.Realm(threads=1) as rt:
        m = rt.load_model(path)  # a scalar token list is no vocabulary, not a crash
        assert m.n_vocab == 0 and m.bos_token == ""
        with pytest.raises(RealmError):
            rt.complete("x", m, max_tokens=1)
    assert main(["info", "--json", str(path)]) == 0
    assert '"name": [\n    1,\n    2\n  ]' in capsys.readouterr().out


def test_a_model_the_forward_pass_cannot_run_is_unsupported(tmp_path, caplog):
    """ForwardModel's refusals are UnsupportedModelError, so the import answers UNSUPPORTED
    (not INTERNAL with a traceback in the log)."""
    kvs = [("general.architecture", VT.STRING, "llama"), ("llama.embedding_length", VT.UINT32, 32),
           ("llama.block_count", VT.UINT32, 1), ("llama.feed_forward_length", VT.UINT32, 64),
           ("llama.attention.head_count", VT.UINT32, 4), ("llama.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-5)]
    names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    tensors = [RawTensor("token_embd.weight", (8, 32), GGMLType.F32, bytes(4 * 8 * 32)),
               RawTensor("output_norm.weight", (32,), GGMLType.F32, bytes(128))]
    tensors += [RawTensor(f"blk.0.{n}.weight", (32,), GGMLType.F32, bytes(128)) for n in names]  # all 1-D: wrong
    raw, _ = build_gguf(kvs, tensors)
    store = realm.ModelStore()
    mid = store.store_bytes(raw)
    with pytest.raises(realm.UnsupportedModelError, match="cannot run"):
        realm.HostModel(store, mid)
    kv = wasmtime.wat2wasm("""(module (import "env" "realm_kv_create" (func $kv (param i64 i32) (result i32)))
      (func (export "kv") (param i64 i32) (result i32) (call $kv (local.get 0) (local.get 1))))""")
    with caplog.at_level(logging.INFO, logger="realm.host"), realm.Tenant(store, kv, shared=[mid]) as t:
        assert t.call("kv", mid, 8) == Err.UNSUPPORTED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    store.close()


@pytest.mark.parametrize("argv, what", [
    (["generate", "--n-ctx", "1", "hi"], "n_ctx"),
    (["generate", "--stop", "", "hi"], "stop"),
    (["generate", "--seed", str(2**64), "hi"], "seed"),
    (["generate", "-n", "99999999999", "hi"], "max_tokens"),
    (["generate", "--threads", "99999999999", "hi"], "threads"),
    (["info", "/nonexistent/model.gguf"], "cannot open"),
])
def test_cli_errors_are_one_line(capsys, smollm2_path, argv, what):
    argv = [*argv[:1], "-m", str(smollm2_path), *argv[1:]] if argv[0] == "generate" else argv
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code not in (0, None) and "Traceback" not in err
    assert what in lines[-1] and lines[-1].startswith("realm")
    if code == 1:  # realm's own errors: one line; argparse's usage errors add the usage above it
        assert len(lines) == 1
