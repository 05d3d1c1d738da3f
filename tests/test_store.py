"""ModelStore: loading, ids, shared mappings, tensors against gguf-py, the cache
path, lifetimes (remove while in use) and prefetch."""

import errno
import gc
import os
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest

from conftest import require
from gguf_helpers import RawTensor, build_gguf
import realm
from realm import GGUFError, LayerCache, ModelNotFoundError, ModelStore, TensorNotFoundError
from realm.errors import FileAccessError
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT

gguf = require("gguf")
from gguf.quants import dequantize as ref_dequantize  # noqa: E402


def address(a):
    return a.__array_interface__["data"][0]


def mmap_of(store, model_id):
    """A weak reference to the mmap behind a model (to watch it close)."""
    return weakref.ref(store._entries[model_id].mapping.file._buf)


@pytest.fixture
def store():
    s = ModelStore(LayerCache(64 << 20))
    yield s
    s.close()


# -- loading and reading -----------------------------------------------------------------

def test_load_real_model(store, smollm2_path, smollm2_reference):
    mid = store.load(smollm2_path)
    m = store.get(mid)
    ref = smollm2_reference
    assert m.id == mid and m.path == smollm2_path and m.architecture == "llama"
    assert list(m.tensors) == [t.name for t in ref.tensors]
    assert m.total_size == sum(int(t.n_bytes) for t in ref.tensors)
    info = store.info(mid)
    assert (info.tensor_count, info.total_size) == (len(ref.tensors), m.total_size)
    assert info.n_elements == sum(int(t.n_elements) for t in ref.tensors)
    assert sum(info.bytes_by_type.values()) == m.total_size
    assert m.header == smollm2_path.read_bytes()[: ref.data_offset]
    first = m.tensors[ref.tensors[0].name]
    for t in ref.tensors:
        q = m.tensors[t.name]
        assert q.shape == tuple(reversed(t.shape.tolist())) and q.n_elements == t.n_elements
        assert q.nbytes == t.n_bytes and int(q.dtype) == int(t.tensor_type) and q.offset == t.data_offset
        assert not q.data.flags.writeable  # a view of the one mapping, where the file has it:
        assert address(q.data) - address(first.data) == q.offset - first.offset
        assert np.array_equal(q.data.reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1))


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.3.ffn_down.weight", "output_norm.weight"])
def test_smollm2_tensors_dequantize_like_gguf_py(store, smollm2_path, name):
    mid = store.load(smollm2_path)
    q = store.get_tensor(mid, name)
    want = ref_dequantize(np.asarray(q.data), gguf.GGMLQuantizationType(int(q.dtype)))
    got = q.dequantize()
    assert got.shape == q.shape and np.array_equal(got, want.reshape(q.shape))
    cached = store.get_tensor_f32(mid, name)
    assert np.array_equal(cached, got) and not cached.flags.writeable


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K", "Q5_0"])
def test_gemma3_tensors_dequantize_like_gguf_py(store, gemma3_path, kind):
    mid = store.load(gemma3_path)
    m = store.get(mid)
    q = min((t for t in m.tensors.values() if t.dtype.name == kind), key=lambda t: t.nbytes)
    want = ref_dequantize(np.asarray(q.data), gguf.GGMLQuantizationType(int(q.dtype))).reshape(q.shape)
    np.testing.assert_array_equal(store.get_tensor_f32(mid, q.name, threads=2), want)


