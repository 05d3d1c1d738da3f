"""The real guest.wasm end to end: models loaded through realm_store_model or attached
by id, the guest's own GGUF parse against the host's reader, tensors through
realm_get_tensor against realm.dequantize, and the guest's memory footprint."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import require
from gguf_helpers import Arr, RawTensor, build_gguf
from realm import abi, dequantize
from realm.abi import Err, Tokenizer
from realm.cache import LayerCache
from realm.errors import ArgumentTypeError, LimitExceeded, ModelNotFoundError
from realm.guest import Guest, GuestError
from realm.limits import Limits
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT, StringArray
from realm.runtime import _tokenize
from realm.store import ModelStore

MiB = 1 << 20


# -- the documented config rules (realm_abi.h, struct realm_config), on the host reader's metadata --

class Refused(Exception):
    """The metadata breaks a rule: the guest must answer BAD_GGUF."""


def expected_config(metadata) -> dict:
    """struct realm_config's fields (those that come from metadata) as realm_abi.h defines them."""
    arch = metadata.get("general.architecture")
    try:
        raw = arch.encode("utf-8")  # the reader keeps bad bytes as surrogates: refused
    except (AttributeError, UnicodeEncodeError):
        raise Refused("general.architecture") from None
    if type(arch) is not str or not 0 < len(raw) < 64 or "\0" in arch:
        raise Refused("general.architecture")

    def integer(key, default, limit=2**32 - 1):
        v = metadata.get(key, default)
        if type(v) is not int or not 0 <= v <= limit:
            raise Refused(key)
        return v

    def number(key, default):
        v = metadata.get(key, default)
        if type(v) not in (int, float):
            raise Refused(key)
        with np.errstate(over="ignore"):  # an f64 beyond f32's range becomes inf, as in C
            return float(np.float32(v))

    def flag(key):
        v = metadata.get(key, -1)
        if v != -1 and type(v) is not bool:
            raise Refused(key)
        return int(v)

    def token(key):
        return integer(key, -1, 2**31 - 1) if key in metadata else -1

    k = lambda suffix: f"{arch}.{suffix}"  # noqa: E731
    swa = arch == "gemma3"  # the architectures with local layers: the others ignore the window keys
    c = {"architecture": arch}
    c["n_layers"] = integer(k("block_count"), 0)
    c["n_embd"] = integer(k("embedding_length"), 0)
    c["n_ff"] = integer(k("feed_forward_length"), 0)
    c["n_ctx_train"] = integer(k("context_length"), 0)
    c["n_head"] = integer(k("attention.head_count"), 0)
    c["n_head_kv"] = integer(k("attention.head_count_kv"), c["n_head"])
    c["head_dim"] = integer(k("attention.key_length"), c["n_embd"] // c["n_head"] if c["n_head"] else 0)
    c["head_dim_v"] = integer(k("attention.value_length"), c["head_dim"])
    c["rope_dim"] = integer(k("rope.dimension_count"), c["head_dim"])
    c["sliding_window"] = integer(k("attention.sliding_window"), 0) if swa else 0
    c["swa_pattern"] = integer(k("attention.sliding_window_pattern"), 6) if swa else 0
    c["rope_freq_base"] = number(k("rope.freq_base"), 10000.0)
    c["rope_scale"] = number(k("rope.scaling.factor"), 1.0) or 1.0
    c["rms_eps"] = number(k("attention.layer_norm_rms_epsilon"), np.float32(1e-5).item())
    c["rope_freq_base_swa"] = number(k("rope.freq_base_swa"), 10000.0) if swa else c["rope_freq_base"]

    model = metadata.get("tokenizer.ggml.model")
    if model is not None and type(model) is not str:
        raise Refused("tokenizer.ggml.model")
    c["tokenizer"] = {None: Tokenizer.NONE, "no": Tokenizer.NONE, "gpt2": Tokenizer.GPT2,
                      "llama": Tokenizer.LLAMA}.get(model, Tokenizer.OTHER)
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None:
        if not isinstance(tokens, StringArray):
            raise Refused("tokenizer.ggml.tokens")
        c["n_vocab"] = len(tokens)
    else:
        c["n_vocab"] = integer(k("vocab_size"), 0)
    for field, key in [("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"),
                       ("unk_id", "unknown_token_id"), ("pad_id", "padding_token_id")]:
        c[field] = token(f"tokenizer.ggml.{key}")
    for field in ("add_bos", "add_eos", "add_space_prefix"):
        c[field] = flag(f"tokenizer.ggml.{field}_token" if field != "add_space_prefix"
                        else "tokenizer.ggml.add_space_prefix")
    return c


def assert_config_matches(config: abi.ModelConfig, store: ModelStore, model_id: int) -> None:
    model = store.get(model_id)
    info = store.info(model_id)
    expected = expected_config(model.metadata)
    assert set(expected) | {"model_id", "n_tensors", "total_size", "header_len", "gguf_version"} == \
        {name for name, _ in abi.CONFIG_LAYOUT}  # every field is checked
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.model_id == model_id
    assert config.n_tensors == info.tensor_count
    assert config.total_size == info.total_size
    assert config.header_len == len(model.header)
    assert config.gguf_version == model.version


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store():
    s = ModelStore(LayerCache(512 * MiB))
    yield s
    s.close()


@pytest.fixture(scope="module")
def smollm2(store, smollm2_path):
    return store.load(smollm2_path)


@pytest.fixture(scope="module")
def gemma3(store, gemma3_path):
    return store.load(gemma3_path)


def _fetch_and_compare(g: Guest, store: ModelStore, model_id: int, name: str) -> None:
    t = store.get(model_id).tensors[name]
    got = g.fetch_tensor(name)
    want = dequantize(t.data, t.dtype, t.shape).reshape(-1)
    assert got.dtype == np.float32 and np.array_equal(got, want), name


# -- the seed's path: a model passed through guest memory ------------------------------------------

def test_load_written_model_through_store_model(store, tiny_gguf):
    raw = tiny_gguf.read_bytes()
    count = len(store)
    with Guest(store) as g:
        model_id = g.load_model(raw)
        assert model_id in store and g.host.owned_models == [model_id]
        assert store.get(model_id).header == raw[:len(store.get(model_id).header)]
        config = g.config
        assert_config_matches(config, store, model_id)
        # what write_tiny_llama wrote, independently of either parser
        assert (config.architecture, config.n_layers, config.n_embd, config.n_ff) == ("llama", 2, 256, 512)
        assert (config.n_head, config.n_head_kv, config.head_dim, config.n_vocab) == (4, 2, 64, 64)
        assert (config.n_ctx_train, config.bos_id, config.eos_id, config.tokenizer) == (256, 1, 2, Tokenizer.GPT2)
        assert config.rms_eps == np.float32(1e-5) and config.rope_freq_base == 10000.0
        for name, t in store.get(model_id).tensors.items():
            _fetch_and_compare(g, store, model_id, name)
        g.unload()
        assert model_id not in store and g.config is None
        again = g.load_model(raw)
        assert again > model_id
    assert again not in store and len(store) == count  # closing the guest removed its model


def test_every_prefix_of_a_file_is_refused(store):
    """Each truncation is refused: by the guest's own parser while the header is cut
    (nothing reaches the host), by the host's reader once only tensor data is missing.
    Failed loads leak no guest memory."""
    kvs = [("general.architecture", VT.STRING, "llama"), ("llama.block_count", VT.UINT32, 3),
           ("tokenizer.ggml.tokens", VT.ARRAY, Arr(VT.STRING, ["a", "bc", "déf"])),
           ("tokenizer.ggml.scores", VT.ARRAY, Arr(VT.FLOAT32, [0.5, 1.5, 2.5])),
           ("nested", VT.ARRAY, Arr(VT.ARRAY, [Arr(VT.INT8, [1, 2]), Arr(VT.BOOL, [True])]))]
    tensors = [RawTensor("a", (32,), GGMLType.F32, bytes(128)), RawTensor("b", (32, 2), GGMLType.Q8_0, bytes(68))]
    raw, layout = build_gguf(kvs, tensors)
    probe = store.store_bytes(raw)
    data_end = max(t.offset + t.nbytes for t in store.get(probe).tensors.values())  # then padding
    store.remove(probe)
    count = len(store)
    with Guest(store) as g:
        sizes = []
        for _ in range(2):  # the second pass must not grow memory: nothing leaks
            for n in range(data_end):
                with pytest.raises(GuestError) as e:
                    g.load_model(raw[:n])
                assert e.value.code == Err.BAD_GGUF, n
                guest_refused = e.value.detail is not None and e.value.detail.startswith("gguf: ")
                assert guest_refused == (n < layout.data_offset), (n, e.value.detail)
            sizes.append(g.memory_size)
        assert sizes[0] == sizes[1]
        assert len(store) == count
        model_id = g.load_model(raw)
        assert_config_matches(g.config, store, model_id)


def _typed(*choices):
    """(value type, value) pairs: each choice is (types, values strategy)."""
    return st.one_of(*(st.tuples(st.sampled_from(types), values) for types, values in choices))


# per metadata rule: values it accepts, and values it refuses (wrong type or out of range)
_U32 = (_typed(([VT.UINT8, VT.UINT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64], st.integers(0, 255)),
               ([VT.UINT32, VT.UINT64, VT.INT64], st.integers(0, 2**32 - 1))),
        _typed(([VT.INT8], st.integers(-128, -1)), ([VT.INT32, VT.INT64], st.integers(-(2**31), -1)),
               ([VT.UINT64, VT.INT64], st.integers(2**32, 2**63 - 1)), ([VT.UINT64], st.integers(2**63, 2**64 - 1)),
               ([VT.FLOAT32, VT.FLOAT64], st.just(1.0)), ([VT.STRING], st.just("12")), ([VT.BOOL], st.just(True))))
_F32 = (_typed(([VT.FLOAT32], st.floats(allow_nan=False, width=32)), ([VT.FLOAT64], st.floats(allow_nan=False)),
               ([VT.INT32, VT.UINT16, VT.INT64], st.integers(0, 60000))),
        _typed(([VT.BOOL], st.booleans()), ([VT.STRING], st.just("1e-5"))))
_TOKEN = (_typed(([VT.UINT32, VT.INT32], st.integers(0, 2**31 - 1))),
          _typed(([VT.UINT32, VT.UINT64], st.integers(2**31, 2**32 - 1)), ([VT.INT32], st.integers(-5, -1)),
                 ([VT.FLOAT32], st.just(2.0))))
_FLAG = (_typed(([VT.BOOL], st.booleans())), _typed(([VT.UINT8], st.integers(0, 1)), ([VT.STRING], st.just("true"))))
_TOKENIZER = (_typed(([VT.STRING], st.sampled_from(["gpt2", "llama", "no", "bert", ""]))),
              _typed(([VT.UINT32], st.just(1))))
_TOKENS = (st.lists(st.text(max_size=4), max_size=20).map(lambda items: (VT.ARRAY, Arr(VT.STRING, items))),
           st.lists(st.integers(0, 9), max_size=5).map(lambda items: (VT.ARRAY, Arr(VT.INT32, items))))
_ARCH = (_typed(([VT.STRING], st.sampled_from(["llama", "gemma3", "qwen2", "phi3", "x" * 63, "ärch"]))),
         _typed(([VT.STRING], st.sampled_from(["x" * 64, "", "a\0b"])), ([VT.UINT32], st.just(7))))
_U32_KEYS = ["block_count", "embedding_length", "feed_forward_length", "context_length",
             "attention.head_count", "attention.head_count_kv", "attention.key_length",
             "attention.value_length", "rope.dimension_count", "attention.sliding_window",
             "attention.sliding_window_pattern", "vocab_size"]
_F32_KEYS = ["rope.freq_base", "rope.scaling.factor", "attention.layer_norm_rms_epsilon", "rope.freq_base_swa"]


@st.composite
def _metadata(draw):
    """Metadata for the config rules: each key absent or valid, except (half the time) one
    key that breaks its rule."""
    arch = draw(st.sampled_from(["llama", "gemma3", "qwen2", "phi3", "ärch"]))
    rules = [("general.architecture", _ARCH)]
    rules += [(f"{arch}.{suffix}", _U32) for suffix in _U32_KEYS]
    rules += [(f"{arch}.{suffix}", _F32) for suffix in _F32_KEYS]
    rules += [(f"tokenizer.ggml.{k}", _TOKEN) for k in ["bos_token_id", "eos_token_id", "unknown_token_id",
                                                         "padding_token_id"]]
    rules += [(f"tokenizer.ggml.{k}", _FLAG) for k in ["add_bos_token", "add_eos_token", "add_space_prefix"]]
    rules += [("tokenizer.ggml.model", _TOKENIZER), ("tokenizer.ggml.tokens", _TOKENS)]
    present = [rule for i, rule in enumerate(rules) if i == 0 or draw(st.booleans())]
    poison = draw(st.one_of(st.none(), st.integers(0, len(present) - 1)))
    kvs = []
    for i, (key, (valid, invalid)) in enumerate(present):
        vtype, value = draw(invalid if i == poison else valid)
        if key == "general.architecture" and i != poison:
            value = arch  # the other keys are named after it
        kvs.append((key, vtype, value))
    return draw(st.permutations(kvs))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kvs=_metadata())
