"""`Guest`: one instance of realm's guest (guest.wasm) -- a `Tenant` that tokenizes and generates.

    with Guest(store) as g:              # store: realm.ModelStore
        g.attach(model_id)               # a host-loaded model; weights stay in the host
        g.config.n_layers
        g.fetch_tensor("output_norm.weight")
        g.memory_size                    # bytes of guest linear memory

Each Guest has its own Wasmtime Store (so its own memory), runs under its
`Limits` like any tenant, and is one tenant of the model store.  A Guest is
used from one thread at a time; run several Guests to work in parallel.
"""

from __future__ import annotations

import ctypes
import errno
import threading
from dataclasses import dataclass, field
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import wasmtime

from . import abi
from .abi import Err, ModelConfig
from .errors import ArgumentTypeError, FileAccessError, InternalError, InvalidArgumentError, RealmError
from .limits import Limits, sandbox_engine
from .store import ModelStore
from .tenant import Tenant
from .wasm_image import with_memory_image

__all__ = ["Guest", "GuestError", "GuestSnapshot", "guest_wasm_path", "guest_module"]

#: The guest module, built from guest/*.c by the package build.
GUEST_WASM = Path(__file__).with_name("guest.wasm")

_U32_MASK = 0xFFFF_FFFF
_PAGE = 4096  # the host's page: the unit a snapshot leaves out when it is all zeros
_module_lock = threading.Lock()
_module: tuple[bytes, wasmtime.Module] | None = None  # guest.wasm as read, and compiled


class GuestError(RealmError, RuntimeError):
    """A guest export returned an error code.

    code: the `abi.Err` (or the raw int if unknown); detail: what the guest logged
    at REALM_LOG_ERROR during the call (or why the host refused it), if anything.
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
    """Where guest.wasm is; raises FileAccessError with the way to build it."""
    if not GUEST_WASM.is_file():
        raise FileAccessError(errno.ENOENT,
                              f"{GUEST_WASM} is missing: it is built from guest/*.c by the package build "
                              "(pip install ., or python setup.py build_ext --inplace in a checkout)", str(GUEST_WASM))
    return GUEST_WASM


def guest_module() -> wasmtime.Module:
    """realm's guest compiled for `realm.sandbox_engine()`, once a process."""
    return _guest()[1]


def _guest() -> tuple[bytes, wasmtime.Module]:
    global _module
    with _module_lock:
        if _module is None:
            wasm = guest_wasm_path().read_bytes()
            _module = (wasm, wasmtime.Module(sandbox_engine(), wasm))
        return _module


@dataclass(frozen=True)
class GuestSnapshot:
    """A guest's linear memory between calls -- its size and the (offset, bytes) runs of pages that
    are not all zeros -- and the model ids it reads (see `Guest.snapshot`); `module` is guest.wasm
    with that memory as its initial image (realm/wasm_image.py), which `Guest(snapshot=...)`
    instantiates."""

    size: int
    runs: tuple[tuple[int, bytes], ...]
    shared: tuple[int, ...]
    module: wasmtime.Module = field(repr=False, compare=False)


