"""`Tenant`: any WebAssembly program that imports `realm_*` functions, run under `Limits`.

    import realm

    store = realm.ModelStore()
    model_id = store.load("model.gguf")
    limits = realm.Limits(memory_bytes=64 << 20, deadline_s=5)
    with realm.Tenant(store, wasm_bytes, limits=limits, shared=[model_id]) as t:
        t.call("run", 42)            # raises realm.DeadlineExceeded past 5 s
        t.memory_size

Each tenant has its own Wasmtime store (its own linear memory) in realm's
sandbox engine (`realm.sandbox_engine()`), the realm imports bound to its own
`RealmHost` (its quotas, its models and KV caches), a capped memory, and a
deadline on every call.  The imports come from a linker the tenant holds alone
while it lives, reused by a later tenant once its store is closed
(`realm.host.LinkerLease`).  realm's own guest (`realm.Guest`) is one such
program.  A call that runs past its deadline or traps leaves the instance in
an unknown state: the tenant refuses further calls (close it and start a new
one).  Use a tenant from one thread at a time; run several to work in parallel.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import wasmtime
from wasmtime import _bindings
from wasmtime._extern import wrap_extern

from . import abi
from .errors import ArgumentTypeError, ClosedError, DeadlineExceeded, InvalidArgumentError
from .host import LinkerLease, RealmHost
from .limits import GuestTrapError, Limits, sandbox_engine
from .store import ModelStore

__all__ = ["Tenant", "MAX_MODULE_BYTES", "compile_module"]

#: Largest module a tenant may bring as bytes (compiling it is the host's work).
MAX_MODULE_BYTES = 32 << 20

_RANGES = {"i32": (-(1 << 31), 1 << 32), "i64": (-(1 << 63), 1 << 64)}


def compile_module(wasm: bytes | bytearray | memoryview) -> wasmtime.Module:
    """Compile wasm bytes (binary or text format) for realm's sandbox engine, once, to start
    many tenants from.  InvalidArgumentError if they are not a valid module."""
    if not isinstance(wasm, (bytes, bytearray, memoryview)):
        raise ArgumentTypeError(f"a module must be wasm bytes or a wasmtime.Module, not {type(wasm).__name__}")
    if len(wasm) > MAX_MODULE_BYTES:
        raise InvalidArgumentError(f"the module has {len(wasm)} bytes; a tenant may bring at most {MAX_MODULE_BYTES}")
    try:
        return wasmtime.Module(sandbox_engine(), bytes(wasm))
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InvalidArgumentError(f"not a valid WebAssembly module: {first}") from None


#: Modules whose imports passed `_check_imports` (a module's imports never change; a guest
#: starts from the same module for every request).
_CHECKED: "weakref.WeakSet[wasmtime.Module]" = weakref.WeakSet()
_CHECKED_LOCK = threading.Lock()


def _check_imports(module: wasmtime.Module) -> None:
    """Refuse, before instantiating, a module that imports what realm does not provide."""
    with _CHECKED_LOCK:
        if module in _CHECKED:
            return
    for imp in module.imports:
        sig = abi.IMPORTS.get(imp.name) if imp.module == abi.IMPORT_MODULE else None
        ty = imp.type
        if sig is None or not isinstance(ty, wasmtime.FuncType):
            raise InvalidArgumentError(f"the module imports {imp.module}::{imp.name}, which realm does not provide "
                                       f"(a tenant may import only {abi.IMPORT_MODULE}.realm_* functions)")
        if (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)) != (sig.params, sig.results):
            raise InvalidArgumentError(f"the module imports {imp.module}::{imp.name} with another signature than "
                                       f"realm_abi.h's ({' '.join(sig.params)}) -> ({' '.join(sig.results)})")
    with _CHECKED_LOCK:
        _CHECKED.add(module)


def _close(host: RealmHost, wasm_store: wasmtime.Store, lease: LinkerLease) -> None:
    host.close()
    wasm_store.close()
    lease.release()  # its instance went with the store


class _Exports(Mapping[str, Any]):
    """An instance's exports, each looked up by name when first asked for: wasmtime-py's
    `Instance.exports` wraps every one at once (guest.wasm's ~30, a call into Wasmtime each,
    each letting go of the GIL), about half of a guest's start when 16 start together."""

    def __init__(self, wasm_store: wasmtime.Store, instance: wasmtime.Instance):
        self._store, self._instance = wasm_store, instance
        self._found: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        found = self._found.get(name)
        if found is None:
            if not isinstance(name, str):
                raise KeyError(name)
            raw, item = name.encode(), _bindings.wasmtime_extern_t()
            if not _bindings.wasmtime_instance_export_get(self._store._context(), ctypes.byref(self._instance._instance),
                                                          ctypes.create_string_buffer(raw, len(raw)), len(raw),
                                                          ctypes.byref(item)):
                raise KeyError(name)
            found = self._found[name] = wrap_extern(item)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._instance.exports(self._store))

    def __len__(self) -> int:
        return len(self._instance.exports(self._store))