def test_config_follows_the_documented_rules(store, kvs):
    """Random metadata (right and wrong value types, extreme values), attached by id:
    the guest's config equals the rules applied to the host reader's metadata, and the
    guest refuses exactly what the rules refuse."""
    raw, _ = build_gguf(kvs, [RawTensor("w", (4,), GGMLType.F32, bytes(16))])
    model_id = store.store_bytes(raw)
    try:
        try:
            expected = expected_config(store.get(model_id).metadata)
        except Refused:
            expected = None
        event("refused" if expected is None else "accepted")
        with Guest(store) as g:
            if expected is None:
                with pytest.raises(GuestError) as e:
                    g.attach(model_id)
                assert e.value.code == Err.BAD_GGUF and e.value.detail.startswith("gguf: ")
            else:
                g.attach(model_id)
                assert_config_matches(g.config, store, model_id)
    finally:
        store.remove(model_id)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_headers_never_trap_the_guest(store, data):
    """Random byte changes to a header: the guest answers with a model or an error code."""
    kvs = [("general.architecture", VT.STRING, "llama"), ("llama.block_count", VT.UINT32, 2),
           ("tokenizer.ggml.tokens", VT.ARRAY, Arr(VT.STRING, ["x", "yy", "zzz", "\u00e9"])),
           ("deep", VT.ARRAY, Arr(VT.ARRAY, [Arr(VT.ARRAY, [Arr(VT.UINT16, [7])])]))]
    raw, layout = build_gguf(kvs, [RawTensor("t", (8,), GGMLType.F32, bytes(32))])
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, layout.header_end - 1))
        raw[at] = data.draw(st.integers(0, 255))
    with Guest(store) as g:
        try:
            model_id = g.load_model(bytes(raw))
        except GuestError as e:
            event("refused by the " + ("guest" if e.detail else "host"))
            assert e.code == Err.BAD_GGUF
        else:
            event("accepted")
            assert_config_matches(g.config, store, model_id)


