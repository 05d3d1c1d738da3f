"""Tenants under limits (realm.Limits, realm.Tenant, HostBudget, deadlines): third-party
WebAssembly programs (tests/attackers.py) that loop, hog memory, hammer imports, walk around
quotas or overrun the host's budget are stopped or refused, and a tenant beside them generates
what it generates alone."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import wasmtime

import realm
from attackers import (ATTACKS, HAMMER, HOG, PAGE, SPIN, STORE, TEMPLATE, WALKER, imports, keep_attacking,
                       nested_arrays_header, template_attack, wat)
from conftest import run_threads
from realm import abi
from realm.abi import Err
from realm.chat import ChatTemplate
from realm.errors import ClosedError, DeadlineExceeded, InvalidArgumentError, LimitExceeded, RealmError
from realm.host import add_realm_imports
from realm.limits import TICK_S, GuestTrapError, HostBudget, Limits, sandbox_engine
from realm.tenant import Tenant


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with a budget of 256 MiB and the tiny llama loaded (store.tiny, store.tiny_path)."""
    from gguf_helpers import write_tiny_llama  # gguf-py writes the model

    s = realm.ModelStore(budget=HostBudget(256 << 20))
    s.tiny_path = write_tiny_llama(tmp_path_factory.mktemp("sandbox") / "tiny.gguf")
    s.tiny = s.load(s.tiny_path)
    yield s
    s.close()


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


def test_the_interpreter_exits_with_a_tenant_hammering_imports(store):
    """A program that ends while a daemon thread's tenant still runs (calling imports in a loop
    that ignores their answers, with no deadline) exits at once and cleanly: at the
    interpreter's exit every guest's next import traps, and the exit waits for its call to end."""
    script = f"""
import threading, time, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import realm
from attackers import HAMMER, wat
store = realm.ModelStore()
tiny = store.load({str(store.tiny_path)!r})
t = realm.Tenant(store, wat(HAMMER), limits=realm.Limits(deadline_s=None), shared=[tiny])
ended = []
def run():
    try:
        t.call("hammer", tiny)
    except realm.RealmError as exc:
        ended.append(type(exc).__name__)
threading.Thread(target=run, daemon=True).start()
time.sleep(0.3)
print("exiting", flush=True)
"""
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "exiting\n", res.stderr[-3000:]
    assert time.monotonic() - t0 < 5  # stopped at its next import, not after the exit's 10 s wait


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


# A guest that faults three ways: `unreachable` (SIGILL), a load past its memory (SIGSEGV), a
# division by zero (SIGFPE on x86).
FAULTS = '''(module (memory 1)
  (func (export "unreachable") unreachable)
  (func (export "oob") (result i32) i32.const 700000 i32.load)
  (func (export "div") (param i32) (result i32) i32.const 1 local.get 0 i32.div_s))'''
EXPECTED_TRAPS = {"unreachable": "unreachable", "oob": "out of bounds memory access", "div": "divide by zero"}

# Replaces Wasmtime's handlers of SIGSEGV, SIGILL, SIGFPE and SIGBUS with SIG_DFL, as a library
# installing its own without chaining to them does; then the guest faults through `how`.
REPLACED_HANDLERS = '''
import ctypes, signal, sys
import realm, wasmtime
from realm.tenant import Tenant
how = sys.argv[1]
store = realm.ModelStore()
faults = {faults!r}.encode()
expected = {expected!r}
for fn in expected:  # the process's first engine installs Wasmtime's handlers: every fault traps
    with Tenant(store, faults) as t:
        try:
            t.call(fn, 0) if fn == "div" else t.call(fn)
        except realm.GuestTrapError as exc:
            assert expected[fn] in str(exc), exc
libc = ctypes.CDLL(None)
libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p]
for sig in (signal.SIGSEGV, signal.SIGILL, signal.SIGFPE, signal.SIGBUS):
    libc.signal(sig, None)
if how == "wasmtime":  # the guest run by Wasmtime without realm's check: the fault kills the process
    s = wasmtime.Store(realm.sandbox_engine())
    s.set_epoch_deadline(1 << 40)
    wasmtime.Instance(s, wasmtime.Module(s.engine, faults), []).exports(s)["unreachable"](s)
    print("survived")
    sys.exit(0)
try:
    Tenant(store, faults)
except realm.TrapHandlerError as exc:
    print("refused:", exc)
print("restored:", " ".join(sorted(realm.restore_trap_handlers())))
for fn in expected:
    with Tenant(store, faults) as t:
        try:
            t.call(fn, 0) if fn == "div" else t.call(fn)
        except realm.GuestTrapError as exc:
            print("trapped:", fn, expected[fn] in str(exc))
'''