class Tenant:
    """One WebAssembly program that imports `realm_*` functions, with its limits.

    model_store: the `ModelStore` its imports serve (and whose `budget` it counts against).
    module: a `wasmtime.Module` compiled for `realm.sandbox_engine()` (see `compile_module`), or
        wasm bytes.  It may import only env.realm_* functions; it is instantiated at once, and
        its "_initialize" export (a WASI reactor's) is called if it has one and `initialize`.
    limits: the tenant's `Limits` (default `Limits()`).
    shared: ids of host-loaded models the program may read (see `RealmHost.share`).
    threads: threads of the forward pass its imports run (None: every usable core).
    initialize: False for a module whose memory image is initialized already (a `Guest`
        snapshot's: a reactor's _initialize may run once).
    """

    def __init__(self, model_store: ModelStore, module: wasmtime.Module | bytes, *, limits: Limits | None = None,
                 shared: Iterable[int] = (), threads: int | None = None, initialize: bool = True):
        if not isinstance(module, wasmtime.Module):
            module = compile_module(module)
        _check_imports(module)
        engine = sandbox_engine()
        self.models = model_store
        self.wasm_store = wasmtime.Store(engine)
        self.host = RealmHost(model_store, shared=shared, limits=limits, threads=threads)
        lease = LinkerLease(engine, self.host)
        self.limits: Limits = self.host.limits
        # a tenant never closed still lets go
        self._close = weakref.finalize(self, _close, self.host, self.wasm_store, lease)
        self._close.atexit = False  # not at the interpreter's exit: its guest may still run
        self._broken: str | None = None
        self._scope: float | None = None  # the deadline of an open `deadline()` block
        try:
            self.host.limit(self.wasm_store)
            instance = self._run(lease.linker.instantiate, self.wasm_store, module, what="instantiating the module")
            self.exports: Mapping[str, Any] = _Exports(self.wasm_store, instance)
            memory = self.exports.get("memory")
            self.memory: wasmtime.Memory | None = memory if isinstance(memory, wasmtime.Memory) else None
            if initialize and isinstance(self.exports.get("_initialize"), wasmtime.Func):
                self.call("_initialize")
        except BaseException:
            self.close()
            raise

    # -- calls ----------------------------------------------------------------------------
    def call(self, name: str, *args: int | float) -> Any:
        """Call the export `name` with wasm values (an i32 may be given as a u32, an i64 as a
        u64) under the deadline: the open `deadline()` block's, or limits.deadline_s from now.
        Raises DeadlineExceeded past it, GuestTrapError on a trap (after either the tenant
        refuses further calls), InvalidArgumentError for an unknown export or bad arguments."""
        if self._broken is not None:
            raise ClosedError(f"this tenant can no longer run: {self._broken}")
        func = self.exports.get(name) if isinstance(name, str) else None
        if not isinstance(func, wasmtime.Func):
            raise InvalidArgumentError(f"the module exports no function {name!r}")
        params = func.type(self.wasm_store).params
        if len(args) != len(params):
            raise InvalidArgumentError(f"{name} takes {len(params)} arguments, not {len(args)}")
        values = [_wasm_value(a, str(t), name) for a, t in zip(args, params)]
        return self._run(func, self.wasm_store, *values, what=name)

    @contextmanager
    def deadline(self, seconds: float | None = None) -> Iterator[None]:
        """`with tenant.deadline():` -- one deadline for every call in the block (e.g. the calls
        of one generation): `seconds` (default limits.deadline_s) from now, or an enclosing
        block's if that is sooner."""
        if seconds is None:
            seconds = self.limits.deadline_s
        elif isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise InvalidArgumentError(f"seconds must be a number > 0 or None, not {seconds!r}")
        outer = self._scope
        mine = None if seconds is None else time.monotonic() + seconds
        self._scope = mine if outer is None else (outer if mine is None else min(outer, mine))
        try:
            yield
        finally:
            self._scope = outer

    def _run(self, fn: Any, *args: Any, what: str) -> Any:
        try:  # the open block's deadline, else (None) limits.deadline_s from now
            return self.host.run(self.wasm_store, fn, *args, deadline=self._scope, what=what)
        except (DeadlineExceeded, GuestTrapError) as exc:
            self._broken = str(exc)
            raise

    # -- state ---------------------------------------------------------------------------
    @property
    def memory_size(self) -> int:
        """Bytes of the program's linear memory (0 when it exports none named "memory")."""
        if self.memory is None or not self._close.alive:
            return 0
        return self.memory.data_len(self.wasm_store)

    @property
    def closed(self) -> bool:
        return not self._close.alive

    @property
    def failed(self) -> str | None:
        """Why the tenant can no longer run (a deadline, a trap, close), or None while it can."""
        return self._broken

    def close(self) -> None:
        """End the tenant: its stored models leave the store, its KV caches are freed, the shared
        models are released, and its Wasmtime store (its memory) is dropped."""
        self._broken = self._broken or "it is closed"
        self._close()

    def __enter__(self) -> "Tenant":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wasm_value(value: Any, wasm_type: str, name: str) -> Any:
    """A Python value as the wasm value Wasmtime takes for `wasm_type` (u32/u64 as signed)."""
    span = _RANGES.get(wasm_type)
    if span is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArgumentTypeError(f"{name}: a {wasm_type} argument must be a number, not {type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}: an {wasm_type} argument must be an int, not {type(value).__name__}")
    low, high = span
    if not low <= value < high:
        raise InvalidArgumentError(f"{name}: {value} does not fit an {wasm_type}")
    bits = 32 if wasm_type == "i32" else 64
    return value - (1 << bits) if value >= 1 << (bits - 1) else value