# -- attaching to host-loaded models -----------------------------------------------------------------

def test_attach_smollm2(store, smollm2):
    with Guest(store) as g:
        g.attach(smollm2)
        config = g.config
        assert_config_matches(config, store, smollm2)
        # DESIGN.md: llama architecture, 30 layers, n_embd 576, 9/3 heads, byte-level BPE
        assert (config.architecture, config.n_layers, config.n_embd) == ("llama", 30, 576)
        assert (config.n_head, config.n_head_kv, config.tokenizer) == (9, 3, Tokenizer.GPT2)
        assert g.memory_size <= 16 * MiB
        for name in ["blk.0.attn_q.weight", "blk.3.attn_norm.weight", "blk.29.ffn_down.weight"]:
            _fetch_and_compare(g, store, smollm2, name)
    assert smollm2 in store  # a shared model stays when the guest goes


def test_attach_gemma3_fits_16_mib_and_fetches_through_the_cache(store, gemma3):
    with Guest(store) as g:
        g.attach(gemma3)
        # the 6.5 MB header with 262,144 tokens is held once; the weights never enter the guest
        assert g.memory_size <= 16 * MiB
        config = g.config
        assert_config_matches(config, store, gemma3)
        assert (config.architecture, config.n_vocab, config.sliding_window) == ("gemma3", 262144, 512)
        assert config.tokenizer == Tokenizer.LLAMA
        names = {t.dtype: name for name, t in store.get(gemma3).tensors.items() if name.startswith("blk.1.")}
        for qtype in (GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.F32):
            name = names[qtype]
            _fetch_and_compare(g, store, gemma3, name)
            before = store.cache.stats()
            _fetch_and_compare(g, store, gemma3, name)
            after = store.cache.stats()
            assert (after["hits"], after["misses"]) == (before["hits"] + 1, before["misses"]), qtype


