"""Limits on tenants: `Limits`, the host's `HostBudget`, and deadlines through epoch interruption.

A tenant is one guest instance and what it keeps alive in the host.  `Limits`
caps each tenant; `HostBudget` caps the sum over all tenants of one
`ModelStore`.  Deadlines use Wasmtime's epoch interruption: every engine made
by `sandbox_engine()` has its epoch advanced every `TICK_S` seconds by one C
thread (csrc/ticker.c, free of the GIL), and a call runs with its store's epoch
deadline set to the ticks that remain, so wasm code that runs past it traps at
its next loop back-edge or function entry.  Host imports run in Python or C,
outside wasm; they check the deadline before starting work (past it they make
the guest trap on return) and are bounded in what one call may do, so a guest
that calls them in a loop is stopped after the call that crosses its deadline.
"""

from __future__ import annotations

import atexit
import ctypes
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import wasmtime

from . import _native
from .errors import (ArgumentTypeError, DeadlineExceeded, InternalError, InvalidArgumentError, LimitExceeded,
                     RealmError, TrapHandlerError)

__all__ = ["Limits", "HostBudget", "GuestTrapError", "sandbox_engine", "TICK_S", "run_wasm", "check_trap_handlers",
           "restore_trap_handlers"]

#: How often the epoch of every sandbox engine advances: a deadline is kept to about this.
TICK_S = 0.01
#: Largest linear memory a tenant may have: all of wasm32's address space.
WASM32_MEMORY_MAX = 1 << 32
#: Table entries (function references) one tenant may hold.
TABLE_ELEMENTS_MAX = 1 << 20
#: The interpreter's GIL switch interval once tenants run (Python's default is 5 ms): each import
#: call of a tenant needs the GIL, and a thread running Python (another tenant's imports, a chat
#: template, a parse) otherwise makes each call wait up to the whole interval.
GIL_SWITCH_INTERVAL_S = 0.0005
#: Ticks that stand for "no deadline" (far beyond any run, far from overflowing u64 epochs).
_NO_DEADLINE_TICKS = 1 << 62


class GuestTrapError(RealmError, RuntimeError):
    """The guest trapped (unreachable, an out-of-bounds access, a stack overflow...); the tenant is
    unusable afterwards.  `trap_code` is Wasmtime's `TrapCode` (None when it gave none)."""

    def __init__(self, message: str, trap_code: Any = None):
        super().__init__(message)
        self.trap_code = trap_code


@dataclass(frozen=True)
class Limits:
    """What one tenant (a guest instance) may use.  Every field is enforced on every path:
    `realm.Tenant`, `realm.Guest`, `Realm` and `add_realm_imports`.

    memory_bytes: cap on the guest's linear memory (memory.grow beyond it fails; a module that
        starts above it is refused).
    deadline_s: wall-clock seconds one call into the guest may run (`Tenant.call`), or one
        generation (`Realm`: every call it makes together); None: no deadline.  Past it the
        guest is interrupted and `DeadlineExceeded` raised.
    kv_bytes, kv_caches: the guest's KV caches (realm_kv_create), in bytes and in number.
    stored_bytes, stored_models: models the guest stored (realm_store_model), in number and in
        the host memory each keeps alive (its bytes and its parsed header).
    """

    memory_bytes: int = 1 << 30
    deadline_s: float | None = 300.0
    kv_bytes: int = 1 << 30
    kv_caches: int = 16
    stored_bytes: int = 1 << 30
    stored_models: int = 16

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "kv_bytes", "kv_caches", "stored_bytes", "stored_models"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArgumentTypeError(f"Limits.{name} must be an int, not {type(value).__name__}")
            if value < 0:
                raise InvalidArgumentError(f"Limits.{name} must be >= 0, not {value}")
        if self.memory_bytes > WASM32_MEMORY_MAX:
            raise InvalidArgumentError(f"Limits.memory_bytes must be at most 4 GiB (wasm32), not {self.memory_bytes}")
        d = self.deadline_s
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, float)):
                raise ArgumentTypeError(f"Limits.deadline_s must be a number or None, not {type(d).__name__}")
            if not (math.isfinite(d) and d > 0):
                raise InvalidArgumentError(f"Limits.deadline_s must be a finite number of seconds > 0, not {d}")

    def apply(self, wasm_store: wasmtime.Store) -> None:
        """Cap a Wasmtime store's resources: linear memory, one instance with at most one
        memory and one table of TABLE_ELEMENTS_MAX entries."""
        wasm_store.set_limits(memory_size=self.memory_bytes, table_elements=TABLE_ELEMENTS_MAX,
                              instances=1, tables=1, memories=1)


