"""`Guest`: one realm guest instance -- a Wasmtime Store, guest.wasm, and its RealmHost.

    with Guest(store) as g:              # store: realm.ModelStore
        g.attach(model_id)               # a host-loaded model; weights stay in the host
        g.config.n_layers
        g.fetch_tensor("output_norm.weight")
        g.memory_size                    # bytes of guest linear memory

Each Guest has its own Wasmtime Store (so its own memory), and is one tenant of
the model store.  A Guest is used from one thread at a time; run several
Guests to work in parallel.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import wasmtime

from . import abi
from .abi import Err, ModelConfig
from .host import RealmHost
from .store import ModelStore

__all__ = ["Guest", "GuestError", "guest_wasm_path", "load_guest_module"]

#: The guest module, built from guest/*.c by the package build.
GUEST_WASM = Path(__file__).with_name("guest.wasm")
#: Default cap on a guest's linear memory.
DEFAULT_MAX_MEMORY = 1 << 30

_U32_MASK = 0xFFFF_FFFF
_module_lock = threading.Lock()
_default: tuple[wasmtime.Engine, wasmtime.Module] | None = None


class GuestError(RuntimeError):
    """A guest export returned an error code.

    code: the `abi.Err` (or the raw int if unknown); detail: what the guest logged
    at REALM_LOG_ERROR during the call, if anything.
    """

    def __init__(self, what: str, code: int, detail: str | None = None):
        try:
            self.code: Err | int = Err(code)
        except ValueError:
            self.code = code
        self.detail = detail
        message = f"{what}: {abi.describe(code)}"
        super().__init__(f"{message} ({detail})" if detail else message)


def guest_wasm_path() -> Path:
    """Where guest.wasm is; raises FileNotFoundError with the way to build it."""
    if not GUEST_WASM.is_file():
        raise FileNotFoundError(
            f"{GUEST_WASM} is missing: it is built from guest/*.c by the package build "
            "(pip install ., or python setup.py build_ext --inplace in a checkout)")
    return GUEST_WASM


def load_guest_module(engine: wasmtime.Engine | None = None) -> tuple[wasmtime.Engine, wasmtime.Module]:
    """(engine, compiled guest module).  Without an engine, a process-wide default engine and
    its module, compiled once."""
    global _default
    if engine is not None:
        return engine, wasmtime.Module.from_file(engine, str(guest_wasm_path()))
    with _module_lock:
        if _default is None:
            engine = wasmtime.Engine()
            _default = engine, wasmtime.Module.from_file(engine, str(guest_wasm_path()))
        return _default


def _i32(value: int) -> int:
    """A u32 as the signed i32 Wasmtime takes."""
    value &= _U32_MASK
    return value - (1 << 32) if value & 0x8000_0000 else value


class Guest:
    """One instance of guest.wasm with the realm imports served from `store`.

    engine/module: a Wasmtime engine and the guest module compiled for it
        (default: `load_guest_module()`).
    shared: host-loaded model ids the guest may read (`attach` adds more).
    max_memory: cap on the guest's linear memory in bytes (None: Wasmtime's 4 GiB).
    host_options: passed to `RealmHost` (e.g. max_stored_bytes).
    """

    def __init__(self, store: ModelStore, *, engine: wasmtime.Engine | None = None,
                 module: wasmtime.Module | None = None, shared: Iterable[int] = (),
                 max_memory: int | None = DEFAULT_MAX_MEMORY, **host_options: Any):
        if module is None:
            engine, module = load_guest_module(engine)
        elif engine is None:
            raise ValueError("a module needs the engine it was compiled with")
        self.models = store
        self.wasm_store = wasmtime.Store(engine)
        if max_memory is not None:
            self.wasm_store.set_limits(memory_size=max_memory)
        linker = wasmtime.Linker(engine)
        self.host = RealmHost(store, shared=shared, **host_options).define(linker)
        self._finalizer = weakref.finalize(self, self.host.close)  # a Guest never closed still lets go
        try:
            instance = linker.instantiate(self.wasm_store, module)
            exports = instance.exports(self.wasm_store)
            self._memory: wasmtime.Memory = exports["memory"]
            self._exports = {name: exports[name] for name in abi.EXPORTS}
            exports["_initialize"](self.wasm_store)
            version = self.call("guest_abi_version")
            if version != abi.ABI_VERSION:
                raise RuntimeError(f"guest.wasm speaks ABI {version}, this host {abi.ABI_VERSION}: rebuild it")
        except BaseException:
            self.close()
            raise

    # -- raw access ----------------------------------------------------------------
    def call(self, name: str, *args: int) -> Any:
        """Call a guest export (see abi.EXPORTS) with raw wasm values."""
        return self._exports[name](self.wasm_store, *args)

    @property
    def memory_size(self) -> int:
        """The guest's linear memory, in bytes."""
        return self._memory.data_len(self.wasm_store)

    def alloc(self, size: int) -> int:
        """guest_alloc: a buffer of `size` bytes in guest memory."""
        ptr = self.call("guest_alloc", _i32(size)) & _U32_MASK
        if ptr == 0:
            raise GuestError(f"guest_alloc({size})", Err.NO_MEMORY)
        return ptr

    def free(self, ptr: int) -> None:
        self.call("guest_free", _i32(ptr))

    def read(self, ptr: int, length: int) -> bytes:
        if ptr < 0 or length < 0 or ptr + length > self.memory_size:
            raise ValueError(f"[{ptr}, {ptr + length}) is outside guest memory ({self.memory_size} bytes)")
        return bytes(self._memory.read(self.wasm_store, ptr, ptr + length))

    def write(self, ptr: int, data: bytes) -> None:
        if ptr < 0 or ptr + len(data) > self.memory_size:
            raise ValueError(f"[{ptr}, {ptr + len(data)}) is outside guest memory ({self.memory_size} bytes)")
        self._memory.write(self.wasm_store, data, ptr)

    @contextmanager
    def buffer(self, data: bytes | int) -> Iterator[int]:
        """`with guest.buffer(b"...") as ptr:` -- a guest buffer holding `data` (or `data` bytes,
        uninitialised), freed at the end of the block."""
        size = data if isinstance(data, int) else len(data)
        ptr = self.alloc(size)
        try:
            if not isinstance(data, int):
                self.write(ptr, data)
            yield ptr
        finally:
            self.free(ptr)

    def call_checked(self, name: str, *args: int, what: str | None = None) -> int:
        """An export whose negative result is an error code: raises GuestError naming `what`
        (default: the export) with the host's last error message."""
        self.host.last_error = None
        rc = self.call(name, *args)
        if rc < 0:
            raise GuestError(what or name, rc, self.host.last_error)
        return rc

    # -- models ----------------------------------------------------------------------
    def load_model(self, gguf: bytes) -> int:
        """The seed's path: pass a whole GGUF through guest memory; the guest parses its header
        and stores it in the host (realm_store_model).  Returns the model id (owned by the guest)."""
        with self.buffer(gguf) as ptr:
            return self.call_checked("guest_load_model", _i32(ptr), _i32(len(gguf)))

    def attach(self, model_id: int) -> None:
        """Share a host-loaded model with the guest and have it read the model's header."""
        self.host.share(model_id)
        self.call_checked("guest_attach_model", model_id, what=f"guest_attach_model({model_id})")

    def unload(self) -> None:
        """Release the guest's model (removing it from the store if the guest stored it)."""
        self.call_checked("guest_unload_model")

    @property
    def config(self) -> ModelConfig | None:
        """The configuration the guest parsed from its model's header (None without a model)."""
        ptr = self.call("guest_config") & _U32_MASK
        return ModelConfig.from_bytes(self.read(ptr, abi.CONFIG_SIZE)) if ptr else None

    def fetch_tensor(self, name: str) -> np.ndarray:
        """A tensor of the guest's model as the guest receives it: realm_get_tensor into guest
        memory, read back as a flat float32 array."""
        raw = name.encode("utf-8")
        what = f"guest_fetch_tensor({name!r})"
        with self.buffer(raw) as name_ptr:
            args = (_i32(name_ptr), len(raw))
            needed = self.call_checked("guest_fetch_tensor", *args, 0, 0, what=what)
            if needed == 0:
                return np.empty(0, dtype="<f4")
            with self.buffer(needed) as out:
                written = self.call_checked("guest_fetch_tensor", *args, _i32(out), _i32(needed), what=what)
                return np.frombuffer(self._memory.read(self.wasm_store, out, out + written), dtype="<f4")

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """End this tenant: models it stored leave the store, shared ones are released."""
        self._finalizer()

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