def test_guest_errors(store, smollm2):
    with Guest(store) as g:
        with pytest.raises(GuestError) as e:
            g.fetch_tensor("output_norm.weight")
        assert e.value.code == Err.NO_MODEL
        assert g.call("guest_attach_model", smollm2) == Err.NO_MODEL  # not shared with this guest
        with pytest.raises(ModelNotFoundError):
            g.attach(10**9)
        g.attach(smollm2)
        with pytest.raises(GuestError) as e:
            g.fetch_tensor("no.such.tensor")
        assert e.value.code == Err.NO_TENSOR
        g.unload()  # a shared model: the guest lets go, the model stays in the store
        assert g.config is None and smollm2 in store
        with pytest.raises(GuestError) as e:
            g.unload()
        assert e.value.code == Err.NO_MODEL
        with pytest.raises(GuestError) as e:
            g.load_model(b"GGUF" + bytes(100))
        assert e.value.code == Err.BAD_GGUF and "version" in e.value.detail


def test_guest_out_of_memory_is_an_error_code(store, gemma3):
    """A guest capped below what the Gemma 3 header needs answers NO_MEMORY, and stays usable."""
    with Guest(store, limits=Limits(memory_bytes=4 * MiB)) as g:
        with pytest.raises(GuestError) as e:
            g.attach(gemma3)
        assert e.value.code == Err.NO_MEMORY
        assert g.config is None and g.memory_size <= 4 * MiB
        raw, _ = build_gguf([("general.architecture", VT.STRING, "llama")],
                            [RawTensor("w", (4,), GGMLType.F32, np.arange(4, dtype=np.float32).tobytes())])
        model_id = g.load_model(raw)
        assert g.fetch_tensor("w").tolist() == [0.0, 1.0, 2.0, 3.0]
        assert g.config.model_id == model_id


