"""The host's model store: GGUF models kept quantized in memory, shared by every tenant.

`ModelStore.load(path)` memory-maps a file (a second load of the same file
shares the mapping) and `store_bytes(data)` keeps a private copy of a GGUF a
guest sent; both return a fresh model id that is never reused.  Tensors are
`QuantizedTensor`s: zero-copy views of the quantized bytes.  Float32 copies
come from `get_tensor_f32`, through the store's `LayerCache`.

Lifetime: a model has one reference for being in the store plus one per
holder (`acquire`, `retain`, a pending `prefetch`).  `remove` drops the store's
reference and refuses new holders; the model stays readable, by id too, until
the last holder releases it, then its cache entries go and its mapping is
closed (pages still viewed by a caller's arrays stay mapped until those arrays
are garbage-collected, so nothing can read freed memory).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from .cache import LayerCache
from .cores import run_on_cores
from .limits import HostBudget
from .errors import ArgumentTypeError, ClosedError, ModelNotFoundError, TensorNotFoundError, file_error
from .quants import GGMLType, can_dequantize, dequantize
from .reader import GGUFFile, TensorInfo
from .threads import check_threads, usable_cores

#: LayerCache budget of a store created without one.
DEFAULT_CACHE_BYTES = 1 << 30


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """One tensor of a stored model, still in its file format.

    shape: numpy order, outermost first (GGUF's `ne` reversed).
    data: read-only uint8 view of the tensor's bytes in the mapping (zero-copy),
        shaped like `shape` with the last axis in bytes (as gguf-py's views).
    offset: where the data starts in the file.
    """

    name: str
    dtype: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray = field(repr=False)
    offset: int = field(repr=False)
    n_elements: int = field(repr=False)

    @classmethod
    def from_file(cls, file: GGUFFile, info: TensorInfo) -> "QuantizedTensor":
        """The tensor `info` of an open file, viewing its bytes in place."""
        return cls(info.name, info.dtype, info.shape, file.view(info), info.offset, info.n_elements)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def dequantizable(self) -> bool:
        """Whether realm has a kernel for this tensor's type."""
        return can_dequantize(self.dtype)

    def dequantize(self, *, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        """The tensor as float32 of shape `shape` (see `realm.dequantize`)."""
        return dequantize(self.data, self.dtype, shape=self.shape, out=out, threads=threads)


def _private_copy(data: Any) -> np.ndarray:
    """A read-only uint8 copy of a buffer; numpy copies large ones without holding the GIL, so
    other threads (other tenants' calls) go on meanwhile."""
    src = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(src.size, dtype=np.uint8)
    np.copyto(out, src)
    out.flags.writeable = False
    return out


def _file_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies a file's contents for sharing a mapping: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Mapping:
    """One parsed GGUF and its tensors, shared by every model loaded from it."""

    def __init__(self, file: GGUFFile):
        self.file = file
        self.key = None if file.stat is None else _file_key(file.stat)
        self.tensors: Mapping[str, QuantizedTensor] = MappingProxyType({
            name: QuantizedTensor.from_file(file, info) for name, info in file.tensors.items()
        })
        self.header = file.header
        self.total_size = file.tensor_data_size
        # host memory beyond a file's page cache: a buffer the store keeps, and the parsed header
        self.host_bytes = file.held_bytes + (file.size if file.path is None else 0)
        self.models = 0  # models (ids) using this mapping

    def close(self) -> None:
        self.tensors = MappingProxyType({})  # drop our views so the mmap can close now
        self.file.close()


class StoredModel:
    """A model in the store.  Everything here is read-only and safe to share between threads."""

    def __init__(self, model_id: int, mapping: _Mapping):
        file = mapping.file
        self.id = model_id
        self.path: Path | None = file.path
        self.metadata: Mapping[str, Any] = file.metadata
        self.tensors: Mapping[str, QuantizedTensor] = mapping.tensors
        #: the file's bytes from 0 up to the start of tensor data (what a guest parses)
        self.header: bytes = mapping.header
        self.version: int = file.version
        self.alignment: int = file.alignment
        self.data_offset: int = file.data_offset
        self.file_size: int = file.size
        #: bytes of tensor data (padding excluded)
        self.total_size: int = mapping.total_size
        #: host memory the model keeps beyond a file's page cache (an upper estimate): the
        #: buffer of a model stored from bytes, and the parsed header of any model
        self.host_bytes: int = mapping.host_bytes

    @property
    def architecture(self) -> str:
        """`general.architecture` ("" if the file has none)."""
        return str(self.metadata.get("general.architecture", ""))

    def tensor(self, name: str) -> QuantizedTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise TensorNotFoundError(f"model {self.id} has no tensor {name!r}") from None

    def info(self) -> "ModelInfo":
        by_type: dict[str, int] = {}
        for t in self.tensors.values():
            by_type[t.dtype.name] = by_type.get(t.dtype.name, 0) + t.nbytes
        return ModelInfo(
            id=self.id, path=self.path, architecture=self.architecture,
            tensor_count=len(self.tensors), total_size=self.total_size, file_size=self.file_size,
            n_elements=sum(t.n_elements for t in self.tensors.values()), version=self.version,
            bytes_by_type=MappingProxyType(dict(sorted(by_type.items(), key=lambda kv: -kv[1]))),
        )

    def __repr__(self) -> str:
        return f"StoredModel(id={self.id}, {self.architecture!r}, {len(self.tensors)} tensors, path={self.path})"


@dataclass(frozen=True)
class ModelInfo:
    """A summary of a stored model."""

    id: int
    path: Path | None
    architecture: str
    tensor_count: int
    total_size: int  # bytes of tensor data
    file_size: int
    n_elements: int  # parameters
    version: int  # GGUF version
    bytes_by_type: Mapping[str, int]  # type name -> bytes of tensor data, largest first


class _Entry:
    __slots__ = ("model", "mapping", "holds", "removed")

    def __init__(self, model: StoredModel, mapping: _Mapping):
        self.model = model
        self.mapping = mapping
        self.holds = 0  # acquire/retain/prefetch references
        self.removed = False  # True once remove() dropped the store's own reference


class ModelStore:
    """Thread-safe registry of loaded models (see the module docstring for lifetimes).

    cache: the LayerCache of f32 tensors (default: DEFAULT_CACHE_BYTES).
    budget: the `HostBudget` all tenants of this store share for their KV caches and stored
        models (default: half the machine's memory).
    """

    def __init__(self, cache: LayerCache | None = None, *, budget: HostBudget | None = None):
        self.cache: LayerCache = cache if cache is not None else LayerCache(DEFAULT_CACHE_BYTES)
        self.budget: HostBudget = budget if budget is not None else HostBudget()
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._mappings: dict[tuple, _Mapping] = {}
        self._next_id = 1
        self._prefetcher: ThreadPoolExecutor | None = None
        self._closed = False
        self._on_remove: list[Callable[[int], None]] = []

    # -- adding models --------------------------------------------------------
    def load(self, path: str | os.PathLike) -> int:
        """Memory-map a GGUF file and return a new model id.

        A file already mapped by this store (same device, inode, size and mtime)
        shares that mapping.  Raises `GGUFError` for a bad file, `OSError` if it
        cannot be opened.
        """
        try:
            key = _file_key(os.stat(path))
        except OSError as exc:
            raise file_error(exc, path) from None
        with self._lock:
            self._check_open()
            mapping = self._mappings.get(key)
            if mapping is not None:
                return self._register(mapping)
        fresh = _Mapping(GGUFFile.open(path))  # parse outside the lock
        with self._lock:
            if self._closed:
                mapping = None
            else:
                mapping = self._mappings.setdefault(fresh.key, fresh)  # another thread may have won
                model_id = self._register(mapping)
        if mapping is not fresh:
            fresh.close()
        if mapping is None:
            self._check_open()
        return model_id

    def store_bytes(self, data: Any) -> int:
        """Keep a GGUF held in memory (e.g. sent by a guest) and return a new model id.

        The store keeps its own copy (an immutable `bytes` object is kept as is;
        the copy runs without the GIL), so the caller may reuse its buffer at once.
        """
        try:
            view = memoryview(data)
        except TypeError:
            raise ArgumentTypeError(f"store_bytes needs a bytes-like object, not {type(data).__name__}") from None
        owned = data if type(data) is bytes else _private_copy(view)
        mapping = _Mapping(GGUFFile.from_buffer(owned))
        with self._lock:
            self._check_open()
            return self._register(mapping)

    # -- lookups --------------------------------------------------------------
    def get(self, model_id: int) -> StoredModel:
        """The model with this id (removed models stay readable while held)."""
        with self._lock:
            return self._entry(model_id).model

    def get_tensor(self, model_id: int, name: str) -> QuantizedTensor:
        return self.get(model_id).tensor(name)

    def get_tensor_f32(self, model_id: int, name: str, *, threads: int | None = None) -> np.ndarray:
        """The tensor as a read-only float32 array: a cache hit, or dequantized and cached.  A
        dequantization on several threads runs on realm's runners (`realm.cores`), as passes do:
        it waits for its cores rather than crowd a running pass, and the caller's thread (a
        tenant's import call) does not become the master of an OpenMP team of its own."""
        tensor = self.get_tensor(model_id, name)
        n = check_threads(threads)

        def load() -> np.ndarray:
            n_threads = n or usable_cores()
            if n_threads == 1:
                return tensor.dequantize(threads=1)
            return run_on_cores(n_threads, lambda: tensor.dequantize(threads=n_threads))

        arr = self.cache.get_or_load((model_id, name), load)
        if not self._is_live(model_id):  # released while we loaded: don't leave a stray entry
            self.cache.drop_model(model_id)
        return arr

    def info(self, model_id: int) -> ModelInfo:
        return self.get(model_id).info()

    def ids(self) -> list[int]:
        """Ids of the models in the store (removed ones excluded), ascending."""
        with self._lock:
            return sorted(i for i, e in self._entries.items() if not e.removed)

    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            e = self._entries.get(model_id)  # type: ignore[arg-type]
            return e is not None and not e.removed

    def __len__(self) -> int:
        return len(self.ids())

    # -- lifetimes ------------------------------------------------------------
    def remove(self, model_id: int) -> None:
        """Take the model out of the store.  Holders keep it until they release it."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None or entry.removed:
                raise ModelNotFoundError(f"no model with id {model_id}")
            entry.removed = True
            _, mapping = self._release_locked(model_id, entry)
            del entry  # our last reference to its views, so the mapping can close now
        self.cache.drop_model(model_id)
        self._removed([model_id])
        if mapping is not None:
            mapping.close()

    def on_remove(self, callback: Callable[[int], None]) -> None:
        """Call callback(model_id) once a model leaves the store (`remove`, or `close` for every
        model still in it), so what keeps state per model can let it go."""
        with self._lock:
            self._on_remove.append(callback)

    def _removed(self, model_ids: Iterable[int]) -> None:
        with self._lock:
            callbacks = list(self._on_remove)
        for model_id in model_ids:
            for callback in callbacks:
                callback(model_id)

    def retain(self, model_id: int, *, held: bool = False) -> StoredModel:
        """Hold a reference (pair with `release`); refused once the model was removed, unless
        `held`: the caller already holds the model (a retain it has not released), so it is
        still here and one more reference to it is no new holder."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None or (entry.removed and not (held and entry.holds)):
                raise ModelNotFoundError(f"no model with id {model_id}")
            entry.holds += 1
            return entry.model

    def release(self, model_id: int) -> None:
        """Drop a reference taken by `retain`."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None or entry.holds == 0:
                raise ModelNotFoundError(f"model {model_id} is not held")
            entry.holds -= 1
            gone, mapping = self._release_locked(model_id, entry)
            del entry
        if gone:
            self.cache.drop_model(model_id)
        if mapping is not None:
            mapping.close()

    @contextmanager
    def acquire(self, model_id: int) -> Iterator[StoredModel]:
        """`with store.acquire(mid) as model:` holds the model for the block."""
        model = self.retain(model_id)
        try:
            yield model
        finally:
            del model
            self.release(model_id)

    # -- prefetch -------------------------------------------------------------
    def prefetch(self, model_id: int, names: Iterable[str] | str, *, threads: int | None = 1,
                 fill_cache: bool = True) -> Future:
        """Warm tensors on a background thread and return at once.

        Asks the kernel to page the tensors' bytes in, then (with `fill_cache`)
        dequantizes each into the cache, so a later `get_tensor_f32` is a hit (or
        waits for the load already under way rather than repeating it).  Tensors
        too large for the cache, or of a type realm cannot dequantize, are only
        paged in.  `threads` is the dequantizer's thread count (1 by default, so
        the warming does not crowd the caller's own work).  Unknown names raise
        here; the returned Future completes when the warming is done.  Requests
        run one after another, in order.
        """
        names = [names] if isinstance(names, str) else list(names)
        with self._lock:
            self._check_open()
            entry = self._entry(model_id)
            tensors = [entry.model.tensor(n) for n in names]
            entry.holds += 1  # keeps the model alive until the warming is done
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realm-prefetch")
            executor = self._prefetcher
        try:
            return executor.submit(self._warm, model_id, entry, tensors, threads, fill_cache)
        except RuntimeError:  # the store closed in between
            self.release(model_id)
            raise

    def _warm(self, model_id: int, entry: _Entry, tensors: list[QuantizedTensor],
              threads: int | None, fill_cache: bool) -> None:
        try:
            file = entry.mapping.file
            for t in tensors:
                file.page_in(t.offset, t.nbytes)
            if fill_cache:
                for t in tensors:
                    if t.dequantizable and 4 * t.n_elements <= self.cache.max_bytes:
                        self.get_tensor_f32(model_id, t.name, threads=threads)
        finally:
            try:
                self.release(model_id)
            except ModelNotFoundError:  # the store was closed meanwhile
                pass

    # -- shutdown -------------------------------------------------------------
    def close(self) -> None:
        """Stop prefetching and drop every model, held or not."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._prefetcher = self._prefetcher, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            entries, self._entries = self._entries, {}
            model_ids = list(entries)
            present = [i for i, e in entries.items() if not e.removed]
            mappings = list({id(e.mapping): e.mapping for e in entries.values()}.values())
            self._mappings.clear()
            del entries  # drop our references to the views before closing the mappings
        for model_id in model_ids:
            self.cache.drop_model(model_id)
        self._removed(present)
        for mapping in mappings:
            mapping.close()

    def __enter__(self) -> "ModelStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelStore({len(self)} models, {self.cache!r})"

    # -- internals (the *_locked ones need self._lock) ------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the model store is closed")

    def _register(self, mapping: _Mapping) -> int:
        model_id = self._next_id
        self._next_id += 1
        mapping.models += 1
        self._entries[model_id] = _Entry(StoredModel(model_id, mapping), mapping)
        return model_id

    def _entry(self, model_id: int) -> _Entry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(f"no model with id {model_id}")
        return entry

    def _is_live(self, model_id: int) -> bool:
        with self._lock:
            return model_id in self._entries

    def _release_locked(self, model_id: int, entry: _Entry) -> tuple[bool, _Mapping | None]:
        """Forget the model if nothing references it any more.

        Returns (forgotten, its mapping if no other model uses it: the caller closes it).
        """
        if entry.holds or not entry.removed:
            return False, None
        del self._entries[model_id]
        mapping = entry.mapping
        mapping.models -= 1
        if mapping.models:
            return True, None
        if mapping.key is not None and self._mappings.get(mapping.key) is mapping:
            del self._mappings[mapping.key]
        return True, mapping