DEFAULT_LIMITS = Limits()


def _default_budget() -> int:
    """Half the machine's physical memory (1 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return 1 << 30


class HostBudget:
    """Bytes that all tenants of a model store together may keep alive in KV caches and stored
    models.  Thread-safe.  A reservation that would cross `max_bytes` is refused at once, so
    tenants get an error instead of the process running out of memory.

    max_bytes: the ceiling (None: half the machine's physical memory).
    """

    def __init__(self, max_bytes: int | None = None):
        if max_bytes is None:
            max_bytes = _default_budget()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise ArgumentTypeError(f"max_bytes must be an int or None, not {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise InvalidArgumentError(f"max_bytes must be >= 0, not {max_bytes}")
        self.max_bytes = max_bytes
        self._used = 0
        self._peak = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> bool:
        """Take nbytes if they fit under the ceiling; False (and nothing taken) if not."""
        with self._lock:
            if self._used + nbytes > self.max_bytes:
                return False
            self._used += nbytes
            self._peak = max(self._peak, self._used)
            return True

    def release(self, nbytes: int) -> None:
        """Give back bytes a `reserve` took."""
        with self._lock:
            if nbytes > self._used:
                raise InternalError(f"HostBudget: releasing {nbytes} bytes, only {self._used} reserved")
            self._used -= nbytes

    @property
    def used(self) -> int:
        return self._used

    @property
    def peak(self) -> int:
        """The most bytes reserved at once."""
        return self._peak

    def __repr__(self) -> str:
        return f"HostBudget(used={self._used}, max_bytes={self.max_bytes})"


# -- epoch interruption ------------------------------------------------------------------------

_engines: list[wasmtime.Engine] = []  # every sandbox engine: the ticker holds their addresses for good
_engines_lock = threading.Lock()


def _ticked(engine: wasmtime.Engine) -> wasmtime.Engine:
    """Register an engine with the C ticker (csrc/ticker.c): a thread that runs without the GIL,
    so no Python thread, however busy, delays a deadline."""
    from wasmtime import _ffi  # wasmtime-py's handle on libwasmtime, where the increment lives

    increment = ctypes.cast(_ffi.dll.wasmtime_engine_increment_epoch, ctypes.c_void_p).value
    if not _engines:  # the interpreter frees the engines at exit: the ticker lets go of them first
        atexit.register(_native.ticker_clear)
    _native.ticker_add(increment, ctypes.cast(engine.ptr(), ctypes.c_void_p).value, round(TICK_S * 1e9))
    _engines.append(engine)
    return engine


def sandbox_engine(config: wasmtime.Config | None = None) -> wasmtime.Engine:
    """A Wasmtime engine whose stores realm's deadlines can interrupt: epoch interruption on,
    its epoch advanced every TICK_S seconds by realm's ticker thread.

    Without `config`, the process-wide engine realm shares between all its tenants (modules
    compiled for it serve any of them).  With one, a new engine from that config (epoch
    interruption is switched on in it; the config is consumed, as by `wasmtime.Engine`); such
    engines live until the process exits (the ticker holds them), so make one per program, not
    per tenant.  Every store of such an engine needs an epoch deadline before it runs any wasm:
    `RealmHost.limit` and `run_wasm` set them.  The first call lowers the interpreter's GIL
    switch interval to GIL_SWITCH_INTERVAL_S (`sys.setswitchinterval`; never raises it).
    """
    with _engines_lock:
        if config is None and _engines:
            return _engines[0]
        if not _engines and sys.getswitchinterval() > GIL_SWITCH_INTERVAL_S:
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        if not _engines and config is not None:  # the shared engine comes first
            shared = wasmtime.Config()
            shared.epoch_interruption = True
            _ticked(wasmtime.Engine(shared))
        config = config if config is not None else wasmtime.Config()
        config.epoch_interruption = True
        engine = _ticked(wasmtime.Engine(config))
        if not _trap_saved:  # Wasmtime installs its handlers with the process's first engine
            _save_trap_handlers()
        return engine


# -- Wasmtime's trap handlers ------------------------------------------------------------------
# Wasmtime turns a guest's faults (an out-of-bounds access, `unreachable`, a division by zero)
# into traps in process-wide signal handlers (csrc/trap_signals.h).  A library that installs its
# own afterwards without chaining to them (Ray's driver at ray.init, a crash reporter) would
# make the next fault of any guest kill the process: run_wasm refuses to run guests then.

_TRAP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGSEGV", "SIGILL", "SIGFPE", "SIGBUS")
                      if hasattr(signal, name))
_trap_handlers: dict[int, int] = {}  # signal -> Wasmtime's handler, saved with the first engine
_trap_missing: list[str] = []  # signals Wasmtime must handle whose handler was another's then
_trap_saved = False


def _save_trap_handlers() -> None:
    """Save the actions of the signals whose handler is Wasmtime's (once an engine exists; with
    _engines_lock)."""
    global _trap_saved
    _trap_saved = True
    from wasmtime import _ffi  # wasmtime-py's handle on libwasmtime: the object its handlers are in

    anchor = ctypes.cast(_ffi.dll.wasm_engine_new, ctypes.c_void_p).value or 0
    for sig in _TRAP_SIGNALS:
        handler = _native.signal_handler(sig)
        if _native.same_object(handler, anchor):
            _native.signal_save(sig)
            _trap_handlers[sig] = handler
    # On Linux Wasmtime always catches out-of-bounds accesses as SIGSEGV
    if sys.platform.startswith("linux") and signal.SIGSEGV not in _trap_handlers:
        _trap_missing.append("SIGSEGV")


def check_trap_handlers() -> None:
    """Raise TrapHandlerError unless Wasmtime's trap handlers, as saved when realm made its
    first sandbox engine, are still installed (run_wasm calls it before running a guest)."""
    if _trap_missing:
        raise TrapHandlerError(
            f"Wasmtime's {', '.join(_trap_missing)} handler was not installed when realm made its first "
            "sandbox engine (another library replaced it after an earlier Wasmtime engine), so a guest's fault "
            "would kill the process; realm runs no guest in this process")
    changed = [signal.Signals(sig).name for sig, handler in _trap_handlers.items()
               if _native.signal_handler(sig) != handler]
    if changed:
        which = f"{changed[0]} handler is" if len(changed) == 1 else f"{', '.join(changed)} handlers are"
        raise TrapHandlerError(
            f"the process's {which} no longer Wasmtime's: another library replaced them (Ray's driver does at "
            "ray.init and at shutdown), so a guest's fault would kill the process instead of trapping.  realm runs "
            "no guest until they are back: call realm.restore_trap_handlers()")


def restore_trap_handlers() -> list[str]:
    """Install Wasmtime's trap handlers again where another library replaced them (see
    `TrapHandlerError`); returns the names of the signals restored.  The replacing library's
    handler is dropped: Wasmtime's passes the faults that are not a guest's to the handler that
    was in place before Wasmtime's, not to the newer one."""
    restored = []
    with _engines_lock:
        for sig, handler in _trap_handlers.items():
            if _native.signal_handler(sig) != handler:
                _native.signal_restore(sig)
                restored.append(signal.Signals(sig).name)
    return restored


