"""LayerCache: LRU order, the byte bound (against a simple model, by a stateful
hypothesis test), stats arithmetic, read-only results and concurrent use."""

import threading
import time
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from realm.cache import LayerCache


def arr(n_floats, fill=0.0):
    return np.full(n_floats, fill, dtype=np.float32)


def test_get_put_and_lru_eviction():
    c = LayerCache(3 * 400)
    for i in range(3):
        c.put((1, f"t{i}"), arr(100, i))
    assert c.keys() == [(1, "t0"), (1, "t1"), (1, "t2")]
    assert c.get((1, "t0"))[0] == 0.0  # t0 is now the most recent
    c.put((1, "t3"), arr(100, 3))  # evicts t1, the least recently used
    assert c.keys() == [(1, "t2"), (1, "t0"), (1, "t3")]
    assert c.get((1, "t1")) is None
    s = c.stats()
    assert s["evictions"] == 1 and s["entries"] == 3 and s["current_bytes"] == 1200


def test_eviction_frees_as_many_as_needed():
    c = LayerCache(1000)
    for i in range(5):
        c.put(i, arr(50))  # 200 bytes each
    c.put("big", arr(200))  # 800 bytes: four of the five must go
    assert c.keys() == [4, "big"] and c.stats()["evictions"] == 4 and c.stats()["current_bytes"] == 1000


def test_too_large_is_returned_not_cached():
    c = LayerCache(1000)
    c.put("small", arr(10))
    big = c.put("big", arr(251))  # 1004 bytes > budget
    assert big.shape == (251,) and "big" not in c and "small" in c
    loaded = c.get_or_load("big2", lambda: arr(300, 7.0))
    assert loaded[0] == 7.0 and "big2" not in c
    assert c.stats()["current_bytes"] == 40


def test_zero_budget_caches_nothing():
    c = LayerCache(0)
    assert c.get_or_load("k", lambda: arr(1))[0] == 0.0
    assert len(c) == 0 and c.stats()["misses"] == 1


def test_replacing_a_key_recounts_bytes():
    c = LayerCache(10_000)
    c.put("k", arr(100))
    c.put("k", arr(10))
    assert c.stats()["current_bytes"] == 40 and len(c) == 1


def test_results_are_read_only_and_hits_copy_nothing():
    c = LayerCache(1 << 20)
    first = c.get_or_load("k", lambda: arr(16, 1.0))
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 2.0
    again = c.get_or_load("k", lambda: pytest.fail("a hit must not load"))
    assert again is first and c.get("k") is first


def test_put_takes_ownership():
    c = LayerCache(1 << 20)
    base = np.arange(64, dtype=np.float32)
    view = base[::2]  # a strided view of a larger array: copied, so only its own bytes count
    stored = c.put("v", view)
    assert stored.base is None and stored.flags.c_contiguous and c.stats()["current_bytes"] == 128
    base[:] = -1  # the caller's array changing leaves the cached copy alone
    assert stored[1] == 2.0
    own = np.ones(8, np.float32)
    assert c.put("own", own) is own and not own.flags.writeable


def test_stats_arithmetic():
    c = LayerCache(1 << 20)
    assert c.stats() == {"hits": 0, "misses": 0, "hit_rate": 0.0, "evictions": 0,
                         "current_bytes": 0, "max_bytes": 1 << 20, "entries": 0}
    c.get("a")  # miss
    c.get_or_load("a", lambda: arr(4))  # miss, load
    c.get("a")  # hit
    c.get_or_load("a", lambda: arr(4))  # hit
    c.get_or_load("b", lambda: arr(8))  # miss
    s = c.stats()
    assert (s["hits"], s["misses"], s["entries"], s["current_bytes"]) == (2, 3, 2, 48)
    assert s["hit_rate"] == pytest.approx(2 / 5)


def test_drop_model():
    c = LayerCache(1 << 20)
    for model in (1, 2):
        for name in ("a", "b"):
            c.put((model, name), arr(4))
    c.put("loose", arr(4))
    assert c.drop_model(1) == 2
    assert sorted(map(str, c.keys())) == sorted(map(str, [(2, "a"), (2, "b"), "loose"]))
    assert c.stats()["current_bytes"] == 48