def test_guests_in_parallel_threads_share_one_model(store, smollm2):
    """Each thread its own Guest (own Wasmtime Store), one model and cache in the host."""
    import threading

    names = ["blk.1.attn_k.weight", "blk.2.attn_v.weight", "blk.3.ffn_norm.weight"]
    want = {n: store.get_tensor_f32(smollm2, n).reshape(-1) for n in names}
    errors = []

    def work():
        try:
            with Guest(store) as g:
                g.attach(smollm2)
                for _ in range(5):
                    for n in names:
                        assert np.array_equal(g.fetch_tensor(n), want[n])
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert smollm2 in store


def test_a_guest_never_closed_lets_go_when_collected(store, tiny_gguf):
    import gc

    g = Guest(store)
    model_id = g.load_model(tiny_gguf.read_bytes())
    assert model_id in store
    del g
    gc.collect()
    assert model_id not in store


def test_a_guest_restored_from_a_snapshot_is_the_guest(store, smollm2):
    """Realm starts each generation's guest from a snapshot of one with its tokenizer built."""
    text = "Hello, snapshots! 123".encode()
    with Guest(store) as g:
        g.attach(smollm2)
        want = _tokenize(g, text, abi.TOKENIZE_ADD_SPECIAL)
        config = g.config
        snap = g.snapshot()
    assert snap.shared == (smollm2,) and snap.size % 65536 == 0
    assert sum(len(b) for _, b in snap.runs) < snap.size  # zero pages left out
    image = bytearray(snap.size)
    for offset, data in snap.runs:
        image[offset:offset + len(data)] = data
    with Guest(store, snapshot=snap) as h:
        assert h.read(0, h.memory_size) == bytes(image)  # the memory, zeros included, before any call
        assert h.host.shared_models == [smollm2]
        assert h.config == config and _tokenize(h, text, abi.TOKENIZE_ADD_SPECIAL) == want
        assert h.memory_size == snap.size
    with Guest(store, snapshot=snap) as k:  # another one, not disturbed by the first's writes
        assert k.read(0, k.memory_size) == bytes(image)
        assert _tokenize(k, text, abi.TOKENIZE_ADD_SPECIAL) == want
    with pytest.raises(LimitExceeded):
        Guest(store, limits=Limits(memory_bytes=snap.size - 65536), snapshot=snap)
    with pytest.raises(ArgumentTypeError):
        Guest(store, snapshot=snap.runs)


