"""Hostile tenants, for tests/test_sandbox.py and benchmarks/isolation.py.

Each attack is a WebAssembly program written in WAT (or a hostile chat template) and a function
`attack(store, model_id, data, limits) -> Outcome` that runs it once as a `realm.Tenant` until
realm stops or refuses it.  `data` is a GGUF file's bytes for the attacks that store models.
"""

from __future__ import annotations

import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import wasmtime

from realm import abi
from realm.abi import Err
from realm.chat import ChatTemplate, ChatTemplateError
from realm.errors import DeadlineExceeded
from realm.limits import Limits
from realm.store import ModelStore
from realm.tenant import Tenant

PAGE = 65536


def imports(*names: str) -> str:
    """WAT import lines for realm_* functions, each named $<name>."""
    return "\n".join(f'  (import "env" "{n}" (func ${n} (param {" ".join(abi.IMPORTS[n].params)}) '
                     f'(result {" ".join(abi.IMPORTS[n].results)})))' for n in names)


def every_import_wat(pages: int = 1, *, export_memory: bool = True) -> str:
    """A module that imports every realm_* function and exports each as call_<name>, with
    `pages` of memory (exported as "memory" unless told not to) and grow(pages) -> old size:
    a guest whose every import call the test makes itself."""
    sigs = abi.IMPORTS.items()
    calls = [f'  (func (export "call_{n}") (param {" ".join(s.params)}) (result {" ".join(s.results)}) '
             f'(call ${n} {" ".join(f"(local.get {i})" for i in range(len(s.params)))}))' for n, s in sigs]
    memory = f'(memory (export "memory") {pages})' if export_memory else f"(memory {pages})"
    return "\n".join(["(module", imports(*abi.IMPORTS), f"  {memory}", *calls,
                      '  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))'])


def documented_codes() -> dict[str, frozenset[Err]]:
    """Import -> the Err codes its contract in guest/realm_abi.h lists after "Returns" (any import
    may also answer DEADLINE, past a deadline)."""
    header = (Path(__file__).resolve().parents[1] / "guest" / "realm_abi.h").read_text()
    pattern = re.compile(r"/\*((?:(?!\*/).)*)\*/\s*REALM_IMPORT\(\s*[^,]+,\s*(\w+)", re.S)
    codes = {name: frozenset(Err[w] for w in re.findall(r"\b[A-Z][A-Z0-9_]+\b", comment.split("Returns")[-1])
                             if w in Err.__members__)
             for comment, name in pattern.findall(header)}
    assert set(codes) == set(abi.IMPORTS), sorted(set(abi.IMPORTS) ^ set(codes))
    return codes


def wat(text: str) -> bytes:
    return wasmtime.wat2wasm(text)


SPIN = """(module (memory (export "memory") 1)
  (func (export "spin") (loop $l (br $l)))
  (func (export "seven") (result i32) (i32.const 7)))"""

# grows by 1 MiB until memory.grow fails, writing every page it gets; returns the steps taken
HOG = """(module (memory (export "memory") 1)
  (func (export "hog") (result i32) (local $n i32) (local $at i32)
    (block $full (loop $more
      (local.set $at (memory.grow (i32.const 16)))
      (br_if $full (i32.eq (local.get $at) (i32.const -1)))
      (memory.fill (i32.mul (local.get $at) (i32.const 65536)) (i32.const 255) (i32.const 1048576))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $more)))
    (local.get $n)))"""

# calls a cheap import forever: only the deadline ends it
HAMMER = f"""(module
{imports("realm_get_model_info")}
  (memory (export "memory") 1)
  (func (export "hammer") (param $m i64)
    (loop $l (drop (call $realm_get_model_info (local.get $m) (i32.const 0) (i32.const 8))) (br $l))))"""

