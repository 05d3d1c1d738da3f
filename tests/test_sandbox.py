"""Tenants under limits (realm.Limits, realm.Tenant, HostBudget, deadlines): third-party
WebAssembly programs, written in WAT here, that loop, hog memory, hammer imports, walk around
quotas or overrun the host's budget are stopped or refused, and the host goes on."""

from __future__ import annotations

import gc
import logging
import time

import numpy as np
import pytest
import wasmtime

import realm
from realm import abi
from realm.abi import Err
from realm.errors import ClosedError, DeadlineExceeded, InvalidArgumentError, LimitExceeded, RealmError
from realm.host import add_realm_imports
from realm.limits import TICK_S, GuestTrapError, HostBudget, Limits, sandbox_engine
from realm.tenant import Tenant

PAGE = 65536


def _imports(*names: str) -> str:
    return "\n".join(f'  (import "env" "{n}" (func ${n} (param {" ".join(abi.IMPORTS[n].params)}) '
                     f'(result {" ".join(abi.IMPORTS[n].results)})))' for n in names)


SPIN = """(module (memory (export "memory") 1)
  (func (export "spin") (loop $l (br $l)))
  (func (export "seven") (result i32) (i32.const 7)))"""

HOG = """(module (memory (export "memory") 1)
  (func (export "hog") (result i32) (local $n i32)
    (block $full (loop $more
      (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $more)))
    (local.get $n)))"""

# calls a cheap import forever: only the deadline ends it
HAMMER = f"""(module
{_imports("realm_get_model_info")}
  (memory (export "memory") 1)
  (func (export "hammer") (param $m i64)
    (loop $l (drop (call $realm_get_model_info (local.get $m) (i32.const 0) (i32.const 8))) (br $l))))"""

# issue 10's quota walk: store a model from guest memory, make a KV cache of it, remove the model;
# returns the first failing code, or the rounds done
WALKER = f"""(module
{_imports("realm_store_model", "realm_kv_create", "realm_remove_model")}
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "walk") (param $ptr i32) (param $len i32) (param $rounds i32) (result i32)
    (local $id i64) (local $kv i32) (local $i i32)
    (block $out (loop $l
      (br_if $out (i32.ge_u (local.get $i) (local.get $rounds)))
      (local.set $id (call $realm_store_model (local.get $ptr) (local.get $len)))
      (if (i64.lt_s (local.get $id) (i64.const 0)) (then (return (i32.wrap_i64 (local.get $id)))))
      (local.set $kv (call $realm_kv_create (local.get $id) (i32.const 64)))
      (if (i32.lt_s (local.get $kv) (i32.const 0)) (then (return (local.get $kv))))
      (drop (call $realm_remove_model (local.get $id)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $i)))"""


def wat(text: str) -> bytes:
    return wasmtime.wat2wasm(text)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    realm_test_store = realm.ModelStore(budget=HostBudget(256 << 20))
    from gguf_helpers import write_tiny_llama  # gguf-py writes the model

    path = write_tiny_llama(tmp_path_factory.mktemp("sandbox") / "tiny.gguf")
    realm_test_store.tiny_path = path
    realm_test_store.tiny = realm_test_store.load(path)
    yield realm_test_store
    realm_test_store.close()


# -- Limits and the budget ------------------------------------------------------------------

def test_limits_are_validated():
    assert Limits().deadline_s > 0 and Limits().memory_bytes == 1 << 30
    for bad in (dict(memory_bytes=-1), dict(memory_bytes=(1 << 32) + 1), dict(deadline_s=0),
                dict(deadline_s=float("inf")), dict(deadline_s=float("nan")), dict(kv_caches=-1)):
        with pytest.raises(InvalidArgumentError):
            Limits(**bad)
    for bad in (dict(memory_bytes=1.5), dict(deadline_s="1"), dict(stored_models=True)):
        with pytest.raises(realm.ArgumentTypeError):
            Limits(**bad)
    with pytest.raises(realm.ArgumentTypeError):
        realm.Realm(limits={"deadline_s": 1})


def test_host_budget():
    b = HostBudget(100)
    assert b.reserve(60) and not b.reserve(41) and b.used == 60
    assert b.reserve(40) and b.peak == 100
    b.release(100)
    assert b.used == 0
    with pytest.raises(RealmError):
        b.release(1)
    assert HostBudget().max_bytes > 0  # half the machine's memory


# -- third-party tenants ----------------------------------------------------------------------

def test_a_looping_tenant_is_stopped_at_its_deadline(store):
    t = Tenant(store, wat(SPIN), limits=Limits(deadline_s=0.3))
    assert t.call("seven") == 7
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        t.call("spin")
    late = time.monotonic() - t0 - 0.3
    assert -TICK_S <= late < 0.1, f"stopped {late * 1000:.0f} ms after its deadline"
    assert t.failed and "deadline" in t.failed
    with pytest.raises(ClosedError):  # its state is unknown now: no more calls
        t.call("seven")
    t.close()


def test_one_deadline_for_a_block_of_calls(store):
    with Tenant(store, wat(SPIN), limits=Limits(deadline_s=60)) as t:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded), t.deadline(0.2):
            t.call("seven")
            t.call("spin")
        assert time.monotonic() - t0 < 0.3