def remaining_ticks(deadline: float | None) -> int:
    """Epoch ticks until `deadline` (a time.monotonic() value; None: no deadline), at least 1.
    Raises DeadlineExceeded when it has passed."""
    if deadline is None:
        return _NO_DEADLINE_TICKS
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the deadline passed before the call")
    return max(1, math.ceil(left / TICK_S))


def run_wasm(wasm_store: wasmtime.Store, deadline: float | None, fn: Callable[..., Any], *args: Any,
             what: str = "the guest") -> Any:
    """fn(*args) -- a wasm function call or instantiation in `wasm_store` -- with the store's epoch
    deadline at `deadline` (time.monotonic(); None: none).  A run past it raises
    DeadlineExceeded, any other trap GuestTrapError, an instantiation over the memory cap
    LimitExceeded, one Wasmtime refuses otherwise (a link error) InvalidArgumentError; with
    Wasmtime's trap handlers replaced, TrapHandlerError before running anything."""
    check_trap_handlers()
    wasm_store.set_epoch_deadline(remaining_ticks(deadline))
    try:
        return fn(*args)
    except wasmtime.Trap as trap:
        code = trap.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            raise DeadlineExceeded(f"{what} ran past its deadline and was stopped") from None
        lines = [ln.strip() for ln in str(trap.message or "").splitlines()]
        # "wasm trap: <cause>", alone or as a numbered line under "Caused by:"
        cause = next((ln.split("wasm trap:", 1)[1].strip() for ln in lines if "wasm trap:" in ln), None)
        raise GuestTrapError(f"{what} trapped: {cause or (lines[0] if lines else 'a trap')}", code) from None
    except wasmtime.WasmtimeError as exc:
        message = str(exc).strip()
        if "exceeds memory limits" in message or "resource limit exceeded" in message:
            raise LimitExceeded(f"{what}: {message}") from None
        raise InvalidArgumentError(f"{what}: {message}") from None
