"""Continuous batching and the prefix cache (realm/batching.py): many tenants share passes over
the weights, and every request gets the bits it gets alone -- at any batch, thread count or
arrival timing, with or without cached prefixes."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import realm
from realm import _native
from realm.batching import BatchSettings, PrefixCache, _registry, _Wake
from realm.forward import HostModel
from realm.limits import HostBudget

from conftest import assert_same_bits, run_threads

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _engine(r: realm.Realm, model: realm.Model):
    """The batching engine of a model in a Realm (made by its first generation)."""
    engines = [e for (mid, _), e in _registry(r.store).engines.items() if mid == model.id]
    assert len(engines) == 1
    return engines[0]


# -- the C pass: bits of a batch equal bits alone -------------------------------------------------

@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def host_model(request, smollm2_path, gemma3_path):
    store = realm.ModelStore()
    model_id = store.load(smollm2_path if request.param == "smollm2" else gemma3_path)
    with HostModel(store, model_id, threads=2) as m:
        yield m
    store.close()


@settings(max_examples=6, **SETTINGS)
@given(data=st.data())
def test_batched_pass_equals_each_sequence_alone(host_model, data):
    """Sequences of any lengths at any positions in one pass (prompt chunks beside decode steps,
    more tokens than one chunk of the C code) give each the logits of its pass alone, on 1 thread."""
    fm = host_model._fm
    n_seq = data.draw(st.integers(1, 6), label="sequences")
    lengths = data.draw(st.lists(st.integers(1, 90), min_size=n_seq, max_size=n_seq), label="prompts")
    steps = data.draw(st.lists(st.integers(1, 3), min_size=n_seq, max_size=n_seq), label="next tokens")
    rng = np.random.default_rng(len(lengths) * 1000 + sum(lengths))
    prompts = [rng.integers(0, fm.n_vocab, n, dtype=np.int32) for n in lengths]
    nexts = [rng.integers(0, fm.n_vocab, n, dtype=np.int32) for n in steps]

    alone = HostModel(host_model.store, host_model.model_id, threads=1)
    want = []
    for p, q in zip(prompts, nexts):
        kv = alone.new_kv_cache(128)
        want.append((alone.forward(p, kv, last_only=True)[0], alone.forward(q, kv, last_only=True)[0]))
    alone.close()

    batch = _native.Batch(fm)
    kvs = [host_model.new_kv_cache(128) for _ in prompts]
    for i, tokens in enumerate((prompts, nexts)):
        outs = [np.full(fm.n_vocab, np.nan, np.float32) for _ in prompts]
        items = [(kv, t.ctypes.data, len(t), kv.length, o.ctypes.data) for kv, t, o in zip(kvs, tokens, outs)]
        assert batch.forward(items) == 0
        for o, w in zip(outs, want):
            assert_same_bits(o, w[i])


def test_batched_layers_equal_each_sequence_alone(host_model):
    """The per-layer form (the seed's realm_forward_layer imports, batched across guests)."""
    fm = host_model._fm
    rng = np.random.default_rng(1)
    lengths = [3, 1, 40]
    hidden = [host_model.embed(rng.integers(0, fm.n_vocab, n)) for n in lengths]
    want = []
    for h in hidden:
        kv = host_model.new_kv_cache(64)
        want.append(host_model.layer(0, h, 0, kv))
    kvs = [host_model.new_kv_cache(64) for _ in lengths]
    x = np.concatenate(hidden)
    assert _native.Batch(fm).layer(0, [(kv, n, 0) for kv, n in zip(kvs, lengths)], x.ctypes.data) == 0
    at = 0
    for n, w in zip(lengths, want):
        assert_same_bits(x[at:at + n], w)
        at += n
    assert [kv.filled(0) for kv in kvs] == lengths


def test_a_batch_refuses_what_a_pass_alone_refuses(host_model):
    fm = host_model._fm
    batch = _native.Batch(fm)
    kv, other = host_model.new_kv_cache(8), host_model.new_kv_cache(8)
    good = np.array([1, 2], np.int32)
    bad = np.array([fm.n_vocab], np.int32)
    out = np.zeros(fm.n_vocab, np.float32)
    assert batch.check(kv, good.ctypes.data, 2, 0) == 0
    assert batch.check(kv, bad.ctypes.data, 1, 0) == _native.FORWARD_EINVAL       # a token id
    assert batch.check(kv, good.ctypes.data, 2, 1) == _native.FORWARD_EINVAL      # a gap
    assert batch.check(kv, good.ctypes.data, 2, 7) == _native.FORWARD_EKV_FULL    # past the end
    twice = [(kv, good.ctypes.data, 2, 0, 0), (kv, good.ctypes.data, 2, 0, out.ctypes.data)]
    assert batch.forward(twice) == _native.FORWARD_EINVAL                          # one cache twice
    assert batch.forward([(kv, good.ctypes.data, 2, 0, 0), (other, bad.ctypes.data, 1, 0, 0)]) \
        == _native.FORWARD_EINVAL
    assert kv.length == 0 and other.length == 0                                     # nothing written


# -- through guests: determinism under load -----------------------------------------------------------

@pytest.fixture(scope="module")
def realms(smollm2_path):
    """A loaded Realm (2 threads, prefix cache on, small passes so prompts are cut) and a reference
    Realm for solo runs (1 thread, no prefix cache)."""
    with realm.Realm(threads=2, max_batch_tokens=48) as loaded, \
            realm.Realm(threads=1, prefix_cache_bytes=0) as alone:
        yield (loaded, loaded.load_model(smollm2_path)), (alone, alone.load_model(smollm2_path))


_SOLO: dict = {}


def _solo(alone, prompt, options):
    key = (prompt, tuple(sorted(options.items())))
    if key not in _SOLO:
        r, model = alone
        _SOLO[key] = r.complete(prompt, model, **options).tokens
    return _SOLO[key]


_LONG = "Here is a long story about a lighthouse keeper and the sea. " * 24  # ~300 tokens
_PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time", "def fib(n):", "Hello",
            "The quick brown fox", "Water boils at", "My favourite colour is"]