def test_a_tenant_without_deadline_is_not_interrupted(store):
    with Tenant(store, wat(SPIN), limits=Limits(deadline_s=None)) as t:
        time.sleep(3 * TICK_S)
        assert t.call("seven") == 7


def test_an_import_hammering_tenant_is_stopped(store):
    with Tenant(store, wat(HAMMER), limits=Limits(deadline_s=0.3), shared=[store.tiny]) as t:
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            t.call("hammer", store.tiny)
        assert time.monotonic() - t0 < 0.4


def test_a_memory_hog_is_capped(store):
    with Tenant(store, wat(HOG), limits=Limits(memory_bytes=8 << 20)) as t:
        grown = t.call("hog")
        assert t.memory_size <= 8 << 20 and grown == (8 << 20) // (16 * PAGE) - 1
    with pytest.raises(LimitExceeded, match="memory"):  # a module that starts above the cap
        Tenant(store, wat('(module (memory (export "memory") 200))'), limits=Limits(memory_bytes=1 << 20))


def test_modules_that_cannot_run_are_refused_clearly(store):
    with pytest.raises(InvalidArgumentError, match="wasi::fd_write"):
        Tenant(store, wat('(module (import "wasi" "fd_write" (func)))'))
    with pytest.raises(InvalidArgumentError, match="signature"):
        Tenant(store, wat('(module (import "env" "realm_log" (func (param i32))))'))
    with pytest.raises(InvalidArgumentError, match="not a valid WebAssembly module"):
        Tenant(store, b"\0asm garbage")
    foreign = wasmtime.Module(wasmtime.Engine(), wat(SPIN))
    with pytest.raises(InvalidArgumentError, match="Engine"):
        Tenant(store, foreign)
    with Tenant(store, wat(SPIN)) as t:
        with pytest.raises(InvalidArgumentError, match="no function"):
            t.call("nope")
        with pytest.raises(InvalidArgumentError, match="takes 0 arguments"):
            t.call("seven", 1)
    trap = wat('(module (func (export "boom") unreachable))')
    with Tenant(store, trap) as t:
        with pytest.raises(GuestTrapError, match="unreachable"):
            t.call("boom")


def test_the_quota_walk_keeps_nothing_alive(store):
    """Issue 10: store -> kv_create -> remove, again and again.  Removing a model frees the
    tenant's KV caches of it, which would otherwise keep its weights alive uncounted."""
    data = store.tiny_path.read_bytes()
    with Tenant(store, wat(WALKER), limits=Limits(stored_models=2)) as t:
        t.call("grow", len(data) // PAGE + 1)
        t.memory.write(t.wasm_store, data, 0)
        assert t.call("walk", 0, len(data), 16) == 16
        assert t.host.kv_bytes == 0 and t.host.stored_bytes == 0 and t.host.owned_models == []
        assert store.budget.used == 0
        gc.collect()
        assert not [o for o in gc.get_objects() if type(o).__name__ == "KVCache"]


STORE = f"""(module
{_imports("realm_store_model")}
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "store") (param i32 i32) (result i64) (call $realm_store_model (local.get 0) (local.get 1))))"""


def test_the_host_budget_caps_all_tenants_together(store):
    """Each tenant within its own quota, together over the host's budget: the one that would
    cross it gets LIMIT at once with the reason, and nothing it was refused stays counted."""
    data = store.tiny_path.read_bytes()
    probe = store.store_bytes(data)
    cost = store.get(probe).host_bytes  # a stored copy: its bytes and its parsed header
    store.remove(probe)
    shared = realm.ModelStore(budget=HostBudget(2 * cost + cost // 2))
    a, b = Tenant(shared, wat(STORE)), Tenant(shared, wat(STORE))
    for t in (a, b):
        t.call("grow", len(data) // PAGE + 1)
        t.memory.write(t.wasm_store, data, 0)
    assert a.call("store", 0, len(data)) > 0 and a.call("store", 0, len(data)) > 0
    assert shared.budget.used == 2 * cost
    assert b.call("store", 0, len(data)) == Err.LIMIT
    assert "budget" in b.host.last_error and b.host.stored_bytes == 0 and shared.budget.used == 2 * cost
    a.close()
    assert shared.budget.used == 0
    assert b.call("store", 0, len(data)) > 0 and shared.budget.used == cost
    b.close()
    assert shared.budget.used == 0 and len(shared) == 0
    shared.close()


def test_add_realm_imports_with_limits(store):
    """A program that brings its own linker and store gets the same caps through the host's
    limit() and run()."""
    engine = sandbox_engine()
    linker = wasmtime.Linker(engine)
    host = add_realm_imports(linker, store, limits=Limits(memory_bytes=2 << 20, deadline_s=0.2))
    wasm_store = wasmtime.Store(engine)
    host.limit(wasm_store)
    module = wasmtime.Module(engine, wat(HOG[:-1] + '\n  (func (export "spin") (loop $l (br $l))))'))
    exports = host.run(wasm_store, linker.instantiate, wasm_store, module).exports(wasm_store)
    assert host.run(wasm_store, exports["hog"], wasm_store) == (2 << 20) // (16 * PAGE) - 1
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        host.run(wasm_store, exports["spin"], wasm_store)
    assert time.monotonic() - t0 < 0.3
    host.close()