def _replaced_handlers(how: str) -> subprocess.CompletedProcess:
    code = REPLACED_HANDLERS.format(faults=FAULTS, expected=EXPECTED_TRAPS)
    return subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Wasmtime traps through signals on Linux")
def test_a_guest_fault_with_replaced_trap_handlers_kills_an_unchecked_process():
    """What realm's check prevents: with Wasmtime's handlers replaced, a guest's fault is the
    death of the process."""
    run = _replaced_handlers("wasmtime")
    assert run.returncode == -signal.SIGILL and "survived" not in run.stdout, (run.returncode, run.stderr[-2000:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Wasmtime traps through signals on Linux")
def test_replaced_trap_handlers_are_refused_then_restored():
    """A library that replaces Wasmtime's trap handlers (Ray's driver at ray.init) gets no guest
    run: TrapHandlerError, until realm.restore_trap_handlers() puts them back; then every fault
    is a GuestTrapError again and the process lives."""
    run = _replaced_handlers("realm")
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("refused: the process's SIGSEGV, SIGILL, SIGFPE handlers are no longer Wasmtime's")
    assert lines[1] == "restored: SIGFPE SIGILL SIGSEGV"
    assert lines[2:] == [f"trapped: {fn} True" for fn in EXPECTED_TRAPS]


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


def test_a_tenants_exports_are_found_by_name(store):
    """Tenant.exports looks each export up when asked (not all at the start), and is still the
    mapping of all of them."""
    with Tenant(store, wat(SPIN)) as t:
        assert isinstance(t.exports["seven"], wasmtime.Func) and isinstance(t.exports["memory"], wasmtime.Memory)
        assert t.exports.get("nope") is None and "spin" in t.exports and "nope" not in t.exports
        assert sorted(t.exports) == ["memory", "seven", "spin"] and len(t.exports) == 3
        assert t.call("seven") == 7


def _stored(t: Tenant, data: bytes) -> int:
    """The STORE tenant t stores data through its import: the id its host answers."""
    t.call("grow", len(data) // PAGE + 1)
    t.memory.write(t.wasm_store, data, 0)
    return t.call("store", 0, len(data))


def test_a_closed_tenants_linker_serves_the_next_tenant_only(store):
    """Tenants reuse linkers (realm.host.LinkerLease: the imports defined once): a closed
    tenant's linker goes to the next tenant, whose import calls then reach its own host -- not
    the closed one's, which would refuse them -- while a tenant that lives keeps its own."""
    data = store.tiny_path.read_bytes()
    free = realm.host._LINKERS.setdefault(sandbox_engine(), [])
    a, b = Tenant(store, wat(STORE)), Tenant(store, wat(STORE))
    assert _stored(a, data) > 0 and a.host.stored_bytes > 0 and b.host.stored_bytes == 0
    a.close()
    kept = free[-1]
    c = Tenant(store, wat(STORE))
    assert all(entry is not kept for entry in free)  # c has a's linker
    assert _stored(c, data) > 0 and c.host.stored_bytes > 0
    assert _stored(b, data) > 0 and b.host.stored_bytes == c.host.stored_bytes
    for t in (b, c):
        t.close()
    assert len(store) == 1  # the tiny model; the tenants' stored copies went with them


def test_tenants_started_together_each_reach_their_own_host(store):
    """Tenants made and closed on 8 threads at once, 5 times each: every import call lands on
    the host of the tenant that made it (one stored copy each, none on another)."""
    data = store.tiny_path.read_bytes()

    def job() -> list[int]:
        charged = []
        for _ in range(5):
            with Tenant(store, wat(STORE)) as t:
                assert _stored(t, data) > 0
                charged.append(t.host.stored_bytes)
        return charged

    got = run_threads([job] * 8)
    cost = got[0][0]
    assert cost > 0 and all(c == cost for charged in got for c in charged)
    assert len(store) == 1


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


def test_a_tenant_under_attack_generates_as_alone(smollm2_path, store):
    """Issue 10: while attackers loop, hammer imports, hog memory, walk and hoard against the
    quotas, send a hostile header and a hostile chat template -- each restarted whenever realm
    stops it -- a tenant generating on one thread gets the same tokens as alone, and every
    attack ends the way its limit says."""
    limits = Limits(memory_bytes=64 << 20, deadline_s=0.5, stored_models=2)
    tiny = store.tiny_path.read_bytes()
    data = {"walker": tiny, "hoarder": tiny, "parser": nested_arrays_header(16 << 20)}
    with realm.Realm(threads=1, limits=Limits(deadline_s=120)) as rt:
        rt.load_model(smollm2_path)
        prompt = "The three primary colors are"
        alone = rt.complete(prompt, max_tokens=24, temperature=0, ignore_eos=True).tokens
        attacks = {name: lambda fn=fn, name=name: fn(store, store.tiny, data.get(name), limits)
                   for name, fn in ATTACKS.items()}
        attacks["template"] = lambda: template_attack(ChatTemplate(TEMPLATE, time_limit_s=limits.deadline_s))
        stop, outcomes = threading.Event(), {name: [] for name in attacks}
        workers = [threading.Thread(target=keep_attacking, args=(attack, stop, outcomes[name]))
                   for name, attack in attacks.items()]
        for w in workers:
            w.start()
        try:
            beside = rt.complete(prompt, max_tokens=24, temperature=0, ignore_eos=True).tokens
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
    assert beside == alone
    assert not any(w.is_alive() for w in workers)
    stopped = {"DeadlineExceeded"}
    for name, ended in {"spin": stopped, "hammer": stopped, "hog": {"capped"} | stopped,  # filling 64 MiB may
                        "walker": {"walked"}, "hoarder": {"refused (LIMIT)"},          # take the deadline
                        "parser": {"refused (BAD_GGUF)"}, "template": {"ChatTemplateError"}}.items():
        assert outcomes[name] and {o.ended_by for o in outcomes[name]} <= ended, (name, outcomes[name][:3])
    for o in outcomes["spin"] + outcomes["hammer"] + outcomes["template"]:
        assert o.seconds < limits.deadline_s + 0.1, o
    assert all(o.detail == limits.stored_models for o in outcomes["hoarder"])  # refused at its quota
    assert all(o.detail <= limits.memory_bytes for o in outcomes["hog"] if o.ended_by == "capped")
    assert all(o.detail == (16, 0) for o in outcomes["walker"])  # nothing kept after a walk
    assert store.budget.used == 0


def test_a_guest_cannot_flood_the_host_log(store, caplog):
    """realm_log takes REALM_LOG_CALLS_MAX messages a call into the guest, then answers LIMIT."""
    spam = wat(f"""(module
{imports("realm_log")}
  (memory (export "memory") 1)
  (data (i32.const 0) "spam")
  (func (export "spam") (param $n i32) (result i32) (local $rc i32)
    (loop $l
      (local.set $rc (call $realm_log (i32.const 1) (i32.const 0) (i32.const 4)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (local.get $rc)))""")
    with caplog.at_level("INFO", logger="realm.guest"), Tenant(store, spam) as t:
        assert t.call("spam", abi.LOG_CALLS_MAX) == abi.OK
        assert t.call("spam", abi.LOG_CALLS_MAX + 1) == Err.LIMIT
    assert len(caplog.records) == 2 * abi.LOG_CALLS_MAX