_request = st.fixed_dictionaries({
    "prompt": st.sampled_from(_PROMPTS),
    "delay": st.sampled_from([0.0, 0.0, 0.01, 0.05, 0.2]),
    "max_tokens": st.integers(1, 12),
    "sampling": st.one_of(st.just({"temperature": 0}),
                          st.fixed_dictionaries({"temperature": st.sampled_from([0.7, 1.3]),
                                                 "seed": st.integers(0, 2**32)})),
})


@settings(max_examples=6, **SETTINGS)
@given(requests=st.lists(_request, min_size=1, max_size=16), long_at=st.one_of(st.none(), st.sampled_from([0.0, 0.1])))
def test_concurrent_requests_get_their_solo_tokens(realms, requests, long_at):
    """1 to 16 requests arriving at drawn times, greedy and seeded, maybe with a ~300-token prompt
    arriving mid-decode: each gets the token ids of its solo run on 1 thread without the cache."""
    (r, model), alone = realms
    jobs, wants = [], []
    if long_at is not None:
        requests = requests + [{"prompt": _LONG, "delay": long_at, "max_tokens": 4, "sampling": {"temperature": 0}}]
    for req in requests:
        options = dict(max_tokens=req["max_tokens"], ignore_eos=True, **req["sampling"])
        wants.append(_solo(alone, req["prompt"], options))

        def job(req=req, options=options):
            time.sleep(req["delay"])
            return r.complete(req["prompt"], model, **options).tokens

        jobs.append(job)
    assert run_threads(jobs) == wants


def test_concurrent_generations_share_passes(realms):
    """Batching happens: 8 concurrent generations run in passes of several sequences."""
    (r, model), alone = realms
    options = dict(max_tokens=24, temperature=0, ignore_eos=True)
    r.complete("warm up", model, max_tokens=1)
    before = _engine(r, model).stats()
    got = run_threads([lambda p=p: r.complete(p, model, **options).tokens for p in _PROMPTS])
    assert got == [_solo(alone, p, options) for p in _PROMPTS]
    after = _engine(r, model).stats()
    passes = after["passes"] - before["passes"]
    sequences = after["pass_sequences"] - before["pass_sequences"]
    assert sequences == len(_PROMPTS) * 24  # each prompt and each decode step once
    assert passes <= sequences / 3          # most passes held several sequences
    assert after["queued"] == 0


