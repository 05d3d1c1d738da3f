"""The host side of the realm ABI: the `realm_*` imports, bound to a model store.

Embedding realm guests in your own Wasmtime program takes one call::

    linker = wasmtime.Linker(engine)
    host = add_realm_imports(linker, store, shared=[model_id])   # store: realm.ModelStore
    instance = linker.instantiate(wasm_store, module)
    ...
    host.close()   # removes the models the guest stored, releases the shared ones

Each import is one method of `RealmHost` named after it and registered with
`@_realm_import`; its signature is `realm.abi.IMPORTS[name]` and its contract
is written in `guest/realm_abi.h`.  Every import validates what the guest
passes -- ids, (pointer, length) pairs against the guest's *current* memory,
names, buffer sizes -- and answers a failure with its negative `Err` code.  An
import never raises into Wasmtime (that would trap the guest), and never reads
or writes guest memory outside the buffer it was given.

Adding an import: declare it in guest/realm_abi.h (REALM_IMPORT line, contract
and codes in check order), add its signature to `realm.abi.IMPORTS`, and write
the `RealmHost` method of that name under `@_realm_import`, raising `_Fail(code)`
for each refusal.  tests/test_abi_header.py fails until all three agree.

A `RealmHost` is one tenant.  Models the guest stores are owned by it (it may
remove them; `close` removes the rest); models the host shares (`shared=` or
`share()`) are held for the tenant until `close` and cannot be removed by it;
any other id is NO_MODEL to this guest.  KV caches (realm_kv_create) belong to
the guest that made them and are freed by `close` too.

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
from typing import Any, Callable, Iterable

import numpy as np
import wasmtime

from . import abi
from .abi import Err, LogLevel
from .errors import GGUFError, ModelNotFoundError
from ._compute import FORWARD_EINVAL, FORWARD_EKV_FULL
from .forward import HostModel, KVCache, UnsupportedModelError
from .store import ModelStore, StoredModel

__all__ = ["RealmHost", "GuestMemory", "add_realm_imports"]

log = logging.getLogger("realm.host")
guest_log = logging.getLogger("realm.guest")

_U32_MASK = 0xFFFF_FFFF
_I32_MAX = 0x7FFF_FFFF
_LOG_LEVELS = {LogLevel.DEBUG: logging.DEBUG, LogLevel.INFO: logging.INFO,
               LogLevel.WARNING: logging.WARNING, LogLevel.ERROR: logging.ERROR}
_VALTYPES = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64,
             "f32": wasmtime.ValType.f32, "f64": wasmtime.ValType.f64}

#: Default per-guest quota for realm_store_model.
DEFAULT_MAX_STORED_BYTES = 1 << 30
DEFAULT_MAX_STORED_MODELS = 16
#: Default per-guest quota for realm_kv_create.
DEFAULT_MAX_KV_BYTES = 1 << 30
DEFAULT_MAX_KV_CACHES = 16

_KV_IDS = itertools.count(1)  # KV cache ids are never reused within a process


class _Fail(Exception):
    """Raised inside an import to answer the guest with `code`."""

    def __init__(self, code: Err):
        super().__init__(code)
        self.code = code


class GuestMemory:
    """The calling guest's linear memory as it is during one import call.

    Pointers and lengths arrive as wasm i32 (signed in Python) and are read as
    u32.  `check` accepts [ptr, ptr + length) only inside the memory's current
    size; Python integers do not wrap, so ptr + length cannot overflow.  A guest
    that exports no memory named "memory" has no valid pointers.
    """

    __slots__ = ("_caller", "_base", "_size")

    def __init__(self, caller: wasmtime.Caller):
        self._caller = caller
        self._size: int | None = None
        self._base = 0

    @property
    def size(self) -> int:
        if self._size is None:
            mem = self._caller.get("memory")
            self._size = 0
            if isinstance(mem, wasmtime.Memory):
                self._size = mem.data_len(self._caller)
                if self._size:
                    self._base = ctypes.addressof(mem.data_ptr(self._caller).contents)
        return self._size

    @property
    def base(self) -> int:
        """The address of byte 0 of the memory (valid during this call; 0 when it has none)."""
        return self._base if self.size else 0

    def check(self, ptr: int, length: int) -> tuple[int, int]:
        """(ptr, length) as u32 once [ptr, ptr + length) is known to lie in memory; else BAD_POINTER."""
        ptr &= _U32_MASK
        length &= _U32_MASK
        if ptr + length > self.size:
            raise _Fail(Err.BAD_POINTER)
        return ptr, length

    def read(self, ptr: int, length: int) -> bytes:
        """A copy of a range `check` accepted."""
        return ctypes.string_at(self._base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes | np.ndarray) -> None:
        """Write into a range `check` accepted (and the caller sized)."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data)
            if data.nbytes:
                ctypes.memmove(self._base + ptr, data.ctypes.data, data.nbytes)
        elif data:
            ctypes.memmove(self._base + ptr, data, len(data))