def test_loader_errors_reach_every_waiter_and_are_not_cached():
    c = LayerCache(1 << 20)
    gate, started = threading.Event(), threading.Event()
    calls = []

    def failing():
        calls.append(1)
        started.set()
        gate.wait()
        raise RuntimeError("boom")

    errors = []

    def worker():
        try:
            c.get_or_load("k", failing)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    while c.stats()["hits"] < 3:  # the other three are waiting on the load under way
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join()
    assert errors == ["boom"] * 4 and len(calls) == 1 and "k" not in c
    assert c.get_or_load("k", lambda: arr(2))[0] == 0.0  # a later load works


def test_bad_arguments():
    with pytest.raises(ValueError):
        LayerCache(-1)
    with pytest.raises(TypeError):
        LayerCache(1.5)
    with pytest.raises(TypeError):
        LayerCache(100).put("k", [1.0, 2.0])


def test_concurrent_access_from_8_threads():
    # Values are a pure function of the key, so a lost or torn entry shows as a wrong value.
    c = LayerCache(40 * 1024)
    n_keys, per_thread = 24, 400
    loads = [0] * n_keys
    lock = threading.Lock()

    def load(k):
        with lock:
            loads[k] += 1
        return np.full(256 * (1 + k % 3), k, dtype=np.float32)

    bad = []
    barrier = threading.Barrier(8)

    def worker(seed):
        rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(per_thread):
            k = int(rng.integers(n_keys))
            op = rng.integers(3)
            if op == 0:
                got = c.get_or_load((k % 4, k), lambda: load(k))
            elif op == 1:
                got = c.get((k % 4, k))
            else:
                got = c.put((k % 4, k), load(k))
            if got is not None and (got.size != 256 * (1 + k % 3) or not np.all(got == k)):
                bad.append(k)
            s = c.stats()
            if s["current_bytes"] > s["max_bytes"]:
                bad.append("over budget")
            if rng.integers(50) == 0:
                c.drop_model(int(rng.integers(4)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    s = c.stats()
    keys = c.keys()
    assert s["entries"] == len(keys) == len(set(keys))
    assert s["current_bytes"] == sum(c.get(k).nbytes for k in keys) <= s["max_bytes"]


class CacheModel(RuleBasedStateMachine):
    """The cache against an obvious model: an OrderedDict evicted from the front."""

    MAX = 2000

    def __init__(self):
        super().__init__()
        self.cache = LayerCache(self.MAX)
        self.model: OrderedDict = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def _model_store(self, key, size):
        self.model.pop(key, None)
        if 4 * size > self.MAX:
            return
        while sum(4 * s for s in self.model.values()) + 4 * size > self.MAX:
            self.model.popitem(last=False)
            self.evictions += 1
        self.model[key] = size

    keys = st.tuples(st.integers(0, 2), st.sampled_from("abcdef"))
    sizes = st.integers(0, 600)  # floats; 600 * 4 bytes is over the budget

    @rule(key=keys, size=sizes)
    def put(self, key, size):
        got = self.cache.put(key, np.full(size, hash(key) % 1000, np.float32))
        assert got.size == size
        self._model_store(key, size)

    @rule(key=keys)
    def get(self, key):
        got = self.cache.get(key)
        if key in self.model:
            self.hits += 1
            self.model.move_to_end(key)
            assert got is not None and got.size == self.model[key]
        else:
            self.misses += 1
            assert got is None

    @rule(key=keys, size=sizes)
    def get_or_load(self, key, size):
        got = self.cache.get_or_load(key, lambda: np.zeros(size, np.float32))
        if key in self.model:
            self.hits += 1
            self.model.move_to_end(key)
            assert got.size == self.model[key]
        else:
            self.misses += 1
            assert got.size == size
            self._model_store(key, size)

    @rule(model_id=st.integers(0, 2))
    def drop_model(self, model_id):
        dropped = self.cache.drop_model(model_id)
        doomed = [k for k in self.model if k[0] == model_id]
        assert dropped == len(doomed)
        for k in doomed:
            del self.model[k]

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def clear(self):
        self.cache.clear()
        self.model.clear()

    @invariant()
    def agrees(self):
        assert self.cache.keys() == list(self.model)
        s = self.cache.stats()
        assert s["current_bytes"] == sum(4 * v for v in self.model.values()) <= self.MAX
        assert (s["hits"], s["misses"], s["evictions"], s["entries"]) == (
            self.hits, self.misses, self.evictions, len(self.model))


TestCacheModel = CacheModel.TestCase
TestCacheModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