def test_concurrent_first_generations_take_one_snapshot(smollm2_path, monkeypatch):
    """The first requests for a model, arriving together, wait for one snapshot of its guest
    (taking one compiles guest.wasm) instead of each taking their own."""
    taken = []
    snapshot = realm.guest.Guest.snapshot

    def counted(self):
        taken.append(threading.get_ident())
        time.sleep(0.2)  # the others arrive meanwhile
        return snapshot(self)

    monkeypatch.setattr(realm.guest.Guest, "snapshot", counted)
    with realm.Realm(threads=2) as r:
        model = r.load_model(smollm2_path)
        got = run_threads([lambda i=i: r.complete(f"Request {i}", model, max_tokens=2, temperature=0).tokens
                           for i in range(4)])
    assert len(taken) == 1 and all(len(t) == 2 for t in got)


def test_a_closed_stream_frees_its_kv_and_leaves_the_others_alone(realms):
    (r, model), alone = realms
    options = dict(max_tokens=20, temperature=0, ignore_eos=True)
    stream = r.generate("Tell me a very long story", model, max_tokens=200, temperature=0, ignore_eos=True,
                        stream=True)

    def cancel():
        for i, _ in enumerate(stream):
            if i == 3:
                stream.close()
                return "closed"

    got = run_threads([cancel] + [lambda p=p: r.complete(p, model, **options).tokens for p in _PROMPTS[:5]])
    assert got[0] == "closed"
    assert got[1:] == [_solo(alone, p, options) for p in _PROMPTS[:5]]
    assert r.store.budget.used == _engine(r, model).prefix.nbytes  # every KV cache was freed
    assert _engine(r, model).stats()["queued"] == 0


# -- the prefix cache ------------------------------------------------------------------------------

_SYSTEM = "You are a helpful assistant who answers in one short sentence about geography. " * 6


def test_prefix_cache_hits_give_the_same_tokens(realms):
    (r, model), alone = realms
    options = dict(max_tokens=8, temperature=0, ignore_eos=True)
    first = r.complete(_SYSTEM + "Question: what is the capital of Peru?", model, **options)
    second = r.complete(_SYSTEM + "Question: what is the capital of Chile?", model, **options)
    n_system = len(r.tokenize(_SYSTEM, model))
    assert second.usage.cached_tokens >= n_system - 1
    assert second.tokens == _solo(alone, _SYSTEM + "Question: what is the capital of Chile?", options)
    assert first.tokens == _solo(alone, _SYSTEM + "Question: what is the capital of Peru?", options)
    # the next turn of a conversation reuses the whole earlier one, generated tokens included
    turn = r.detokenize(second.prompt_tokens + second.tokens, model, special=True)
    third = r.complete(turn + " And of Bolivia?", model, **options)
    assert third.usage.cached_tokens >= len(second.prompt_tokens)
    assert third.tokens == _solo(alone, turn + " And of Bolivia?", options)


def test_prefix_shared_with_a_request_still_running(realms):
    (r, model), alone = realms
    long_options = dict(max_tokens=40, temperature=0, ignore_eos=True)
    options = dict(max_tokens=6, temperature=0, ignore_eos=True)
    stream = r.generate(_SYSTEM + "Q: Kenya?", model, stream=True, **long_options)
    next(iter(stream))  # its prompt is in the cache now, and it still runs
    late = r.complete(_SYSTEM + "Q: Ghana?", model, **options)
    rest = stream.text
    assert late.usage.cached_tokens > 0
    assert late.tokens == _solo(alone, _SYSTEM + "Q: Ghana?", options)
    assert stream.completion.tokens == _solo(alone, _SYSTEM + "Q: Kenya?", long_options)
    assert rest


def test_prefix_cache_is_bounded_and_least_recently_used(host_model):
    fm = host_model._fm
    kv = host_model.new_kv_cache(64)
    tokens = np.arange(1, 41, dtype=np.int32) % fm.n_vocab
    host_model.forward(tokens, kv)
    cache = PrefixCache(max_bytes=3 * 10 * kv.row_bytes + 1000)
    for start in (0, 10, 20, 30):  # four 10-token prefixes of different sequences...
        other = host_model.new_kv_cache(16)
        host_model.forward(tokens[start:start + 10], other)
        cache.insert(tokens[start:start + 10], other)
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes  # ...the oldest went
    assert cache.longest(tokens[:10])[1] == 0
    entry, n = cache.longest(np.concatenate([tokens[30:40], tokens[:3]]))
    assert n == 10
    # the rows it kept are the rows a recomputation writes
    again = host_model.new_kv_cache(16)
    host_model.forward(tokens[30:40], again)
    k, v = again.read_rows(10)
    np.testing.assert_array_equal(entry.k, k)
    np.testing.assert_array_equal(entry.v, v)


