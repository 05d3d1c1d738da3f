"""The host side of the realm ABI: the `realm_*` imports, bound to a model store.

Embedding realm guests in your own Wasmtime program takes one call, plus the
limits if the guest is not trusted (see `realm.Tenant` for all of it in one)::

    engine = realm.sandbox_engine()           # epoch interruption, ticked by realm
    linker = wasmtime.Linker(engine)
    host = add_realm_imports(linker, store, shared=[model_id], limits=realm.Limits(deadline_s=10))
    wasm_store = wasmtime.Store(engine)
    host.limit(wasm_store)                    # the memory cap, and a deadline to instantiate
    instance = host.run(wasm_store, linker.instantiate, wasm_store, module)
    host.run(wasm_store, instance.exports(wasm_store)["main"], wasm_store)   # under the deadline
    host.close()   # removes the models the guest stored, releases the shared ones

Each import is one method of `RealmHost` named after it and registered with
`@_realm_import`; its signature is `realm.abi.IMPORTS[name]` and its contract
is written in `guest/realm_abi.h`.  Every import validates what the guest
passes -- ids, (pointer, length) pairs against the guest's *current* memory,
names, buffer sizes -- and answers a failure with its negative `Err` code.  An
import never raises into Wasmtime (that would trap the guest), and never reads
or writes guest memory outside the buffer it was given.

The imports are defined with Wasmtime's unchecked C callbacks through realm's own
trampoline (realm/_imports.pxi), not wasmtime-py's Python one: it finds the
caller's memory with the C API and calls the import with plain ints, about a fifth
of what wasmtime-py's trampoline alone costs a call.

Bounds arithmetic: the trampoline reads each i32 argument as u32, once, into a
Python int; every size derived from them -- counts times 4, rows times n_embd --
is computed on unbounded Python ints and checked against the memory as it is,
never masked or cast back to 32 bits.

Adding an import: declare it in guest/realm_abi.h (REALM_IMPORT line, contract
and codes in check order), add its signature to `realm.abi.IMPORTS`, and write
the `RealmHost` method of that name under `@_realm_import`, raising `_Fail(code)`
for each refusal.  tests/test_abi_header.py fails until all three agree.

A `RealmHost` is one tenant.  Models the guest stores are owned by it (it may
remove them; `close` removes the rest); models the host shares (`shared=` or
`share()`) are held for the tenant until `close` and cannot be removed by it;
any other id is NO_MODEL to this guest.  KV caches (realm_kv_create) belong to
the guest that made them and are freed by `close` too, or when the guest
removes their model.  What the tenant keeps alive -- its stored models (their
bytes and parsed headers) and its KV caches -- counts against its `Limits` and
against the store's `HostBudget`, shared by all tenants.

The forward imports (realm_forward_*) run csrc/forward.c on the guest's memory
in place: after the bounds checks, the C code reads the tokens or hidden states
and writes its output through the memory's base address -- no copies through
Python -- and releases the GIL while it computes.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import wasmtime

from . import _native, abi
from .abi import Err, LogLevel
from .errors import (ArgumentTypeError, BusyError, ClosedError, DeadlineExceeded, GGUFError, InternalError,
                     ModelNotFoundError)
from ._native import FORWARD_EINVAL, FORWARD_EKV_FULL
from .batching import DEADLINE, WITHDRAWN, Engine, engine_for, release_engine
from .forward import KVCache, UnsupportedModelError
from .limits import DEFAULT_LIMITS, HostBudget, Limits, remaining_ticks, run_wasm
from .store import ModelStore, StoredModel

__all__ = ["RealmHost", "GuestMemory", "add_realm_imports", "TokenLogprob", "TOP_LOGPROBS_MAX"]

log = logging.getLogger("realm.host")
guest_log = logging.getLogger("realm.guest")

_U32_MASK = 0xFFFF_FFFF
_I32_MAX = 0x7FFF_FFFF
_LOG_LEVELS = {LogLevel.DEBUG: logging.DEBUG, LogLevel.INFO: logging.INFO,
               LogLevel.WARNING: logging.WARNING, LogLevel.ERROR: logging.ERROR}
_VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}

_KV_IDS = itertools.count(1)  # KV cache ids are never reused within a process

# wasmtime_linker_define_func_unchecked(linker, module, len, name, len, type, callback, env,
# finalizer) -> wasmtime_error_t *, from wasmtime-py's library (set up by _trampoline()).
_DEFINE_UNCHECKED = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                     ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p)
_TRAMPOLINE: tuple[Any, int, int] | None = None  # (define_unchecked, callback, finalizer)


def _trampoline() -> tuple[Any, int, int]:
    """realm/_imports.pxi's C trampoline, wired to the Wasmtime that wasmtime-py loaded."""
    global _TRAMPOLINE
    if _TRAMPOLINE is None:
        from wasmtime import _bindings, _ffi, _func

        def on_exception(exc: BaseException) -> None:  # what wasmtime-py's own trampoline does:
            _func.LAST_EXCEPTION = exc  # the guest traps, and wasmtime-py's call raises exc

        names = ("wasmtime_caller_context", "wasmtime_caller_export_get", "wasmtime_memory_data",
                 "wasmtime_memory_data_size", "wasmtime_context_set_epoch_deadline", "wasmtime_trap_new",
                 "wasmtime_extern_delete", "wasmtime_linker_define_func_unchecked")
        fns = {name: ctypes.cast(getattr(_ffi.dll, name), ctypes.c_void_p).value for name in names}
        extern = _bindings.wasmtime_extern_t
        _native.wasmtime_api(fns, ctypes.sizeof(extern), extern.of.offset, _ffi.WASMTIME_EXTERN_MEMORY.value,
                             int(Err.DEADLINE), on_exception)
        callback, finalizer = _native.import_trampoline()
        _TRAMPOLINE = (_DEFINE_UNCHECKED(fns["wasmtime_linker_define_func_unchecked"]), callback, finalizer)
    return _TRAMPOLINE