@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen2", "qwen3", "phi3", "llama3", "mistral"])
def test_the_guests_model_config_agrees_with_the_hosts(store, name, request, tmp_path):
    """guest/model_config.c and realm/forward.py's architecture table read the same file alike
    (each keeps llama.cpp's defaults: this holds them to each other), the tiny models of every
    architecture included (phi3's and mistral's window keys are ignored by both)."""
    from realm.forward import forward_config

    if name in ("smollm2", "gemma3"):
        model_id = request.getfixturevalue(name)
    else:
        require("gguf")
        from forward_helpers import TINY_ARCHS, write_tiny

        model_id = store.load(write_tiny(tmp_path / f"{name}.gguf", **TINY_ARCHS[name]))
    host = forward_config(store.get(model_id))
    with Guest(store) as g:
        g.attach(model_id)
        guest = g.config
    pairs = {"n_layers": host.n_layer, "n_embd": host.n_embd, "n_ff": host.n_ff, "n_head": host.n_head,
             "n_head_kv": host.n_head_kv, "head_dim": host.head_dim, "rope_dim": host.n_rot,
             "n_vocab": host.n_vocab, "n_ctx_train": host.n_ctx_train, "sliding_window": host.sliding_window,
             "swa_pattern": host.swa_pattern}
    assert {k: getattr(guest, k) for k in pairs} == pairs
    assert np.float32(guest.rope_freq_base) == np.float32(host.rope_base)
    assert np.float32(guest.rms_eps) == np.float32(host.rms_eps)
    if host.sliding_window:
        assert np.float32(guest.rope_freq_base_swa) == np.float32(host.rope_base_swa)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_buffers_hold_each_piece_apart_and_aligned(store, pieces):
    """Guest.buffers: one allocation, each piece at an 8-byte aligned offset, none overlapping
    the next, every byte as written; freed at the end of the block."""
    with Guest(store) as g:
        with g.buffers(*pieces) as ptrs:
            assert len(ptrs) == len(pieces)
            for i, (ptr, data) in enumerate(zip(ptrs, pieces)):
                assert ptr % 8 == 0
                if i + 1 < len(ptrs):
                    assert ptr + len(data) <= ptrs[i + 1]
                assert g.read(ptr, len(data)) == data