class _NamedRows:
    """A stand-in KV cache whose row j names the tokens 0..j it was computed from (a real
    cache's row depends on exactly those): one int64 for K and one for V per position."""

    row_bytes = 16

    def __init__(self, tokens):
        self.tokens = [int(t) for t in tokens]

    def read_rows(self, n):
        k = np.array([[hash(tuple(self.tokens[:j + 1])) for j in range(n)]], dtype=np.int64)
        return k, k.copy()


def _shared(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@settings(max_examples=200, deadline=None)
@given(max_bytes=st.integers(0, 500),
       ops=st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 3), max_size=14)), max_size=40))
def test_prefix_cache_finds_what_a_scan_of_its_entries_finds(max_bytes, ops):
    """Random inserts and lookups over a 4-token alphabet (prefixes shared often), checked
    against a scan of every entry: the longest shared prefix, rows that fit the lookup, no
    entry a prefix of another, the bytes bounded, an insert that fits kept, the entry used last
    the most recent."""
    from realm.batching import PREFIX_MIN_TOKENS

    cache = PrefixCache(max_bytes)
    for is_insert, seq in ops:
        tokens = np.array(seq, np.int32)
        if is_insert:
            cache.insert(tokens, _NamedRows(seq))
            if len(seq) >= PREFIX_MIN_TOKENS and 20 * len(seq) <= max_bytes:
                assert any(_shared(e.tokens, seq) == len(seq) for e in cache._entries.values())
        else:
            entry, n = cache.longest(tokens)
            want = max((_shared(e.tokens, seq) for e in cache._entries.values()), default=0)
            assert n == want
            if n:
                assert list(entry.tokens[:n]) == seq[:n]
                np.testing.assert_array_equal(entry.k[0, :n], _NamedRows(seq).read_rows(n)[0][0])
                assert list(cache._entries.values())[-1] is entry
            else:
                assert entry is None
        entries = [list(e.tokens) for e in cache._entries.values()]
        assert not any(i != j and _shared(a, b) == len(a) for i, a in enumerate(entries) for j, b in enumerate(entries))
        assert cache.nbytes == sum(e.nbytes for e in cache._entries.values()) <= max(max_bytes, 0)
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and not cache._root.children


def test_prefix_cache_is_charged_to_the_host_budget(host_model):
    """Entries count in the store's HostBudget beside the tenants' KV caches: a full budget
    evicts the oldest entries, and with none left to evict the new one is not kept."""
    tokens = np.arange(1, 41, dtype=np.int32) % host_model._fm.n_vocab
    kvs = []
    for start in (0, 10, 20, 30):
        kvs.append(host_model.new_kv_cache(16))
        host_model.forward(tokens[start:start + 10], kvs[-1])
    entry_bytes = 10 * kvs[0].row_bytes + tokens[:10].nbytes
    budget = HostBudget(max_bytes=2 * entry_bytes + 100)
    cache = PrefixCache(max_bytes=1 << 30, budget=budget)
    for i in range(3):
        cache.insert(tokens[10 * i:10 * i + 10], kvs[i])
    assert len(cache) == 2 and budget.used == cache.nbytes == 2 * entry_bytes  # the first went
    assert cache.longest(tokens[:10])[1] == 0 and cache.longest(tokens[20:30])[1] == 10
    tenant = budget.max_bytes - budget.used
    assert budget.reserve(tenant)  # a tenant takes what is left
    cache.insert(tokens[30:40], kvs[3])  # room made by evicting the oldest entry
    assert len(cache) == 2 and budget.used == tenant + 2 * entry_bytes
    assert cache.longest(tokens[10:20])[1] == 0 and cache.longest(tokens[30:40])[1] == 10
    cache.clear()
    assert budget.used == tenant and cache.nbytes == 0
    assert budget.reserve(budget.max_bytes - budget.used)  # the tenants hold it all: nothing is kept
    cache.insert(tokens[:10], kvs[0])
    assert len(cache) == 0 and cache.nbytes == 0 and budget.used == budget.max_bytes