#: The imports' FuncTypes by engine (a type's first use ties it to that engine), made once:
#: Wasmtime copies a definition's type, so one serves every linker of the engine.
_FUNC_TYPES: "weakref.WeakKeyDictionary[wasmtime.Engine, dict[abi.Signature, wasmtime.FuncType]]" = \
    weakref.WeakKeyDictionary()
_FUNC_TYPES_LOCK = threading.Lock()


def _define_import(linker: wasmtime.Linker, name: str, call: Callable[..., int], sig: abi.Signature) -> None:
    """Define call as the import abi.IMPORT_MODULE.name of signature sig in linker, through the C
    trampoline (integer parameters and one integer result)."""
    if not set(sig.params) <= {"i32", "i64"} or sig.results not in (("i32",), ("i64",)):
        raise InternalError(f"the import trampoline takes integers only, not {name}{sig}")
    with _FUNC_TYPES_LOCK:
        types = _FUNC_TYPES.setdefault(linker.engine, {})
        ty = types.get(sig)
        if ty is None:
            ty = types[sig] = wasmtime.FuncType([_VALTYPES[t]() for t in sig.params],
                                                [_VALTYPES[t]() for t in sig.results])
    define, callback, finalizer = _trampoline()
    module, fname = abi.IMPORT_MODULE.encode(), name.encode()
    env = _native.import_env(call, tuple(t == "i64" for t in sig.params), sig.results == ("i64",))
    error = define(ctypes.cast(linker.ptr(), ctypes.c_void_p), module, len(module), fname, len(fname),
                   ctypes.cast(ty.ptr(), ctypes.c_void_p), callback, env, finalizer)
    if error:  # Wasmtime dropped the definition, and with it env (the finalizer ran)
        raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(wasmtime._bindings.wasmtime_error_t)))


def _define_imports(linker: wasmtime.Linker, bind: Callable[[str, Callable[..., int]], Callable[..., int]]) -> None:
    """Define every import of `abi.IMPORTS` in linker, each as bind(name, method) calls it."""
    missing = set(abi.IMPORTS) - set(_IMPORTS)
    if missing:
        raise InternalError(f"realm.host implements no {sorted(missing)}")
    for name, sig in abi.IMPORTS.items():
        _define_import(linker, name, bind(name, _IMPORTS[name]), sig)


class _Slot:
    """The host whose calls a pooled linker's imports serve: one tenant's, or None between two."""

    __slots__ = ("host",)

    def __init__(self, host: RealmHost | None = None) -> None:
        self.host = host

    def bind(self, name: str, method: Callable[..., int]) -> Callable[..., int]:
        """The import as the C trampoline calls it: fn(base, size, *args) with the guest's
        memory and the arguments as ints (an i32 read as u32, once); its int result expires
        the guest's epoch deadline when it is DEADLINE (see realm/_imports.pxi)."""

        def call(base: int, size: int, *args: int) -> int:
            host = self.host
            if host is None:  # no instance of a released linker is left to call (see LinkerLease)
                return int(Err.INTERNAL)
            return host._serve(name, method, base, size, args)
        call.__name__ = name
        return call


#: Linkers with the imports defined, free for the next tenant, by engine (see LinkerLease).
_LINKERS: "weakref.WeakKeyDictionary[wasmtime.Engine, list[tuple[wasmtime.Linker, _Slot]]]" = \
    weakref.WeakKeyDictionary()
_LINKERS_LOCK = threading.Lock()
#: Free linkers kept per engine (one a tenant that runs at once; more are dropped on release).
_LINKERS_KEPT = 64


class LinkerLease:
    """A linker of `engine` whose imports serve `host` until `release`.  Defining the ~30 imports
    was most of a tenant's start, and tenants starting together waited on each other in
    Wasmtime's definitions; so linkers are kept and reused, each serving one tenant at a time:
    the imports find their host through a slot, set here and cleared by `release`, which the
    tenant calls once its Wasmtime store (every instance the linker made for it) is gone."""

    def __init__(self, engine: wasmtime.Engine, host: RealmHost):
        with _LINKERS_LOCK:
            free = _LINKERS.setdefault(engine, [])
            entry = free.pop() if free else None
        if entry is None:
            slot = _Slot()
            linker = wasmtime.Linker(engine)
            _define_imports(linker, slot.bind)
            entry = (linker, slot)
        self.linker, self._slot, self._free = entry[0], entry[1], free
        self._slot.host = host

    def release(self) -> None:
        """The tenant's store is closed: the linker may serve the next tenant."""
        slot, self._slot = self._slot, None
        if slot is None:
            return
        slot.host = None
        with _LINKERS_LOCK:
            if len(self._free) < _LINKERS_KEPT:
                self._free.append((self.linker, slot))