_IMPORTS: dict[str, Callable[..., int]] = {}


def _realm_import(method: Callable[..., int]) -> Callable[..., int]:
    """Register a RealmHost method as the host side of the import of the same name."""
    if method.__name__ not in abi.IMPORTS:
        raise ValueError(f"{method.__name__} is not an import of realm_abi.h")
    _IMPORTS[method.__name__] = method
    return method


class RealmHost:
    """The `realm_*` imports for one guest (tenant), bound to a `ModelStore`.

    store: where models live; tensors come through its LayerCache.
    shared: ids of host-loaded models this guest may read (see `share`).
    max_stored_bytes, max_stored_models: the guest's quota for realm_store_model.
    max_kv_bytes, max_kv_caches: the guest's quota for realm_kv_create.
    threads: threads of the forward pass (None: every core this process may use).
    """

    def __init__(self, store: ModelStore, *, shared: Iterable[int] = (),
                 max_stored_bytes: int = DEFAULT_MAX_STORED_BYTES,
                 max_stored_models: int = DEFAULT_MAX_STORED_MODELS,
                 max_kv_bytes: int = DEFAULT_MAX_KV_BYTES,
                 max_kv_caches: int = DEFAULT_MAX_KV_CACHES,
                 threads: int | None = None):
        self.store = store
        self.max_stored_bytes = max_stored_bytes
        self.max_stored_models = max_stored_models
        self.max_kv_bytes = max_kv_bytes
        self.max_kv_caches = max_kv_caches
        self.threads = threads
        #: the last message the guest logged at REALM_LOG_ERROR (a reason behind an error code)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._owned: dict[int, int] = {}  # model id -> bytes stored
        self._owned_bytes = 0
        self._shared: set[int] = set()
        self._closed = False
        # model id -> its HostModel (or the UnsupportedModelError it raised); only visible models
        self._forward: dict[int, HostModel | UnsupportedModelError] = {}
        self._kv: dict[int, KVCache] = {}
        self._kv_bytes = 0
        for model_id in shared:
            self.share(model_id)

    # -- the host's API -------------------------------------------------------------
    def define(self, linker: wasmtime.Linker) -> "RealmHost":
        """Define every import of `abi.IMPORTS` in `linker` (module "env"), bound to this host."""
        missing = set(abi.IMPORTS) - set(_IMPORTS)
        if missing:
            raise RuntimeError(f"realm.host implements no {sorted(missing)}")
        for name, sig in abi.IMPORTS.items():
            ty = wasmtime.FuncType([_VALTYPES[t]() for t in sig.params], [_VALTYPES[t]() for t in sig.results])
            linker.define_func(abi.IMPORT_MODULE, name, ty, self._bind(name, _IMPORTS[name]),
                               access_caller=True)
        return self

    def share(self, model_id: int) -> None:
        """Let the guest read a host-loaded model; it stays readable for the guest until `close`,
        even if the host removes it from the store meanwhile.  Raises ModelNotFoundError."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this RealmHost is closed")
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

    def close(self) -> None:
        """Remove the models the guest stored, release the shared ones and free the guest's KV
        caches.  Afterwards every model id is NO_MODEL to the guest and realm_store_model and
        realm_kv_create answer LIMIT."""
        with self._lock:
            self._closed = True
            owned, shared = list(self._owned), list(self._shared)
            self._owned.clear()
            self._shared.clear()
            self._owned_bytes = 0
            forward = list(self._forward.values())
            self._forward.clear()
            self._kv.clear()
            self._kv_bytes = 0
        for model in forward:
            if isinstance(model, HostModel):
                model.close()
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
    def _bind(self, name: str, method: Callable[..., int]) -> Callable[..., int]:
        def call(caller: wasmtime.Caller, *args: int) -> int:
            try:
                return method(self, GuestMemory(caller), *args)
            except _Fail as fail:
                return int(fail.code)
            except Exception:  # a host bug must not trap the guest, nor reach Wasmtime
                log.exception("realm import %s%r failed", name, args)
                return int(Err.INTERNAL)
        call.__name__ = name
        return call

    def _model(self, model_id: int) -> StoredModel:
        with self._lock:
            visible = model_id in self._owned or model_id in self._shared
        if not visible:
            raise _Fail(Err.NO_MODEL)
        try:
            return self.store.get(model_id)
        except ModelNotFoundError:
            raise _Fail(Err.NO_MODEL) from None

    def _host_model(self, model_id: int) -> HostModel:
        """The forward pass of a visible model (built on first use); NO_MODEL or UNSUPPORTED."""
        model = self._forward.get(model_id)  # present only while the model is visible
        if model is None:
            self._model(model_id)
            try:
                model = HostModel(self.store, model_id, threads=self.threads)
            except UnsupportedModelError as exc:
                log.info("model %d cannot run: %s", model_id, exc)
                model = exc
            except ModelNotFoundError:  # removed meanwhile
                raise _Fail(Err.NO_MODEL) from None
            with self._lock:
                visible = not self._closed and (model_id in self._owned or model_id in self._shared)
                if visible:
                    model = self._forward.setdefault(model_id, model)
            if not visible:
                if isinstance(model, HostModel):
                    model.close()
                raise _Fail(Err.NO_MODEL)
        if isinstance(model, UnsupportedModelError):
            raise _Fail(Err.UNSUPPORTED)
        return model

    def _kv_cache(self, kv_id: int) -> KVCache:
        kv = self._kv.get(kv_id)
        if kv is None:
            raise _Fail(Err.NO_KV_CACHE)
        return kv

    @staticmethod
    def _values(mem: GuestMemory, ptr: int, count: int) -> int:
        """ptr as u32 once `count` 4-byte values there lie in memory; else BAD_POINTER."""
        ptr, _ = mem.check(ptr, 4 * (count & _U32_MASK))
        return ptr

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

    @staticmethod
    def _forward_code(rc: int) -> int:
        """A C forward call's result as an import's answer."""
        if rc == 0:
            return 0
        if rc == FORWARD_EKV_FULL:
            raise _Fail(Err.CONTEXT_FULL)
        if rc == FORWARD_EINVAL:  # an argument only the C code checks: a gap, a token id
            raise _Fail(Err.BAD_ARGUMENT)
        raise RuntimeError(f"forward pass failed with code {rc}")

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
        """Copy a whole GGUF out of guest memory into the store; the new id is owned by the guest."""
        ptr, length = mem.check(gguf_ptr, gguf_len)
        with self._lock:  # reserve the quota before the (slow) parse
            if (self._closed or len(self._owned) >= self.max_stored_models
                    or self._owned_bytes + length > self.max_stored_bytes):
                raise _Fail(Err.LIMIT)
            self._owned_bytes += length
        model_id: int | None = None
        try:
            model_id = self.store.store_bytes(mem.read(ptr, length))
        except GGUFError as exc:
            log.info("guest stored a bad GGUF: %s", exc)
        finally:
            with self._lock:
                if model_id is None:
                    self._owned_bytes -= length
                else:
                    self._owned[model_id] = length
        if model_id is None:
            raise _Fail(Err.BAD_GGUF)
        return model_id

    @_realm_import
    def realm_get_tensor(self, mem: GuestMemory, model_id: int, name_ptr: int, name_len: int,
                         out_ptr: int, out_max_len: int) -> int:
        """A tensor as f32 through the store's LayerCache."""
        model = self._model(model_id)
        name_ptr, name_len = mem.check(name_ptr, name_len)
        out_ptr, out_max_len = mem.check(out_ptr, out_max_len)
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
            raise RuntimeError(f"the store returned {values.dtype} x {values.size} for {name!r}")
        mem.write(out_ptr, values)
        return needed

    @_realm_import
    def realm_get_model_info(self, mem: GuestMemory, model_id: int, count_ptr: int, size_ptr: int) -> int:
        """Tensor count (u32) and total tensor bytes (u64)."""
        model = self._model(model_id)
        count_ptr, _ = mem.check(count_ptr, 4)
        size_ptr, _ = mem.check(size_ptr, 8)
        count = len(model.tensors)
        if count > _U32_MASK:
            raise _Fail(Err.TOO_LARGE)
        mem.write(count_ptr, struct.pack("<I", count))
        mem.write(size_ptr, struct.pack("<Q", model.total_size))
        return abi.OK

    @_realm_import
    def realm_remove_model(self, mem: GuestMemory, model_id: int) -> int:
        """Remove a model the guest stored (shared ones are DENIED)."""
        with self._lock:
            if model_id in self._shared:
                raise _Fail(Err.DENIED)
            if model_id not in self._owned:
                raise _Fail(Err.NO_MODEL)
            self._owned_bytes -= self._owned.pop(model_id)
            forward = self._forward.pop(model_id, None)
        if isinstance(forward, HostModel):
            forward.close()  # the guest's KV caches of it keep its weights until freed
        try:
            self.store.remove(model_id)
        except ModelNotFoundError:  # the host removed it first
            raise _Fail(Err.NO_MODEL) from None
        return abi.OK

    @_realm_import
    def realm_get_metadata(self, mem: GuestMemory, model_id: int, out_ptr: int, out_max_len: int) -> int:
        """The model's GGUF header: bytes 0 to the start of tensor data."""
        model = self._model(model_id)
        out_ptr, out_max_len = mem.check(out_ptr, out_max_len)
        header = model.header
        if self._fit(out_max_len, len(header)):
            mem.write(out_ptr, header)
        return len(header)

    @_realm_import
    def realm_log(self, mem: GuestMemory, level: int, msg_ptr: int, msg_len: int) -> int:
        """A guest message to the "realm.guest" logger."""
        if level not in _LOG_LEVELS:
            raise _Fail(Err.BAD_ARGUMENT)
        text = self._text(mem, *mem.check(msg_ptr, msg_len), abi.LOG_MAX)
        if level == LogLevel.ERROR:
            self.last_error = text
        guest_log.log(_LOG_LEVELS[LogLevel(level)], "%s", text)
        return abi.OK

    # -- the forward pass ------------------------------------------------------------
    @_realm_import
    def realm_forward_embedding(self, mem: GuestMemory, model_id: int, tokens_ptr: int, n_tokens: int,
                                out_ptr: int) -> int:
        """Embedding rows of token ids, written into guest memory by the C code."""
        fm = self._host_model(model_id)._fm
        n_tokens &= _U32_MASK
        tokens_ptr = self._values(mem, tokens_ptr, n_tokens)
        out_ptr, _ = mem.check(out_ptr, 4 * n_tokens * fm.n_embd)
        self._aligned(tokens_ptr, out_ptr)
        if n_tokens == 0:
            raise _Fail(Err.BAD_ARGUMENT)
        base = mem.base
        self._forward_code(fm._embed_at(base + tokens_ptr, n_tokens, base + out_ptr))
        return n_tokens * fm.n_embd

    @_realm_import
    def realm_forward_layer(self, mem: GuestMemory, model_id: int, layer_idx: int, hidden_ptr: int,
                            hidden_len: int, position: int, kv_cache_id: int, out_ptr: int) -> int:
        """One transformer layer on guest memory in place, K and V into the guest's KV cache."""
        fm = self._host_model(model_id)._fm
        kv = self._kv_cache(kv_cache_id)
        hidden_len &= _U32_MASK
        hidden_ptr = self._values(mem, hidden_ptr, hidden_len)
        out_ptr = self._values(mem, out_ptr, hidden_len)
        layer_idx &= _U32_MASK
        if layer_idx >= fm.n_layer or kv.model is not fm:
            raise _Fail(Err.BAD_ARGUMENT)
        self._aligned(hidden_ptr, out_ptr)
        n_tokens = self._rows(hidden_len, fm.n_embd)
        base = mem.base
        self._forward_code(kv._run_layer(fm, layer_idx, base + hidden_ptr, n_tokens, position & _U32_MASK,
                                         base + out_ptr))
        return hidden_len

    @_realm_import
    def realm_forward_lm_head(self, mem: GuestMemory, model_id: int, hidden_ptr: int, hidden_len: int,
                              out_ptr: int, out_max_len: int) -> int:
        """Logits of hidden rows (final norm + output projection), written by the C code."""
        fm = self._host_model(model_id)._fm
        hidden_len &= _U32_MASK
        hidden_ptr = self._values(mem, hidden_ptr, hidden_len)
        out_ptr = self._values(mem, out_ptr, out_max_len)
        self._aligned(hidden_ptr, out_ptr)
        n_rows = self._rows(hidden_len, fm.n_embd)
        needed = n_rows * fm.n_vocab
        if not self._fit(out_max_len & _U32_MASK, needed):
            return needed
        base = mem.base
        self._forward_code(fm._lm_head_at(base + hidden_ptr, n_rows, base + out_ptr))
        return needed

    @_realm_import
    def realm_kv_create(self, mem: GuestMemory, model_id: int, n_ctx: int) -> int:
        """A KV cache for the guest (f16 rows), within its quota."""
        model = self._host_model(model_id)
        n_ctx &= _U32_MASK
        train = model.config.n_ctx_train
        if n_ctx == 0 or (train and n_ctx > train):
            raise _Fail(Err.BAD_ARGUMENT)
        try:
            size = model.kv_cache_bytes(n_ctx)
        except ValueError:
            raise _Fail(Err.BAD_ARGUMENT) from None
        with self._lock:  # reserve the quota before allocating
            if (self._closed or len(self._kv) >= self.max_kv_caches
                    or self._kv_bytes + size > self.max_kv_bytes):
                raise _Fail(Err.LIMIT)
            self._kv_bytes += size
        try:
            kv = model.new_kv_cache(n_ctx, max_bytes=size)
        except BaseException:
            with self._lock:
                self._kv_bytes -= size
            raise
        kv_id = next(_KV_IDS)
        with self._lock:
            if self._closed or kv_id > _I32_MAX:  # closed meanwhile, or 2^31 caches made
                self._kv_bytes -= size
                raise _Fail(Err.LIMIT)
            self._kv[kv_id] = kv
        return kv_id

    @_realm_import
    def realm_kv_free(self, mem: GuestMemory, kv_cache_id: int) -> int:
        """Free one of the guest's KV caches."""
        with self._lock:
            kv = self._kv.pop(kv_cache_id, None)
            if kv is None:
                raise _Fail(Err.NO_KV_CACHE)
            self._kv_bytes -= kv.nbytes
        return abi.OK

    @_realm_import
    def realm_kv_truncate(self, mem: GuestMemory, kv_cache_id: int, n_tokens: int) -> int:
        """Drop positions >= n_tokens; returns the positions kept."""
        kv = self._kv_cache(kv_cache_id)
        try:
            kv.truncate(n_tokens & _U32_MASK)
        except RuntimeError:  # in use by a forward call of another thread
            raise _Fail(Err.BAD_ARGUMENT) from None
        return kv.length

    # -- text out ----------------------------------------------------------------------
    #: Receives each piece of text the guest streams (realm_emit_text); a true return value
    #: asks the guest to stop generating.  None: the text is dropped.
    text_sink: Callable[[str], bool | None] | None = None

    @_realm_import
    def realm_emit_text(self, mem: GuestMemory, text_ptr: int, text_len: int) -> int:
        """A piece of generated text, handed to `text_sink`."""
        text = self._text(mem, *mem.check(text_ptr, text_len), abi.TEXT_MAX)
        sink = self.text_sink
        return abi.EMIT_STOP if sink is not None and sink(text) else abi.OK


def add_realm_imports(linker: wasmtime.Linker, store: ModelStore, **options: Any) -> RealmHost:
    """Define every `realm_*` import in `linker`, served from `store`; returns the `RealmHost`
    (one tenant: call its `close()` when the guest is done).  `options` go to `RealmHost`."""
    return RealmHost(store, **options).define(linker)