def test_batch_settings_are_checked():
    with pytest.raises(realm.InvalidArgumentError):
        BatchSettings(max_batch_tokens=0)
    with pytest.raises(realm.ArgumentTypeError):
        BatchSettings(prefix_cache_bytes=1.5)
    with pytest.raises(realm.InvalidArgumentError):
        realm.Realm(max_batch_tokens=-1)


# -- the rendezvous -------------------------------------------------------------------------------

@pytest.fixture
def engine(smollm2_path):
    from realm.batching import engine_for, release_engine

    store = realm.ModelStore()
    model_id = store.load(smollm2_path)
    e = engine_for(store, model_id, 2)
    yield e
    release_engine(e)
    store.close()


def _step(engine, member, kv, token):
    logits = np.empty(engine.model._fm.n_vocab, np.float32)
    rc = engine.forward(member, kv, np.array([token], np.int32), kv.length, logits)
    assert rc == 0
    return logits


def test_a_member_that_does_not_come_back_does_not_hold_the_others(engine):
    """A joins the passes, then stays away until B has run 20 steps: B must not wait for it
    (if it did, this would never end)."""
    kv_a, kv_b = engine.model.new_kv_cache(64), engine.model.new_kv_cache(64)
    b_done = threading.Event()

    def a():
        _step(engine, "a", kv_a, 1)
        b_done.wait(120)
        return _step(engine, "a", kv_a, 2)

    def b():
        for t in range(20):
            _step(engine, "b", kv_b, 3 + t)
        b_done.set()
        return "b"

    run_threads([a, b], timeout=120)
    assert b_done.is_set()


def test_only_the_first_waiter_times_the_rendezvous(engine, monkeypatch):
    """Four members step together through passes longer than the arrivals' spread.  Only the
    first one queued waits out the rendezvous window on a timer: a timer of each would fire in
    the pass that runs their work, waking every follower on the pass's cores (measured: 1.35
    waits per call when each had one, 0.95 with one a step)."""
    from realm import batching

    run = batching.Engine._execute
    monkeypatch.setattr(batching.Engine, "_execute", lambda self, batch: (time.sleep(0.03), run(self, batch))[1])
    waits = []
    wait = batching._Wake.wait
    monkeypatch.setattr(batching._Wake, "wait", lambda self, lock, timeout: (waits.append(timeout), wait(self, lock, timeout))[1])
    n, steps = 4, 8

    def member(i):
        kv = engine.model.new_kv_cache(32)
        for t in range(steps):
            _step(engine, i, kv, 1 + t)
            time.sleep(0.002 * i)  # the arrivals spread over 6 ms

    run_threads([lambda i=i: member(i) for i in range(n)], timeout=120)
    assert len(waits) <= 1.15 * n * steps, f"{len(waits)} waits for {n * steps} calls"


def test_per_layer_work_is_batched_and_exact(engine):
    """Guests on the per-layer imports: two members step through the layers at once; each gets
    the bits of the whole forward pass alone."""
    model = engine.model
    fm = model._fm
    prompts = [np.array([1, 2, 3], np.int32), np.array([7, 8], np.int32)]
    want = [model.forward(p, model.new_kv_cache(16), last_only=True)[0] for p in prompts]

    def run(member, tokens):
        kv = model.new_kv_cache(16)
        h = model.embed(tokens)
        for il in range(fm.n_layer):
            assert engine.layer(member, kv, il, h, 0, h) == 0
        out = np.empty((1, fm.n_vocab), np.float32)
        assert engine.lm_head(member, h[-1:], out) == 0
        return out[0]

    got = run_threads([lambda: run("x", prompts[0]), lambda: run("y", prompts[1])])
    for g, w in zip(got, want):
        assert_same_bits(g, w)


def test_work_past_its_deadline_is_withdrawn(engine):
    from realm.batching import DEADLINE

    kv = engine.model.new_kv_cache(8)
    logits = np.empty(engine.model._fm.n_vocab, np.float32)
    assert engine.forward("m", kv, np.array([1], np.int32), 0, logits, deadline=time.monotonic() - 1) == DEADLINE
    assert kv.length == 0 and engine.stats()["queued"] == 0