#: Most alternatives a token's log probabilities list (OpenAI's top_logprobs bound).
TOP_LOGPROBS_MAX = 20


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log probability under the model (the log-softmax of its logits, before
    penalties, temperature or truncation), and the `top` most likely tokens with theirs."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprob(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    """log-softmax of the logits in float64 at `token`, and its k largest (ties: lower id first)."""
    x = logits.astype(np.float64)
    top = float(np.max(x))
    lse = top + float(np.log(np.sum(np.exp(x - top))))
    best: list[tuple[int, float]] = []
    if k:
        k = min(k, len(x))
        kth = np.partition(x, len(x) - k)[len(x) - k]  # the k-th largest value
        above = np.flatnonzero(x > kth)
        ids = np.concatenate([above, np.flatnonzero(x == kth)[:k - len(above)]])
        best = [(int(i), float(x[i] - lse)) for i in sorted(ids.tolist(), key=lambda i: (-x[i], i))]
    return TokenLogprob(token, float(x[token] - lse), best)


class _Fail(Exception):
    """Raised inside an import to answer the guest with `code`."""

    def __init__(self, code: Err):
        super().__init__(code)
        self.code = code


class GuestMemory:
    """The calling guest's linear memory as it is during one import call: `base`, the address
    of its byte 0, and `size` in bytes (both 0 for a guest that exports no memory named
    "memory", which has no valid pointers).

    `check` accepts [ptr, ptr + length) only inside that size.  Both are non-negative
    Python integers (u32 values, or sizes computed from them), which do not wrap, so
    ptr + length cannot overflow.
    """

    __slots__ = ("base", "size")

    def __init__(self, base: int, size: int):
        self.base = base if size else 0
        self.size = size

    def check(self, ptr: int, length: int) -> int:
        """ptr, once [ptr, ptr + length) is known to lie in memory; else BAD_POINTER."""
        if ptr < 0 or length < 0:
            raise InternalError(f"GuestMemory.check({ptr}, {length}): spans are never negative")
        if ptr + length > self.size:
            raise _Fail(Err.BAD_POINTER)
        return ptr

    def read(self, ptr: int, length: int) -> bytes:
        """A copy of a range `check` accepted."""
        return ctypes.string_at(self.base + ptr, length) if length else b""

    def view(self, ptr: int, length: int) -> np.ndarray:
        """A read-only uint8 array over a range `check` accepted: valid during this call only
        (the memory may move when it grows)."""
        return np.asarray(_Span(self.base + ptr, length, True)) if length else np.empty(0, np.uint8)

    def floats(self, ptr: int, rows: int, width: int) -> np.ndarray:
        """A writable float32 array [rows, width] over a range `check` accepted (and 4-aligned):
        valid during this call only."""
        return np.asarray(_Span(self.base + ptr, 4 * rows * width, False)).view(np.float32).reshape(rows, width)

    def write(self, ptr: int, data: bytes | np.ndarray) -> None:
        """Write into a range `check` accepted (and the caller sized)."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data)
            if data.nbytes:
                ctypes.memmove(self.base + ptr, data.ctypes.data, data.nbytes)
        elif data:
            ctypes.memmove(self.base + ptr, data, len(data))


class _Span:
    """numpy's array interface over raw memory: an array view without a ctypes array type (ctypes
    would cache one type for every length a guest ever passes)."""

    __slots__ = ("__array_interface__",)

    def __init__(self, address: int, length: int, readonly: bool):
        self.__array_interface__ = {"data": (address, readonly), "shape": (length,), "typestr": "|u1",
                                    "version": 3}


_IMPORTS: dict[str, Callable[..., int]] = {}


def _realm_import(method: Callable[..., int]) -> Callable[..., int]:
    """Register a RealmHost method as the host side of the import of the same name."""
    if method.__name__ not in abi.IMPORTS:
        raise InternalError(f"{method.__name__} is not an import of realm_abi.h")
    _IMPORTS[method.__name__] = method
    return method


@dataclass
class _Kv:
    """A guest's KV cache: the cache, its model and engine, the bytes it counts, and the token
    ids at its positions 0..known-1 for the prefix cache (known -1: unknown, the guest ran
    layers on hidden states it made itself)."""

    cache: KVCache
    model_id: int
    nbytes: int
    engine: Engine
    history: np.ndarray
    known: int = 0


#: Every RealmHost alive, for the interpreter's exit (`stop_all`).
_HOSTS: "weakref.WeakSet[RealmHost]" = weakref.WeakSet()
_stopping = False  # set by stop_all: hosts made from then on start expired


def stop_all(until: float) -> None:
    """At the interpreter's exit: every guest of the process past its deadline for good (see
    `RealmHost.expire`; those of hosts made later too), then wait, until time.monotonic()
    reaches `until`, for the calls into them still running (`RealmHost.run`'s), so that none
    runs into the interpreter's teardown."""
    global _stopping
    _stopping = True
    hosts = list(_HOSTS)
    for host in hosts:
        host.expire()
    while any(host.calls for host in hosts) and time.monotonic() < until:
        time.sleep(0.005)