def test_tiny_model_every_tensor(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    for name, q in store.get(mid).tensors.items():
        want = ref_dequantize(np.asarray(q.data), gguf.GGMLQuantizationType(int(q.dtype))).reshape(q.shape)
        np.testing.assert_array_equal(store.get_tensor_f32(mid, name), want)
        out = np.empty(q.shape, np.float32)
        assert q.dequantize(out=out, threads=1) is out and np.array_equal(out, want)


def test_store_bytes_keeps_a_private_copy(store, tiny_gguf):
    raw = bytearray(tiny_gguf.read_bytes())
    mid = store.store_bytes(raw)
    lid = store.load(tiny_gguf)
    a, b = store.get(mid), store.get(lid)
    assert a.path is None and a.header == b.header == bytes(raw[: a.data_offset])
    before = a.tensors["output.weight"].data.copy()
    raw[:] = bytes(len(raw))  # the sender's buffer is reused: the stored model must not change
    assert np.array_equal(a.tensors["output.weight"].data, before)
    assert np.array_equal(store.get_tensor_f32(mid, "output.weight"), store.get_tensor_f32(lid, "output.weight"))
    for source in (memoryview(tiny_gguf.read_bytes()), np.frombuffer(tiny_gguf.read_bytes(), np.uint8)):
        assert store.get(store.store_bytes(source)).tensors.keys() == a.tensors.keys()
    with pytest.raises(TypeError):
        store.store_bytes("not bytes")


def test_unreadable_types_are_still_readable(store):
    # Q8_1: realm has no kernel, yet the tensor is indexed and its bytes exposed.
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, 40 * 16, dtype=np.uint8).tobytes()
    data, _ = build_gguf([("general.architecture", VT.STRING, "llama")],
                         [RawTensor("iq", (512,), GGMLType.Q8_1, blob),
                          RawTensor("f", (32,), GGMLType.F32, np.arange(32, dtype=np.float32).tobytes())])
    mid = store.store_bytes(data)
    q = store.get_tensor(mid, "iq")
    assert q.dtype == GGMLType.Q8_1 and q.nbytes == 640 and q.data.tobytes() == blob
    assert not q.dequantizable
    with pytest.raises(ValueError, match="Q8_1"):
        store.get_tensor_f32(mid, "iq")
    store.prefetch(mid, ["iq", "f"]).result()  # pages the Q8_1 tensor in, caches the F32 one
    assert (mid, "f") in store.cache and (mid, "iq") not in store.cache


def test_errors(store, tiny_gguf, tmp_path):
    mid = store.load(tiny_gguf)
    with pytest.raises(ModelNotFoundError):
        store.get(mid + 1000)
    with pytest.raises(KeyError):  # ModelNotFoundError is a KeyError
        store.get_tensor_f32(-1, "output.weight")
    with pytest.raises(TensorNotFoundError, match="no tensor 'nope'"):
        store.get_tensor(mid, "nope")
    with pytest.raises(KeyError):
        store.get_tensor_f32(mid, "nope")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(GGUFError, match="version 0"):
        store.load(bad)
    with pytest.raises(ValueError):  # GGUFError is a ValueError
        store.store_bytes(b"not a gguf at all")
    with pytest.raises(FileAccessError) as err:  # a RealmError and an OSError
        store.load(tmp_path / "missing.gguf")
    assert err.value.errno == errno.ENOENT
    assert store.ids() == [mid]  # failures registered nothing


# -- ids and mappings ---------------------------------------------------------------------