def test_passes_of_two_models_never_oversubscribe_the_cores(smollm2_path, gemma3_path, monkeypatch):
    """Generations on two models at once: the passes' threads together never exceed the cores."""
    from realm import cores
    from realm.threads import usable_cores

    seen = []
    acquire = cores.Cores.acquire

    def watch(self, threads):
        acquire(self, threads)
        seen.append(self._used)

    monkeypatch.setattr(cores.Cores, "acquire", watch)
    with realm.Realm(threads=usable_cores()) as r:
        models = [r.load_model(smollm2_path), r.load_model(gemma3_path)]
        run_threads([lambda m=m: r.complete("Hello", m, max_tokens=6, temperature=0) for m in models * 2])
    assert seen and max(seen) <= usable_cores()


# -- one OpenMP team for every model ----------------------------------------------------------------

TEAMS = """
import os, sys, threading, time
import realm
from realm.threads import usable_cores

def runners():
    return sum(t.name == "realm-pass" for t in threading.enumerate())

def omp_threads():
    return len(os.listdir("/proc/self/task"))

with realm.Realm(threads=usable_cores()) as rt:
    a, b = rt.load_model(sys.argv[1]), rt.load_model(sys.argv[2])
    rt.complete("Hi", model=a, max_tokens=2, temperature=0)
    tasks = omp_threads()
    for m in (b, a, b):
        rt.complete("Hi", model=m, max_tokens=2, temperature=0)
    print("runners", runners(), "new threads", omp_threads() - tasks)
end = time.monotonic() + 10
while runners() and time.monotonic() < end:
    time.sleep(0.05)
print("runners after close", runners())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the threads in /proc/self/task")
def test_passes_of_every_model_share_one_openmp_team(smollm2_path, gemma3_path):
    """libgomp counts the threads of every OpenMP team of a process, and once they outnumber the
    cores its barriers sleep instead of spinning (a pass has hundreds): passes of two models,
    which cannot run side by side on the machine's cores, run on one runner thread -- no second
    team -- which stops when the last engine closes."""
    run = subprocess.run([sys.executable, "-c", TEAMS, str(smollm2_path), str(gemma3_path)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == ["runners 1 new threads 0", "runners after close 0"]


def test_ctrl_c_during_a_generation_leaves_the_others_their_tokens(smollm2_path):
    """SIGINT reaches the main thread while it generates beside three other threads (whose
    pass it may lead): the others get their solo tokens, and the next generation on the main
    thread is whole.  The interrupted generation raises KeyboardInterrupt once its pass is done
    (tests/test_cores.py) -- or, when the signal lands as wasmtime-py's callback starts, ctypes
    drops it ("Exception ignored"), and the generation ends as a GenerationError or as if never
    interrupted."""
    import signal

    main = threading.main_thread().ident
    if threading.get_ident() != main:
        pytest.skip("signals reach the main thread only")
    prompts = ["The capital of France is", "1, 2, 3,", "Once upon a time", "Water boils at"]
    greedy = dict(max_tokens=24, temperature=0, ignore_eos=True)
    with realm.Realm(threads=2, prefix_cache_bytes=0) as r:
        m = r.load_model(smollm2_path)
        solo = [r.complete(p, m, **greedy).tokens for p in prompts]
        got: dict[int, list[int]] = {}
        others = [threading.Thread(target=lambda i=i: got.update({i: r.complete(prompts[i], m, **greedy).tokens}))
                  for i in (1, 2, 3)]
        timer = threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGINT))
        for t in others:
            t.start()
        timer.start()
        try:
            r.complete(prompts[0], m, max_tokens=300, temperature=0, ignore_eos=True)
        except (KeyboardInterrupt, realm.GenerationError):
            pass
        finally:
            timer.join()
            for t in others:
                t.join(120)
        assert [got.get(i) for i in (1, 2, 3)] == solo[1:]
        assert r.complete(prompts[0], m, **greedy).tokens == solo[0]


def test_a_leader_interrupted_before_its_pass_leaves_the_others_their_work(engine, monkeypatch):
    """The main thread leads a pass holding another member's work, and is interrupted (Ctrl-C)
    while it waits for cores another pass holds: the pass never ran, so the other's work goes
    back to the queue and runs in a later pass -- not failed for the leader's interrupt."""
    import signal

    from realm import batching, cores
    from realm.threads import usable_cores

    main = threading.main_thread().ident
    if threading.get_ident() != main:
        pytest.skip("signals reach the main thread only")
    n_vocab = engine.model._fm.n_vocab
    kv_a, kv_b = engine.model.new_kv_cache(64), engine.model.new_kv_cache(64)
    _step(engine, "a", kv_a, 1)
    _step(engine, "b", kv_b, 2)
    with engine._cond:  # both expected back: b's next step waits for a's, and a leads the pass of both
        engine._awaited, engine._late = {"a", "b"}, set()
    monkeypatch.setattr(batching, "RENDEZVOUS_MIN_S", 30.0)
    monkeypatch.setattr(batching, "RENDEZVOUS_MAX_S", 30.0)
    logits_b = np.empty(n_vocab, np.float32)
    got: list[int] = []
    b = threading.Thread(target=lambda: got.append(engine.forward("b", kv_b, np.array([3], np.int32), 1, logits_b)))
    b.start()
    end = time.monotonic() + 30
    while engine.stats()["queued"] < 1 and time.monotonic() < end:
        time.sleep(0.01)
    total = usable_cores()
    cores.CORES.acquire(total)  # another pass holds every core
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.forward("a", kv_a, np.array([4], np.int32), 1, np.empty(n_vocab, np.float32))
        assert engine.stats()["queued"] == 1  # b's work, back in the queue; a's went with its caller
    finally:
        timer.join()
        cores.CORES.release(total)
    engine.leave("a")  # a's guest goes: b need not wait for it
    b.join(60)
    monkeypatch.undo()
    engine.leave("b")
    assert got == [0]
    alone = engine.model.new_kv_cache(64)
    _step(engine, "c", alone, 2)
    assert_same_bits(_step(engine, "c", alone, 3), logits_b)