class RealmHost:
    """The `realm_*` imports for one guest (tenant), bound to a `ModelStore`.

    store: where models live; tensors come through its LayerCache, and its `budget` caps what
        all its tenants together keep alive.
    shared: ids of host-loaded models this guest may read (see `share`).
    limits: the tenant's `Limits` (default `Limits()`): its quotas of stored models and KV
        caches are enforced here; the memory cap and the deadline by `limit` and `run`.
    threads: threads of the forward pass (None: every core this process may use).
    """

    def __init__(self, store: ModelStore, *, shared: Iterable[int] = (), limits: Limits | None = None,
                 threads: int | None = None):
        if limits is not None and not isinstance(limits, Limits):
            raise ArgumentTypeError(f"limits must be a realm.Limits, not {type(limits).__name__}")
        self.store = store
        self.limits: Limits = limits or DEFAULT_LIMITS
        self.threads = threads
        #: time.monotonic() after which every import answers DEADLINE (set by `run`; None: none)
        self.deadline: float | None = None
        self.expired = _stopping  # set by `expire`: past the deadline for good
        self.calls = 0  # `run` calls in progress
        _HOSTS.add(self)
        #: the last message the guest logged at REALM_LOG_ERROR, or the reason of the host's
        #: last LIMIT answer (the why behind an error code)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._owned: dict[int, int] = {}  # model id -> bytes it counts
        self._owned_bytes = 0
        self._shared: set[int] = set()
        self._closed = False
        # model id -> its shared Engine (or the UnsupportedModelError it raised); only visible models
        self._forward: dict[int, Engine | UnsupportedModelError] = {}
        #: prompt tokens whose KV rows came from the prefix cache
        self.cached_tokens = 0
        #: with `logprobs` set, one `TokenLogprob` per token the guest forwards after sampling it
        self.token_logprobs: list[TokenLogprob] = []
        self._last_logits: np.ndarray | None = None  # the logits the guest samples its next token from
        self._kv: dict[int, _Kv] = {}
        self._kv_bytes = 0
        #: a budget the guest's KV caches are charged to as well, shared with other guests (one
        #: tenant's requests: Realm's tenant_kv_bytes); set before the guest runs
        self.kv_budget: HostBudget | None = None
        self._logged = 0  # realm_log calls during the current `run` (abi.LOG_CALLS_MAX)
        for model_id in shared:
            self.share(model_id)

    # -- the host's API -------------------------------------------------------------
    def define(self, linker: wasmtime.Linker) -> "RealmHost":
        """Define every import of `abi.IMPORTS` in `linker` (module "env"), bound to this host."""
        _define_imports(linker, _Slot(self).bind)
        return self

    def limit(self, wasm_store: wasmtime.Store) -> None:
        """Apply the tenant's memory cap to the Wasmtime store its guest runs in (see
        `Limits.apply`), and give it an epoch deadline of deadline_s from now (stores of a
        `realm.sandbox_engine()` run no wasm without one)."""
        self.limits.apply(wasm_store)
        wasm_store.set_epoch_deadline(remaining_ticks(self._deadline_from_now()))

    def run(self, wasm_store: wasmtime.Store, fn: Callable[..., Any], *args: Any,
            deadline: float | None = None, what: str = "the guest") -> Any:
        """fn(*args) -- a call into the guest, or its instantiation -- under a deadline: `deadline`
        (a time.monotonic() value) or else limits.deadline_s from now.  The guest's wasm is
        interrupted past it (in a store of a `realm.sandbox_engine()`) and the imports it calls
        answer DEADLINE.  Raises DeadlineExceeded, GuestTrapError (any other trap) or
        LimitExceeded (a module too large for the memory cap)."""
        if deadline is None:
            deadline = self._deadline_from_now()
        if self.expired:
            deadline = time.monotonic()
        self.deadline = deadline
        self._logged = 0
        self.calls += 1
        try:
            return run_wasm(wasm_store, deadline, fn, *args, what=what)
        finally:
            self.deadline = None
            self.calls -= 1

    def expire(self) -> None:
        """Stop the guest for good (from any thread): the next import it calls traps, and later
        calls into it stop at once, with DeadlineExceeded.  A trap, not a DEADLINE answer: a
        guest may ignore an answer, and an epoch deadline set during an import takes effect only
        once the one its code has cached passes.  (Wasm that calls no import runs on to its own
        deadline.)"""
        self.expired = True

    def _deadline_from_now(self) -> float | None:
        d = self.limits.deadline_s
        return None if d is None else time.monotonic() + d

    def share(self, model_id: int) -> None:
        """Let the guest read a host-loaded model; it stays readable for the guest until `close`,
        even if the host removes it from the store meanwhile.  Raises ModelNotFoundError."""
        with self._lock:
            if self._closed:
                raise ClosedError("this RealmHost is closed")
            if model_id in self._shared or model_id in self._owned:
                return
            self.store.retain(model_id)
            self._shared.add(model_id)

    @property
    def owned_models(self) -> list[int]:
        """Ids of the models this guest stored and has not removed."""
        with self._lock:
            return sorted(self._owned)

    @property
    def shared_models(self) -> list[int]:
        with self._lock:
            return sorted(self._shared)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the guest's KV caches."""
        return self._kv_bytes

    @property
    def stored_bytes(self) -> int:
        """Host bytes the guest's stored models keep alive (their bytes and parsed headers)."""
        return self._owned_bytes

    def close(self) -> None:
        """Remove the models the guest stored, release the shared ones and free the guest's KV
        caches.  Afterwards every model id is NO_MODEL to the guest and realm_store_model and
        realm_kv_create answer LIMIT."""
        with self._lock:
            self._closed = True
            owned, shared = list(self._owned), list(self._shared)
            self._owned.clear()
            self._shared.clear()
            released, kv_released = self._owned_bytes + self._kv_bytes, self._kv_bytes
            self._owned_bytes = self._kv_bytes = 0
            forward = list(self._forward.values())
            self._forward.clear()
            self._kv.clear()
        self._release(released, kv_released)
        for engine in forward:
            if isinstance(engine, Engine):
                engine.leave(self)  # waits out a pass that writes into this guest's memory
                release_engine(engine)
        for model_id in owned:
            try:
                self.store.remove(model_id)
            except ModelNotFoundError:  # the host removed it already
                pass
        for model_id in shared:
            try:
                self.store.release(model_id)
            except ModelNotFoundError:  # the store was closed
                pass

    # -- plumbing ---------------------------------------------------------------
    def _serve(self, name: str, method: Callable[..., int], base: int, size: int, args: tuple[int, ...]) -> int:
        """One call of an import, for its C trampoline (see `_Slot.bind`)."""
        if self.expired:  # a trap: the guest's code never runs on (see `expire`)
            raise DeadlineExceeded("the guest was stopped (the interpreter is exiting)")
        deadline = self.deadline
        if deadline is not None and time.monotonic() > deadline:
            return int(Err.DEADLINE)  # the guest traps once its epoch deadline passes
        try:
            return method(self, GuestMemory(base, size), *args)
        except _Fail as fail:
            return int(fail.code)
        except Exception:  # a host bug must not trap the guest, nor reach Wasmtime
            log.exception("realm import %s%r failed", name, args)
            return int(Err.INTERNAL)

    def _refuse(self, reason: str) -> _Fail:
        """LIMIT, with the reason kept for the error the caller of the guest sees."""
        self.last_error = reason
        log.info("tenant refused: %s", reason)
        return _Fail(Err.LIMIT)

    def _charge(self, what: str, nbytes: int, used: int, quota: int, count: int, max_count: int) -> None:
        """Reserve nbytes for the tenant (needs self._lock): within its quota of bytes and of
        objects, and within the store's budget.  Raises LIMIT naming what was refused."""
        if self._closed:
            raise self._refuse("the tenant is closed")
        if count >= max_count:
            raise self._refuse(f"{what}: the tenant's quota of {max_count} is reached")
        if used + nbytes > quota:
            raise self._refuse(f"{what}: {nbytes} more bytes would pass the tenant's quota of {quota} "
                               f"({used} in use)")
        if not self.store.budget.reserve(nbytes):
            b = self.store.budget
            raise self._refuse(f"{what}: {nbytes} more bytes would pass the host's budget of {b.max_bytes} "
                               f"({b.used} in use by all tenants)")

    def _release(self, nbytes: int, kv_bytes: int = 0) -> None:
        """Give back bytes `_charge` took, kv_bytes of them KV caches (also in kv_budget)."""
        self.store.budget.release(nbytes)
        if self.kv_budget is not None and kv_bytes:
            self.kv_budget.release(kv_bytes)

    def _model(self, model_id: int) -> StoredModel:
        with self._lock:
            visible = model_id in self._owned or model_id in self._shared
        if not visible:
            raise _Fail(Err.NO_MODEL)
        try:
            return self.store.get(model_id)
        except ModelNotFoundError:
            raise _Fail(Err.NO_MODEL) from None

    def _engine(self, model_id: int) -> Engine:
        """The shared forward pass of a visible model (made on first use); NO_MODEL or UNSUPPORTED."""
        engine = self._forward.get(model_id)  # present only while the model is visible
        if engine is None:
            self._model(model_id)
            with self._lock:
                held = model_id in self._shared  # our hold keeps a removed shared model usable
            try:
                engine = engine_for(self.store, model_id, self.threads, held=held)
            except UnsupportedModelError as exc:
                log.info("model %d cannot run: %s", model_id, exc)
                engine = exc
            except ModelNotFoundError:  # removed meanwhile
                raise _Fail(Err.NO_MODEL) from None
            with self._lock:
                visible = not self._closed and (model_id in self._owned or model_id in self._shared)
                if visible:
                    kept = self._forward.setdefault(model_id, engine)
            if isinstance(engine, Engine) and (not visible or kept is not engine):
                release_engine(engine)
            if not visible:
                raise _Fail(Err.NO_MODEL)
            engine = kept
        if isinstance(engine, UnsupportedModelError):
            raise _Fail(Err.UNSUPPORTED)
        return engine

    def _run_code(self, rc: int) -> int:
        """An engine's answer as an import's."""
        if rc == DEADLINE:
            raise _Fail(Err.DEADLINE)
        if rc == WITHDRAWN:  # the tenant closed meanwhile
            raise self._refuse("the tenant is closed")
        return self._forward_code(rc)

    def _kv_cache(self, kv_id: int) -> _Kv:
        kv = self._kv.get(kv_id)
        if kv is None:
            raise _Fail(Err.NO_KV_CACHE)
        return kv

    @staticmethod
    def _values(mem: GuestMemory, ptr: int, count: int) -> int:
        """ptr once `count` 4-byte values there lie in memory; else BAD_POINTER."""
        return mem.check(ptr, 4 * count)

    @staticmethod
    def _aligned(*ptrs: int) -> None:
        for ptr in ptrs:
            if ptr & 3:
                raise _Fail(Err.BAD_ARGUMENT)

    @staticmethod
    def _rows(n_values: int, n_embd: int) -> int:
        """Rows in n_values f32 values of hidden state: BAD_ARGUMENT unless a positive whole number."""
        if n_values == 0 or n_values % n_embd:
            raise _Fail(Err.BAD_ARGUMENT)
        return n_values // n_embd

    def _bounded(self, n_rows: int) -> None:
        """LIMIT for more rows than one forward call takes."""
        if n_rows > abi.FORWARD_MAX_TOKENS:
            raise self._refuse(f"{n_rows} rows in one forward call (at most {abi.FORWARD_MAX_TOKENS})")

    @staticmethod
    def _forward_code(rc: int) -> int:
        """A C forward call's result as an import's answer."""
        if rc == 0:
            return 0
        if rc == FORWARD_EKV_FULL:
            raise _Fail(Err.CONTEXT_FULL)
        if rc == FORWARD_EINVAL:  # an argument only the C code checks: a gap, a token id
            raise _Fail(Err.BAD_ARGUMENT)
        raise InternalError(f"forward pass failed with code {rc}")

    @staticmethod
    def _text(mem: GuestMemory, ptr: int, length: int, max_len: int) -> str:
        """UTF-8 text of at most max_len bytes from a range already checked against memory."""
        if length > max_len:
            raise _Fail(Err.BAD_ARGUMENT)
        try:
            return mem.read(ptr, length).decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail(Err.BAD_UTF8) from None

    @staticmethod
    def _fit(out_max_len: int, needed: int) -> bool:
        """Size rules shared by every output buffer: True to write, False for a size query."""
        if needed > _I32_MAX:
            raise _Fail(Err.TOO_LARGE)
        if out_max_len == 0:
            return False
        if out_max_len < needed:
            raise _Fail(Err.BUFFER_TOO_SMALL)
        return True

    # -- the imports (contracts in guest/realm_abi.h) ------------------------------
    @_realm_import
    def realm_store_model(self, mem: GuestMemory, gguf_ptr: int, gguf_len: int) -> int:
        """Copy a whole GGUF out of guest memory into the store; the new id is owned by the guest.
        It counts what it keeps alive: its bytes, then its parsed header too."""
        ptr = mem.check(gguf_ptr, gguf_len)
        limits = self.limits
        with self._lock:  # reserve the bytes before the copy and the parse
            self._charge("a stored model", gguf_len, self._owned_bytes, limits.stored_bytes,
                         len(self._owned), limits.stored_models)
            self._owned_bytes += gguf_len
        charged, model_id = gguf_len, None
        try:
            try:  # the store's private copy, made without the GIL
                model_id = self.store.store_bytes(mem.view(ptr, gguf_len))
            except GGUFError as exc:
                log.info("guest stored a bad GGUF: %s", exc)
                raise _Fail(Err.BAD_GGUF) from None
            extra = self.store.get(model_id).host_bytes - gguf_len
            with self._lock:  # the parsed header, counted once its size is known
                self._charge("a stored model's parsed header", extra, self._owned_bytes, limits.stored_bytes,
                             len(self._owned), limits.stored_models)
                self._owned_bytes += extra
                charged += extra
                self._owned[model_id] = charged
            return model_id
        except BaseException:
            with self._lock:
                self._owned_bytes -= charged
            self._release(charged)
            if model_id is not None:
                self.store.remove(model_id)
            raise

    @_realm_import
    def realm_get_tensor(self, mem: GuestMemory, model_id: int, name_ptr: int, name_len: int,
                         out_ptr: int, out_max_len: int) -> int:
        """A tensor as f32 through the store's LayerCache."""
        model = self._model(model_id)
        name_ptr = mem.check(name_ptr, name_len)
        out_ptr = mem.check(out_ptr, out_max_len)
        name = self._text(mem, name_ptr, name_len, abi.NAME_MAX)
        tensor = model.tensors.get(name)
        if tensor is None:
            raise _Fail(Err.NO_TENSOR)
        if not tensor.dequantizable:
            raise _Fail(Err.UNSUPPORTED)
        needed = 4 * tensor.n_elements
        if not self._fit(out_max_len, needed):
            return needed
        try:
            values = self.store.get_tensor_f32(model_id, name)
        except ModelNotFoundError:  # removed meanwhile
            raise _Fail(Err.NO_MODEL) from None
        if values.dtype != np.float32 or values.nbytes != needed:
            raise InternalError(f"the store returned {values.dtype} x {values.size} for {name!r}")
        mem.write(out_ptr, values)
        return needed

    @_realm_import
    def realm_get_model_info(self, mem: GuestMemory, model_id: int, count_ptr: int, size_ptr: int) -> int:
        """Tensor count (u32) and total tensor bytes (u64)."""
        model = self._model(model_id)
        count_ptr = mem.check(count_ptr, 4)
        size_ptr = mem.check(size_ptr, 8)
        count = len(model.tensors)
        if count > _U32_MASK:
            raise _Fail(Err.TOO_LARGE)
        mem.write(count_ptr, struct.pack("<I", count))
        mem.write(size_ptr, struct.pack("<Q", model.total_size))
        return abi.OK

    @_realm_import
    def realm_remove_model(self, mem: GuestMemory, model_id: int) -> int:
        """Remove a model the guest stored (shared ones are DENIED), and the guest's KV caches of it."""
        with self._lock:
            if model_id in self._shared:
                raise _Fail(Err.DENIED)
            if model_id not in self._owned:
                raise _Fail(Err.NO_MODEL)
            released = self._owned.pop(model_id)
            self._owned_bytes -= released
            engine = self._forward.pop(model_id, None)
            caches = [kv_id for kv_id, kv in self._kv.items() if kv.model_id == model_id]
            kv_released = 0
            for kv_id in caches:  # each holds the model's weights: they go with it
                kv = self._kv.pop(kv_id)
                self._kv_bytes -= kv.nbytes
                kv_released += kv.nbytes
        self._release(released + kv_released, kv_released)
        if isinstance(engine, Engine):
            engine.leave(self)
            release_engine(engine)
        try:
            self.store.remove(model_id)
        except ModelNotFoundError:  # the host removed it first
            raise _Fail(Err.NO_MODEL) from None
        return abi.OK

    @_realm_import
    def realm_get_metadata(self, mem: GuestMemory, model_id: int, out_ptr: int, out_max_len: int) -> int:
        """The model's GGUF header: bytes 0 to the start of tensor data."""
        model = self._model(model_id)
        out_ptr = mem.check(out_ptr, out_max_len)
        header = model.header
        if self._fit(out_max_len, len(header)):
            mem.write(out_ptr, header)
        return len(header)

    @_realm_import
    def realm_log(self, mem: GuestMemory, level: int, msg_ptr: int, msg_len: int) -> int:
        """A guest message to the "realm.guest" logger."""
        if level not in _LOG_LEVELS:
            raise _Fail(Err.BAD_ARGUMENT)
        text = self._text(mem, mem.check(msg_ptr, msg_len), msg_len, abi.LOG_MAX)
        self._logged += 1
        if self._logged > abi.LOG_CALLS_MAX:
            raise _Fail(Err.LIMIT)
        if level == LogLevel.ERROR:
            self.last_error = text
        guest_log.log(_LOG_LEVELS[LogLevel(level)], "%s", text)
        return abi.OK

    # -- the forward pass ------------------------------------------------------------
    @_realm_import
    def realm_forward_embedding(self, mem: GuestMemory, model_id: int, tokens_ptr: int, n_tokens: int,
                                out_ptr: int) -> int:
        """Embedding rows of token ids, written into guest memory by the C code (a lookup: not batched)."""
        fm = self._engine(model_id).model._fm
        tokens_ptr = self._values(mem, tokens_ptr, n_tokens)
        out_ptr = self._values(mem, out_ptr, n_tokens * fm.n_embd)
        self._aligned(tokens_ptr, out_ptr)
        if n_tokens == 0:
            raise _Fail(Err.BAD_ARGUMENT)
        self._bounded(n_tokens)
        base = mem.base
        self._forward_code(fm._embed_at(base + tokens_ptr, n_tokens, base + out_ptr))
        return n_tokens * fm.n_embd

    @_realm_import
    def realm_forward_layer(self, mem: GuestMemory, model_id: int, layer_idx: int, hidden_ptr: int,
                            hidden_len: int, position: int, kv_cache_id: int, out_ptr: int) -> int:
        """One transformer layer, batched with the same layer of other guests; K and V into the
        guest's KV cache."""
        engine = self._engine(model_id)
        fm = engine.model._fm
        kv = self._kv_cache(kv_cache_id)
        hidden_ptr = self._values(mem, hidden_ptr, hidden_len)
        out_ptr = self._values(mem, out_ptr, hidden_len)
        if layer_idx >= fm.n_layer or kv.engine is not engine:
            raise _Fail(Err.BAD_ARGUMENT)
        self._aligned(hidden_ptr, out_ptr)
        n_tokens = self._rows(hidden_len, fm.n_embd)
        self._bounded(n_tokens)
        self._forward_code(engine.check(kv.cache, 0, n_tokens, position, layer_idx))
        kv.known = -1  # rows from hidden states the guest made: no prefix to share
        hidden = mem.floats(hidden_ptr, n_tokens, fm.n_embd)
        out = mem.floats(out_ptr, n_tokens, fm.n_embd)
        self._run_code(engine.layer(self, kv.cache, layer_idx, hidden, position, out, self.deadline))
        return hidden_len

    @_realm_import
    def realm_forward_lm_head(self, mem: GuestMemory, model_id: int, hidden_ptr: int, hidden_len: int,
                              out_ptr: int, out_max_len: int) -> int:
        """Logits of hidden rows (final norm + output projection), batched with other guests'."""
        engine = self._engine(model_id)
        fm = engine.model._fm
        hidden_ptr = self._values(mem, hidden_ptr, hidden_len)
        out_ptr = self._values(mem, out_ptr, out_max_len)
        self._aligned(hidden_ptr, out_ptr)
        n_rows = self._rows(hidden_len, fm.n_embd)
        self._bounded(n_rows)
        needed = n_rows * fm.n_vocab
        if not self._fit(out_max_len, needed):
            return needed
        hidden = mem.floats(hidden_ptr, n_rows, fm.n_embd)
        out = mem.floats(out_ptr, n_rows, fm.n_vocab)
        self._run_code(engine.lm_head(self, hidden, out, self.deadline))
        return needed

    @_realm_import
    def realm_forward(self, mem: GuestMemory, model_id: int, tokens_ptr: int, n_tokens: int, position: int,
                      kv_cache_id: int, out_ptr: int, out_max_len: int) -> int:
        """Embedding, every layer and the last token's logits in one call, batched with other
        guests' steps; rows of a cached prefix are reused."""
        engine = self._engine(model_id)
        fm = engine.model._fm
        kv = self._kv_cache(kv_cache_id)
        tokens_ptr = self._values(mem, tokens_ptr, n_tokens)
        out_ptr = self._values(mem, out_ptr, out_max_len)
        if kv.engine is not engine:
            raise _Fail(Err.BAD_ARGUMENT)
        self._aligned(tokens_ptr, out_ptr)
        if n_tokens == 0:
            raise _Fail(Err.BAD_ARGUMENT)
        self._bounded(n_tokens)
        if 0 < out_max_len < fm.n_vocab:
            raise _Fail(Err.BUFFER_TOO_SMALL)
        tokens = mem.view(tokens_ptr, 4 * n_tokens).view(np.int32).copy()  # the host's own copy
        self._forward_code(engine.check(kv.cache, tokens.ctypes.data, n_tokens, position))
        logits = mem.floats(out_ptr, 1, fm.n_vocab)[0] if out_max_len else None
        if self._last_logits is not None:  # the guest sampled tokens[0] from the last logits
            self.last_logprob(int(tokens[0]))
        reused = 0
        if 0 <= kv.known and position <= kv.known and n_tokens > (logits is not None):  # rows to spare
            reused = engine.reuse_prefix(kv.cache, kv.history, tokens, position, logits is not None)
            self.cached_tokens += reused
        if reused < n_tokens:
            self._run_code(engine.forward(self, kv.cache, tokens[reused:], position + reused, logits, self.deadline))
        if 0 <= kv.known and position <= kv.known:
            kv.history[position:position + n_tokens] = tokens
            kv.known = position + n_tokens
            if n_tokens > 1 and logits is not None:  # a prompt: its rows may serve the next tenant
                engine.keep_prefix(kv.cache, kv.history[:kv.known])
        if self.logprobs is not None and logits is not None:
            self._last_logits = logits.copy()
        return fm.n_vocab if out_max_len else 0

    @_realm_import
    def realm_kv_create(self, mem: GuestMemory, model_id: int, n_ctx: int) -> int:
        """A KV cache for the guest (f16 rows), within its quota and the host's budget."""
        engine = self._engine(model_id)
        model = engine.model
        train = model.config.n_ctx_train
        if n_ctx == 0 or (train and n_ctx > train):
            raise _Fail(Err.BAD_ARGUMENT)
        try:
            size = model.kv_cache_bytes(n_ctx)
        except ValueError:
            raise _Fail(Err.BAD_ARGUMENT) from None
        limits = self.limits
        with self._lock:  # reserve the quota before allocating
            self._charge("a KV cache", size, self._kv_bytes, limits.kv_bytes, len(self._kv), limits.kv_caches)
            shared = self.kv_budget
            if shared is not None and not shared.reserve(size):
                self.store.budget.release(size)
                raise self._refuse(f"a KV cache: {size} more bytes would pass the tenant's share of "
                                   f"{shared.max_bytes} ({shared.used} in use by its requests)")
            self._kv_bytes += size
        try:
            kv = model.new_kv_cache(n_ctx, max_bytes=size)
            kv_id = next(_KV_IDS)
            with self._lock:
                if self._closed or kv_id > _I32_MAX:  # closed meanwhile, or 2^31 caches made
                    raise self._refuse("the tenant is closed" if self._closed else "no KV cache ids are left")
                self._kv[kv_id] = _Kv(kv, model_id, size, engine, np.zeros(n_ctx, np.int32))
            return kv_id
        except BaseException:
            with self._lock:
                self._kv_bytes -= size
            self._release(size, size)
            raise

    @_realm_import
    def realm_kv_free(self, mem: GuestMemory, kv_cache_id: int) -> int:
        """Free one of the guest's KV caches."""
        with self._lock:
            kv = self._kv.pop(kv_cache_id, None)
            if kv is None:
                raise _Fail(Err.NO_KV_CACHE)
            self._kv_bytes -= kv.nbytes
        self._release(kv.nbytes, kv.nbytes)
        if kv.known > 0:  # the whole sequence, for a next turn that starts with it
            kv.engine.keep_prefix(kv.cache, kv.history[:kv.known])
        kv.engine.leave(self)  # the sequence ended: the next passes need not wait for it
        return abi.OK

    @_realm_import
    def realm_kv_truncate(self, mem: GuestMemory, kv_cache_id: int, n_tokens: int) -> int:
        """Drop positions >= n_tokens; returns the positions kept."""
        kv = self._kv_cache(kv_cache_id)
        try:
            kv.cache.truncate(n_tokens)
        except BusyError:  # in use by a forward call of another thread
            raise _Fail(Err.BAD_ARGUMENT) from None
        kv.known = min(kv.known, kv.cache.length)
        return kv.cache.length

    # -- log probabilities ---------------------------------------------------------------
    #: Top alternatives to record with each sampled token (0..TOP_LOGPROBS_MAX); None: no
    #: log probabilities.  Set by the caller before the guest generates.
    logprobs: int | None = None

    #: Receives each `TokenLogprob` as it is recorded (None: they are only kept).
    logprob_sink: Callable[[TokenLogprob], None] | None = None

    def last_logprob(self, token: int) -> None:
        """Record `token`'s log probability under the last logits the guest got: called as the
        guest forwards a token it sampled, and for the last one, which it does not forward."""
        if self._last_logits is not None:
            entry = token_logprob(self._last_logits, token, self.logprobs or 0)
            self._last_logits = None
            self.token_logprobs.append(entry)
            if self.logprob_sink is not None:
                self.logprob_sink(entry)

    # -- text out ----------------------------------------------------------------------
    #: Receives each piece of text the guest streams (realm_emit_text); a true return value
    #: asks the guest to stop generating.  None: the text is dropped.
    text_sink: Callable[[str], bool | None] | None = None

    @_realm_import
    def realm_emit_text(self, mem: GuestMemory, text_ptr: int, text_len: int) -> int:
        """A piece of generated text, handed to `text_sink`."""
        text = self._text(mem, mem.check(text_ptr, text_len), text_len, abi.TEXT_MAX)
        sink = self.text_sink
        return abi.EMIT_STOP if sink is not None and sink(text) else abi.OK


def add_realm_imports(linker: wasmtime.Linker, store: ModelStore, *, shared: Iterable[int] = (),
                      limits: Limits | None = None, threads: int | None = None) -> RealmHost:
    """Define every `realm_*` import in `linker`, served from `store`; returns the `RealmHost`
    (one tenant: call its `close()` when the guest is done).  `limits` caps the tenant: its
    quotas are enforced by the imports; apply the memory cap with `host.limit(wasm_store)` and
    run calls under the deadline with `host.run(...)` (see the module docstring), in a store of
    an engine from `realm.sandbox_engine()` so the deadline can interrupt wasm code."""
    return RealmHost(store, shared=shared, limits=limits, threads=threads).define(linker)
