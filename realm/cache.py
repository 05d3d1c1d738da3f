"""LayerCache: a thread-safe, byte-bounded LRU of dequantized tensors.

Keys are `(model_id, tensor_name)` tuples (any hashable works, but
`drop_model` looks at `key[0]`).  Values are numpy arrays; the cache owns them
and makes them read-only, so what one caller gets cannot be changed under
another, and a hit returns the stored array itself (no copy).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import numpy as np

from .errors import ArgumentTypeError, InvalidArgumentError


class _Pending:
    """A load in progress; other threads asking for the same key wait on it."""

    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: np.ndarray | None = None
        self.error: BaseException | None = None


class LayerCache:
    """An LRU of arrays holding at most `max_bytes` bytes of array data.

    * `get(key)` returns the array or None; `put(key, arr)` stores one;
      `get_or_load(key, loader)` does both, calling `loader()` at most once per
      miss even when several threads miss the same key at once.
    * An array larger than `max_bytes` is handed back but never stored.
    * Least-recently-used entries are evicted first.
    * Stats: a *hit* is a lookup served without loading, a *miss* one that found
      nothing (and, in `get_or_load`, loaded).
    """

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
            raise ArgumentTypeError(f"max_bytes must be an int, not {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise InvalidArgumentError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()  # oldest first
        self._pending: dict[Hashable, _Pending] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    # -- lookups --------------------------------------------------------------
    def get(self, key: Hashable) -> np.ndarray | None:
        """The cached array for `key` (now most recently used), or None."""
        with self._lock:
            arr = self._entries.get(key)
            if arr is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return arr

    def put(self, key: Hashable, arr: np.ndarray) -> np.ndarray:
        """Store `arr` under `key` (replacing any entry) and return the stored array.

        The cache takes ownership: the array is made read-only.  A view, or a
        non-contiguous array, is copied first so the bytes counted are the bytes
        held.  An array larger than `max_bytes` is returned without being stored.
        """
        arr = self._own(arr)
        with self._lock:
            self._store(key, arr)
        return arr

    def get_or_load(self, key: Hashable, loader: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for `key`, or `loader()`'s result, cached.

        Concurrent misses on one key run `loader` once; the others wait for it
        (and count as hits).  If `loader` raises, every waiter gets the error.
        """
        with self._lock:
            arr = self._entries.get(key)
            if arr is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return arr
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending()
                self._misses += 1
                loading = True
            else:
                self._hits += 1
                loading = False

        if not loading:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            assert pending.value is not None
            return pending.value

        try:
            arr = self._own(loader())
        except BaseException as exc:
            pending.error = exc
            with self._lock:
                del self._pending[key]
            pending.done.set()
            raise
        pending.value = arr
        with self._lock:
            del self._pending[key]
            self._store(key, arr)
        pending.done.set()
        return arr

    # -- removal --------------------------------------------------------------
    def drop_model(self, model_id: Any) -> int:
        """Drop every entry whose key is `(model_id, ...)`; returns how many went."""
        with self._lock:
            doomed = [k for k in self._entries if isinstance(k, tuple) and k and k[0] == model_id]
            for k in doomed:
                self._bytes -= self._entries.pop(k).nbytes
            return len(doomed)

    def discard(self, key: Hashable) -> bool:
        """Drop one entry if present; True if it was."""
        with self._lock:
            arr = self._entries.pop(key, None)
            if arr is None:
                return False
            self._bytes -= arr.nbytes
            return True

    def clear(self) -> None:
        """Drop every entry (statistics are kept)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    # -- introspection --------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate (0.0 before any lookup), evictions,
        current_bytes, max_bytes and entries, read atomically."""
        with self._lock:
            lookups = self._hits + self._misses
            return {
                "hits": self._hits,
                "misses": self._misses,
                "hit_rate": self._hits / lookups if lookups else 0.0,
                "evictions": self._evictions,
                "current_bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "entries": len(self._entries),
            }

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first (does not touch the LRU order)."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        s = self.stats()
        return (f"LayerCache({s['current_bytes']}/{s['max_bytes']} bytes, {s['entries']} entries, "
                f"hit rate {s['hit_rate']:.1%})")

    # -- internals (called with the lock held, except _own) ---------------------
    @staticmethod
    def _own(arr: np.ndarray) -> np.ndarray:
        if not isinstance(arr, np.ndarray):
            raise ArgumentTypeError(f"the cache holds numpy arrays, not {type(arr).__name__}")
        if arr.base is not None or not arr.flags.c_contiguous:
            arr = np.array(arr, order="C", copy=True)
        arr.flags.writeable = False
        return arr

    def _store(self, key: Hashable, arr: np.ndarray) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        if arr.nbytes > self.max_bytes:
            return
        while self._bytes + arr.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            self._evictions += 1
        self._entries[key] = arr
        self._bytes += arr.nbytes