# issue 10's quota walk: store a model from guest memory, make a KV cache of it, remove the model;
# returns the first failing code, or the rounds done
WALKER = f"""(module
{imports("realm_store_model", "realm_kv_create", "realm_remove_model")}
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

# store -> kv_create, keeping everything, until the host refuses; returns the refusal's code
HOARDER = f"""(module
{imports("realm_store_model", "realm_kv_create")}
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "hoard") (param $ptr i32) (param $len i32) (result i32)
    (local $id i64) (local $kv i32)
    (loop $l
      (local.set $id (call $realm_store_model (local.get $ptr) (local.get $len)))
      (if (i64.lt_s (local.get $id) (i64.const 0)) (then (return (i32.wrap_i64 (local.get $id)))))
      (local.set $kv (call $realm_kv_create (local.get $id) (i32.const 64)))
      (if (i32.lt_s (local.get $kv) (i32.const 0)) (then (return (local.get $kv))))
      (br $l))
    (i32.const 0)))"""

# stores whatever its memory holds
STORE = f"""(module
{imports("realm_store_model")}
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "store") (param i32 i32) (result i64) (call $realm_store_model (local.get 0) (local.get 1))))"""

# 10^10 iterations of nothing, then 2^40 bytes of text: a chat template from a hostile GGUF
TEMPLATE = ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
            "{{ ns.s }}")


def nested_arrays_header(nbytes: int) -> bytes:
    """A GGUF header of nbytes that is one array of empty arrays (issue 10: 16 MiB of them cost
    3.6 s and +231 MiB to parse)."""
    count = (nbytes - 64) // 12
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9)
            + struct.pack("<IQ", 9, count) + struct.pack("<IQ", 0, 0) * count)


@dataclass(frozen=True)
class Outcome:
    """How one attack ended: what stopped it, after how long, and what it got."""

    ended_by: str       # the exception's class name, "refused (CODE)", "capped", "walked"
    seconds: float
    detail: object = None


def _loaded(store: ModelStore, wasm: bytes, limits: Limits, data: bytes | None = None, **kw: object) -> Tenant:
    """A tenant of `wasm` with `data` (if any) at address 0 of its memory."""
    t = Tenant(store, wasm, limits=limits, **kw)
    if data is not None:
        t.call("grow", len(data) // PAGE + 1)
        t.memory.write(t.wasm_store, data if isinstance(data, bytearray) else bytearray(data), 0)
    return t


def spin(store: ModelStore, model_id: int, data: bytes, limits: Limits) -> Outcome:
    """A guest that never returns: stopped by its deadline."""
    with Tenant(store, wat(SPIN), limits=limits) as t:
        t0 = time.monotonic()
        try:
            t.call("spin")
        except DeadlineExceeded:
            return Outcome("DeadlineExceeded", time.monotonic() - t0)
    raise AssertionError("a spinning guest returned")


def hammer(store: ModelStore, model_id: int, data: bytes, limits: Limits) -> Outcome:
    """A guest that calls an import in a loop forever: stopped by its deadline."""
    with Tenant(store, wat(HAMMER), limits=limits, shared=[model_id]) as t:
        t0 = time.monotonic()
        try:
            t.call("hammer", model_id)
        except DeadlineExceeded:
            return Outcome("DeadlineExceeded", time.monotonic() - t0)
    raise AssertionError("a hammering guest returned")


def hog(store: ModelStore, model_id: int, data: bytes, limits: Limits) -> Outcome:
    """A guest that grows and fills its memory until it can grow no more: capped."""
    with Tenant(store, wat(HOG), limits=limits) as t:
        t0 = time.monotonic()
        t.call("hog")
        return Outcome("capped", time.monotonic() - t0, t.memory_size)


def walker(store: ModelStore, model_id: int, data: bytes, limits: Limits, rounds: int = 16) -> Outcome:
    """store -> kv_create -> remove, `rounds` times: each round frees what it made, so the walk
    ends with nothing kept (detail: what the tenant still counts)."""
    with _loaded(store, wat(WALKER), limits, data) as t:
        t0 = time.monotonic()
        done = t.call("walk", 0, len(data), rounds)
        kept = t.host.kv_bytes + t.host.stored_bytes
        ended = "walked" if done == rounds else f"refused ({Err(done).name})"
        return Outcome(ended, time.monotonic() - t0, (done, kept))


def hoarder(store: ModelStore, model_id: int, data: bytes, limits: Limits) -> Outcome:
    """store -> kv_create without ever removing: refused at its quota (detail: what it keeps)."""
    with _loaded(store, wat(HOARDER), limits, data) as t:
        t0 = time.monotonic()
        code = t.call("hoard", 0, len(data))
        return Outcome(f"refused ({Err(code).name})", time.monotonic() - t0, len(t.host.owned_models))


def parser(store: ModelStore, model_id: int, data: bytes, limits: Limits, rounds: int = 16) -> Outcome:
    """realm_store_model of a header built to make the host's parser slow and fat, `rounds` times
    (the data written into the guest once): each refused (detail: the last code)."""
    with _loaded(store, wat(STORE), limits, data) as t:
        t0 = time.monotonic()
        codes = {t.call("store", 0, len(data)) for _ in range(rounds)}
        code = max(codes)  # a success, if any
        return Outcome(f"refused ({Err(code).name})" if code < 0 else "stored", time.monotonic() - t0, code)


def template_attack(template: ChatTemplate) -> Outcome:
    """A render of a hostile chat template (TEMPLATE): cut off by its time limit."""
    t0 = time.monotonic()
    try:
        template.render([{"role": "user", "content": "hi"}])
    except ChatTemplateError as exc:
        return Outcome(type(exc).__name__, time.monotonic() - t0)
    raise AssertionError("the hostile template rendered")


ATTACKS: dict[str, Callable[..., Outcome]] = {"spin": spin, "hammer": hammer, "hog": hog, "walker": walker,
                                              "hoarder": hoarder, "parser": parser}


def keep_attacking(attack: Callable[[], Outcome], stop: threading.Event, outcomes: list[Outcome]) -> None:
    """Run `attack` again each time realm stops it, until `stop` is set; any other exception
    is recorded as the outcome's detail."""
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            outcomes.append(attack())
        except Exception as exc:  # recorded: the caller asserts on what ended each attack
            outcomes.append(Outcome(type(exc).__name__, time.monotonic() - t0, exc))