def test_wake_is_one_wakeup_that_a_timed_out_wait_consumes():
    """_Wake, the batcher's per-caller wake-up: a set() before the wait, or during it, ends it;
    two sets are one wake-up; a set that lands after the wait timed out is consumed by that
    wait (it re-takes the engine's lock and finds it), so the next wait blocks again."""
    lock = threading.Lock()
    wake = _Wake()
    with lock:
        wake.set()
        wake.set()
        t0 = time.monotonic()
        wake.wait(lock, 5.0)
        assert time.monotonic() - t0 < 1.0
        assert lock.locked()  # held again on return
        t0 = time.monotonic()
        wake.wait(lock, 0.05)  # the double set() was one wake-up
        assert time.monotonic() - t0 >= 0.04
    # set from another thread while waiting (it takes the lock the wait released)
    def later():
        time.sleep(0.05)
        with lock:
            wake.set()
    t = threading.Thread(target=later)
    with lock:
        t.start()
        t0 = time.monotonic()
        wake.wait(lock, 5.0)
        assert time.monotonic() - t0 < 2.0
    t.join()
    # a set that lands after the wait timed out, while it waits to re-take the lock: that
    # wait consumes it, and the next one blocks
    def holder():
        with lock:
            time.sleep(0.15)  # the waiter's 0.05 s run out meanwhile
            wake.set()
    t = threading.Thread(target=holder)
    with lock:
        t.start()
        wake.wait(lock, 0.05)
        t0 = time.monotonic()
        wake.wait(lock, 0.05)
        assert time.monotonic() - t0 >= 0.04
    t.join()


def test_wake_takes_its_lock_back_before_an_interrupt_goes_on():
    """Ctrl-C while _Wake.wait re-takes the engine's lock: the wait keeps trying, and raises
    KeyboardInterrupt only once the lock is held (its caller's `with lock:` releases it)."""

    class Flaky:
        def __init__(self):
            self.inner, self.fail = threading.Lock(), 1

        def acquire(self):
            if self.fail:
                self.fail -= 1
                raise KeyboardInterrupt
            return self.inner.acquire()

        def release(self):
            self.inner.release()

    lock = Flaky()
    lock.inner.acquire()
    with pytest.raises(KeyboardInterrupt):
        _Wake().wait(lock, 0.01)
    assert lock.inner.locked() and lock.fail == 0
    lock.release()