def test_ids_unique_under_concurrent_loads(store, tiny_gguf):
    raw = tiny_gguf.read_bytes()
    ids, errors = [], []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            barrier.wait()
            for j in range(6):
                ids.append(store.load(tiny_gguf) if (i + j) % 3 else store.store_bytes(bytearray(raw)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ids) == len(set(ids)) == 48 and sorted(ids) == store.ids()
    loaded = [i for i in ids if store.get(i).path is not None]
    addresses = {address(store.get(i).tensors["output.weight"].data) for i in loaded}
    assert len(addresses) == 1  # every load of the file shares one mapping
    copies = [i for i in ids if store.get(i).path is None]
    assert len({address(store.get(i).tensors["output.weight"].data) for i in copies}) == len(copies)


def test_ids_are_never_reused(store, tiny_gguf):
    a = store.load(tiny_gguf)
    store.remove(a)
    b = store.load(tiny_gguf)
    assert b > a and a not in store and b in store


def test_changed_file_gets_a_new_mapping(store, tiny_gguf):
    a = store.load(tiny_gguf)
    st = os.stat(tiny_gguf)
    os.utime(tiny_gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = store.load(tiny_gguf)
    ta, tb = store.get(a).tensors["output.weight"], store.get(b).tensors["output.weight"]
    assert address(ta.data) != address(tb.data)


# -- lifetimes ---------------------------------------------------------------------------

def test_remove(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    store.get_tensor_f32(mid, "output.weight")
    assert len(store.cache) == 1
    watch = mmap_of(store, mid)
    store.remove(mid)
    assert len(store.cache) == 0 and mid not in store and store.ids() == []
    with pytest.raises(ModelNotFoundError):
        store.get(mid)
    with pytest.raises(ModelNotFoundError):
        store.remove(mid)
    gc.collect()
    assert watch() is None or watch().closed


def test_remove_while_in_use(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    watch = mmap_of(store, mid)
    expected = store.get_tensor(mid, "blk.1.ffn_down.weight").dequantize()
    with store.acquire(mid) as model:
        store.remove(mid)
        assert mid not in store.ids()
        # the holder still reads everything, by object and by id
        assert np.array_equal(model.tensors["blk.1.ffn_down.weight"].dequantize(), expected)
        assert np.array_equal(store.get_tensor_f32(mid, "blk.1.ffn_down.weight"), expected)
        assert store.get(mid) is model
        with pytest.raises(ModelNotFoundError):  # but nobody new may take it
            with store.acquire(mid):
                pass
        assert not watch().closed
        del model
    with pytest.raises(ModelNotFoundError):
        store.get(mid)
    assert (mid, "blk.1.ffn_down.weight") not in store.cache
    gc.collect()
    assert watch() is None or watch().closed


def test_shared_mapping_closes_with_its_last_model(store, tiny_gguf):
    a, b = store.load(tiny_gguf), store.load(tiny_gguf)
    watch = mmap_of(store, a)
    store.remove(a)
    assert not watch().closed and store.get_tensor(b, "output.weight").data.sum() >= 0
    store.remove(b)
    gc.collect()
    assert watch() is None or watch().closed


def test_views_held_by_a_caller_outlive_removal(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    view = store.get_tensor(mid, "output.weight").data
    expected = tiny_gguf.read_bytes()[store.get_tensor(mid, "output.weight").offset:][: view.nbytes]
    store.remove(mid)
    gc.collect()
    assert view.tobytes() == expected  # still mapped: the view keeps its pages


def test_retain_release_pairs(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    store.retain(mid)
    store.retain(mid)
    store.remove(mid)
    store.release(mid)
    assert store.get(mid).id == mid
    store.release(mid)
    with pytest.raises(ModelNotFoundError):
        store.get(mid)
    with pytest.raises(ModelNotFoundError):
        store.release(mid)


def test_close_drops_everything(tiny_gguf):
    store = ModelStore(LayerCache(1 << 20))
    mid = store.load(tiny_gguf)
    store.get_tensor_f32(mid, "output_norm.weight")
    store.retain(mid)
    store.close()
    assert len(store.cache) == 0
    with pytest.raises(RuntimeError, match="closed"):
        store.load(tiny_gguf)
    store.close()  # twice is fine


# -- the cache path and prefetch --------------------------------------------------------------

def test_get_tensor_f32_caches(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    a = store.get_tensor_f32(mid, "blk.0.attn_q.weight")
    b = store.get_tensor_f32(mid, "blk.0.attn_q.weight")
    assert a is b and not a.flags.writeable
    s = store.cache.stats()
    assert (s["hits"], s["misses"], s["current_bytes"]) == (1, 1, a.nbytes)


def test_concurrent_get_tensor_f32_loads_once(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    results, barrier = [], threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(store.get_tensor_f32(mid, "blk.1.ffn_gate.weight"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is results[0] for r in results)
    assert store.cache.stats()["misses"] == 1


def test_remove_racing_readers_leaves_no_entries(store, tiny_gguf, monkeypatch):
    # Readers that were mid-load when the model went must not leave entries behind.
    names = [n for n in store.get(store.load(tiny_gguf)).tensors]
    real = realm.store.QuantizedTensor.dequantize

    def slow(self, **kw):  # widen the window between the load and the cache fill
        time.sleep(0.002)
        return real(self, **kw)

    monkeypatch.setattr(realm.store.QuantizedTensor, "dequantize", slow)
    for _ in range(5):
        mid = store.load(tiny_gguf)
        started, stop = threading.Barrier(5), threading.Event()

        def reader(offset):
            started.wait()
            i = offset
            while not stop.is_set():
                try:
                    store.get_tensor_f32(mid, names[i % len(names)])
                except ModelNotFoundError:
                    return
                i += 1

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.01)  # let loads get under way
        store.remove(mid)
        stop.set()
        for t in threads:
            t.join()
        assert not [k for k in store.cache.keys() if k[0] == mid]


def test_models_do_not_share_cache_entries(store, tiny_gguf):
    a, b = store.load(tiny_gguf), store.load(tiny_gguf)
    assert store.get_tensor_f32(a, "output.weight") is not store.get_tensor_f32(b, "output.weight")
    store.remove(a)
    assert store.cache.keys() == [(b, "output.weight")]


def test_prefetch_fills_the_cache(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    names = [n for n in store.get(mid).tensors if n.startswith("blk.1.")]
    future = store.prefetch(mid, names)
    assert future.result(timeout=60) is None
    assert {k for k in store.cache.keys()} == {(mid, n) for n in names}
    before = store.cache.stats()
    for n in names:
        store.get_tensor_f32(mid, n)
    after = store.cache.stats()
    assert after["hits"] - before["hits"] == len(names) and after["misses"] == before["misses"]


def test_prefetch_validates_names_at_once(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    with pytest.raises(TensorNotFoundError):
        store.prefetch(mid, ["output.weight", "nope"])
    with pytest.raises(ModelNotFoundError):
        store.prefetch(mid + 1, ["output.weight"])
    store.remove(mid)  # the failed prefetch holds no reference
    assert mid not in store._entries


def test_prefetch_keeps_a_removed_model_until_done(store, tiny_gguf):
    mid = store.load(tiny_gguf)
    gate = threading.Event()
    store.prefetch(mid, []).result(timeout=60)  # starts the prefetch thread
    blocker = store._prefetcher.submit(gate.wait)  # hold the prefetch thread
    future = store.prefetch(mid, ["output.weight"])
    store.remove(mid)
    assert store.get(mid).id == mid  # still held by the queued prefetch
    gate.set()
    blocker.result(timeout=60)
    future.result(timeout=60)
    with pytest.raises(ModelNotFoundError):
        store.get(mid)
    assert (mid, "output.weight") not in store.cache  # entries of a released model are dropped


def test_prefetch_skips_tensors_larger_than_the_cache(tiny_gguf):
    with ModelStore(LayerCache(4096)) as store:
        mid = store.load(tiny_gguf)
        store.prefetch(mid, ["output_norm.weight", "token_embd.weight"]).result(timeout=60)
        assert store.cache.keys() == [(mid, "output_norm.weight")]
        assert store.cache.stats()["misses"] == 1  # the big one was not even dequantized


def test_default_cache(tiny_gguf):
    with ModelStore() as store:
        assert store.cache.max_bytes == realm.store.DEFAULT_CACHE_BYTES


TEAMLESS = """
import os, sys, time
import numpy as np
import realm
from realm.quants import dequantize

def tasks():
    return len(os.listdir("/proc/self/task"))

with realm.ModelStore() as store:
    mid = store.load(sys.argv[1])
    before = tasks()
    got = store.get_tensor_f32(mid, "token_embd.weight", threads=2)
    end = time.monotonic() + 10
    while tasks() > before and time.monotonic() < end:
        time.sleep(0.05)
    t = store.get_tensor(mid, "token_embd.weight")
    assert np.array_equal(got, dequantize(t.data, t.dtype, shape=t.shape, threads=1))
    print("threads left", tasks() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the threads in /proc/self/task")
def test_a_parallel_dequantization_leaves_the_caller_no_openmp_team(smollm2_path):
    """get_tensor_f32 on two threads (a tenant's realm_get_tensor) runs on realm's runners: the
    caller's thread does not become the master of an OpenMP team that outlives the call (whose
    threads would make libgomp's barriers sleep in every pass: see realm/cores.py)."""
    run = subprocess.run([sys.executable, "-c", TEAMLESS, str(smollm2_path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == ["threads left 0"]