class Guest(Tenant):
    """One instance of guest.wasm with the realm imports served from `store`.

    shared: host-loaded model ids the guest may read (`attach` adds more).
    limits: the tenant's `Limits` (memory, deadline, quotas; default `Limits()`).
    threads: threads of the forward pass (None: every usable core).
    snapshot: start as the guest a `snapshot()` was taken of -- its memory and its models --
        instead of a fresh one.  Its memory image is mapped copy-on-write by Wasmtime: no copy,
        and its pages stay shared with the other guests started from it until written.
        LimitExceeded if it is larger than the memory cap.
    """

    def __init__(self, store: ModelStore, *, shared: Iterable[int] = (), limits: Limits | None = None,
                 threads: int | None = None, snapshot: GuestSnapshot | None = None):
        if snapshot is not None and not isinstance(snapshot, GuestSnapshot):
            raise ArgumentTypeError(f"snapshot must be a GuestSnapshot, not {type(snapshot).__name__}")
        if snapshot is None:
            super().__init__(store, guest_module(), limits=limits, shared=shared, threads=threads)
        else:  # its memory is initialized already: its _initialize ran before the snapshot
            super().__init__(store, snapshot.module, limits=limits, shared=(*snapshot.shared, *shared),
                             threads=threads, initialize=False)
        try:
            version = self.call("guest_abi_version")
            if version != abi.ABI_VERSION:
                raise InternalError(f"guest.wasm speaks ABI {version}, this host {abi.ABI_VERSION}: rebuild it")
        except BaseException:
            self.close()
            raise

    # -- raw access ----------------------------------------------------------------
    def alloc(self, size: int) -> int:
        """guest_alloc: a buffer of `size` bytes in guest memory."""
        ptr = self.call("guest_alloc", size) & _U32_MASK
        if ptr == 0:
            raise GuestError(f"guest_alloc({size})", Err.NO_MEMORY)
        return ptr

    def free(self, ptr: int) -> None:
        self.call("guest_free", ptr)

    def read(self, ptr: int, length: int) -> bytes:
        if ptr < 0 or length < 0 or ptr + length > self.memory_size:
            raise InvalidArgumentError(f"[{ptr}, {ptr + length}) is outside guest memory ({self.memory_size} bytes)")
        return bytes(self.memory.read(self.wasm_store, ptr, ptr + length))

    def write(self, ptr: int, data: bytes) -> None:
        if ptr < 0 or ptr + len(data) > self.memory_size:
            raise InvalidArgumentError(f"[{ptr}, {ptr + len(data)}) is outside guest memory ({self.memory_size} bytes)")
        if data:  # one copy, without the GIL (wasmtime-py's Memory.write copies into a bytearray first)
            ctypes.memmove(ctypes.addressof(self.memory.data_ptr(self.wasm_store).contents) + ptr, data, len(data))

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
            if self.failed is None:  # a guest stopped by its deadline or a trap is not called again
                self.free(ptr)

    @contextmanager
    def buffers(self, *datas: bytes) -> Iterator[list[int]]:
        """`with guest.buffers(a, b) as (pa, pb):` -- the pieces in one guest buffer (one
        allocation and one free instead of one each: a call into the guest costs ~40 us of
        wasmtime-py), each at an 8-byte aligned offset, freed at the end of the block."""
        offsets, size = [], 0
        for data in datas:
            offsets.append(size)
            size = (size + len(data) + 7) & ~7
        with self.buffer(max(size, 1)) as ptr:
            for off, data in zip(offsets, datas):
                self.write(ptr + off, data)
            yield [ptr + off for off in offsets]

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
            return self.call_checked("guest_load_model", ptr, len(gguf))

    def attach(self, model_id: int) -> None:
        """Share a host-loaded model with the guest and have it read the model's header."""
        self.host.share(model_id)
        self.call_checked("guest_attach_model", model_id, what=f"guest_attach_model({model_id})")

    # -- snapshots -----------------------------------------------------------------------
    def snapshot(self) -> "GuestSnapshot":
        """The guest's state between two calls -- its linear memory (the module's one mutable
        global, the stack pointer, is back at its initial value then) -- with the models it
        reads, to start new guests from (`Guest(snapshot=...)`) without attaching and building
        a tokenizer again.  Compiles guest.wasm with that memory as its image (~0.1 s)."""
        if self.memory is None or self.failed is not None:
            raise InvalidArgumentError(f"this guest cannot be snapshotted: {self.failed or 'it has no memory'}")
        size = self.memory_size
        pages = np.frombuffer(self.memory.read(self.wasm_store, 0, size), np.uint8).reshape(-1, _PAGE)
        used = np.flatnonzero(pages.any(axis=1))
        # runs of pages that are not all zero: a fresh memory is zeros, and pages never written stay
        # out of the image
        runs, start = [], None
        for i, page in enumerate(used.tolist()):
            if start is None:
                start = page
            if i + 1 == len(used) or used[i + 1] != page + 1:
                runs.append((start * _PAGE, pages[start:page + 1].tobytes()))
                start = None
        image = with_memory_image(_guest()[0], size, runs)  # the module this process runs
        return GuestSnapshot(size, tuple(runs), tuple(self.host.shared_models),
                             wasmtime.Module(sandbox_engine(), image))

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
            args = (name_ptr, len(raw))
            needed = self.call_checked("guest_fetch_tensor", *args, 0, 0, what=what)
            if needed == 0:
                return np.empty(0, dtype="<f4")
            with self.buffer(needed) as out:
                written = self.call_checked("guest_fetch_tensor", *args, out, needed, what=what)
                return np.frombuffer(self.memory.read(self.wasm_store, out, out + written), dtype="<f4")
