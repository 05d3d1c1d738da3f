"""Fresh float32 arrays for `dequantize`'s results, on transparent huge pages when they are large.

A fresh array is fresh memory: the kernel zeroes each page when it is first written.
With 4 KiB pages that is one page fault per 4 KiB, and the kernel's OpenMP threads,
writing the array for the first time, queue on the fault path; a 32 MiB result cost
more in faults than in dequantizing.  With 2 MiB pages the faults are 512 times fewer
(the zeroing itself stays, and bounds what a fresh array can cost).

NumPy already asks for huge pages on its large allocations, but glibc's mapping is not
2 MiB aligned, and its unaligned ends fall back to 4 KiB pages.  So an array of at least
`HUGE_MIN_BYTES` is an anonymous private mapping of its own, 2 MiB aligned, with
madvise(MADV_HUGEPAGE).  Below that size glibc often hands back memory freed a moment
ago, already faulted in, which no fresh mapping can beat; and at that size and above
glibc maps fresh memory for every allocation anyway.

Where the OS offers no transparent huge pages (not Linux, or `never` in
/sys/kernel/mm/transparent_hugepage/enabled) every array comes from `np.empty`.

The result is an ordinary writable, C-contiguous, aligned float32 array whose `base`
is the `mmap.mmap` holding its memory: pickling, copying and views behave as for any
array; when the last array using the mapping is garbage collected, the mapping goes to
the pool below or is unmapped.  It does not own its data (`flags.owndata` is False), so `ndarray.resize` refuses it.

Recycling.  Zeroing is the kernel's, per fresh page, and costs about as much as
dequantizing into the page, so a mapping is kept for reuse once nothing can reach it:
when the last array viewing a result is garbage collected its mapping, already faulted
in, goes to a small pool, and the next result of a size that fits is made on it, with no
page fault (`dequantize` in a loop that drops each result runs at the speed of `out=`).
A recycled result is uninitialized, as `np.empty`'s is; `dequantize` overwrites all of it.
 - A mapping is reused only when no array, view, memoryview or other buffer export of it
   is left (a view that outlives its result keeps the mapping its own): the pool's
   reference to its `mmap` must be the only one (`sys.getrefcount`).
 - Bounded: at most `POOL_MAX_ENTRIES` mappings and `POOL_MAX_BYTES` bytes (256 MiB or a
   sixteenth of physical memory, the lower), the least recently returned dropped first; a
   mapping larger than its bound alone is unmapped as before.  A mapping serves a result
   only when at most a quarter (2 MiB for small ones) of its huge pages would go unused.
 - Memory in the pool stays resident; `release()` unmaps all of it.
 - Results that are kept (a list of every tensor of a model) never return, so each one is
   fresh memory and pays its page faults: the pool helps only code that lets results go.
"""

from __future__ import annotations

import collections
import mmap
import os
import sys
import threading
import weakref
from typing import Sequence

import numpy as np

__all__ = ["HUGE_MIN_BYTES", "POOL_MAX_BYTES", "POOL_MAX_ENTRIES", "empty_float32", "huge_pages_available",
           "pooled_bytes", "release"]

HUGE_PAGE = 2 << 20
#: Arrays of at least this many bytes get a 2 MiB aligned mapping of their own: glibc's
#: largest mmap threshold (32 MiB on 64-bit), above which it maps fresh memory every time.
HUGE_MIN_BYTES = 32 << 20



def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


#: The most bytes of mappings the pool keeps for reuse: 256 MiB (the largest float32 matrix of
#: an 8B model, 14336 x 4096, is 224 MiB) or a sixteenth of physical memory, whichever is lower.
POOL_MAX_BYTES = min(256 << 20, (_physical_memory() or 0) // 16 or 256 << 20)
#: The most mappings the pool keeps: a few threads' results, or the few shapes of a layer.
POOL_MAX_ENTRIES = 4

_available: bool | None = None


def huge_pages_available() -> bool:
    """Whether madvise(MADV_HUGEPAGE) can give anonymous memory huge pages here (checked once)."""
    global _available
    if _available is None:
        _available = _probe()
    return _available


def _probe(setting: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> bool:
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open(setting) as f:
            mode = f.read()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


class _Mapping:
    """One anonymous mapping: `size` bytes of whole huge pages from `offset`, 2 MiB aligned."""

    __slots__ = ("mmap", "offset", "size")

    def __init__(self, mapping: mmap.mmap, offset: int, size: int) -> None:
        self.mmap, self.offset, self.size = mapping, offset, size

    def refs(self) -> int:
        return sys.getrefcount(self.mmap)


def _lone_refs() -> int | None:
    """What `_Mapping.refs` gives when nothing but the _Mapping holds its mmap (None: no refcounts)."""
    if not hasattr(sys, "getrefcount"):
        return None
    return _Mapping(mmap.mmap(-1, mmap.PAGESIZE), 0, 0).refs()


_LONE_REFS = _lone_refs()


class _Pool:
    """Mappings no array can reach any more, kept faulted in for the next result that fits.

    A result's mapping is handed back by a finalizer on the array numpy made on it (every
    view of the result keeps that array alive).  The finalizer only appends to `_returned`
    (it may run inside the garbage collector, on any thread, even one holding `_lock`);
    `take` moves what was returned into `_free` under the lock, and reuses a mapping only
    once its mmap has no reference but the pool's: the memoryview numpy held is released
    just after the finalizer runs, and one that somebody kept (arr.base.base) keeps the
    mapping out of use for as long as it lives.
    """

    def __init__(self, max_bytes: int | None = None, max_entries: int | None = None) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries  # None: the module's settings
        self._lock = threading.Lock()
        self._free: list[_Mapping] = []  # least recently returned first
        self._returned: collections.deque[_Mapping] = collections.deque()

    def _limits(self) -> tuple[int, int]:
        max_bytes = POOL_MAX_BYTES if self.max_bytes is None else self.max_bytes
        max_entries = POOL_MAX_ENTRIES if self.max_entries is None else self.max_entries
        return max_bytes, max_entries

    def take(self, size: int) -> _Mapping | None:
        """The smallest free mapping of `size` bytes or more, at most a quarter (or 2 MiB) more;
        None if there is none."""
        with self._lock:
            dropped = self._collect()
            best = None
            for i, m in enumerate(self._free):
                if size <= m.size <= size + max(size // 4, HUGE_PAGE) and m.refs() == _LONE_REFS:
                    if best is None or m.size <= self._free[best].size:  # ties: the most recently returned
                        best = i
            found = self._free.pop(best) if best is not None else None
        del dropped  # unmapped outside the lock
        return found

    def _collect(self) -> list[_Mapping]:
        """Move returned mappings into `_free` and drop the least recently returned ones past
        the bounds; returns the dropped ones for the caller to let go of outside the lock."""
        max_bytes, max_entries = self._limits()
        if _LONE_REFS is None:
            max_bytes = 0
        dropped = []
        while True:
            try:
                m = self._returned.popleft()
            except IndexError:
                break
            # one larger than the whole pool is unmapped at once, without pushing out the others
            (dropped if m.size > max_bytes or max_entries < 1 else self._free).append(m)
        total = sum(m.size for m in self._free)
        while self._free and (len(self._free) > max_entries or total > max_bytes):
            m = self._free.pop(0)
            total -= m.size
            dropped.append(m)
        return dropped

    def track(self, whole: np.ndarray, m: _Mapping) -> None:
        """Hand m back to the pool when `whole` (the array made on its mmap) is collected."""
        weakref.finalize(whole, self._returned.append, m).atexit = False

    def pooled_bytes(self) -> int:
        with self._lock:
            dropped = self._collect()
            n = sum(m.size for m in self._free)
        del dropped
        return n

    def release(self) -> int:
        with self._lock:
            dropped = self._collect() + self._free
            self._free = []
        n = sum(m.size for m in dropped)
        del dropped
        return n

    def _after_fork(self) -> None:  # a lock held by another thread at fork would stay held in the child
        self._lock = threading.Lock()


_pool = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _pool._after_fork())


def release() -> int:
    """Unmap every mapping the result pool keeps; returns how many bytes that was.  Results in
    use are not touched (theirs go to the pool when they are collected, as before)."""
    return _pool.release()


def pooled_bytes() -> int:
    """Bytes of mappings the result pool now keeps for reuse (after taking in those returned)."""
    return _pool.pooled_bytes()


def empty_float32(shape: Sequence[int]) -> np.ndarray:
    """An uninitialized C-contiguous float32 array of `shape`, as `np.empty` makes, on huge
    pages when it is large and the OS has them, on a recycled mapping when one fits."""
    n = 1
    for s in shape:
        n *= int(s)
    nbytes = 4 * n
    if nbytes < HUGE_MIN_BYTES or not huge_pages_available():
        return np.empty(shape, dtype=np.float32)
    # Whole huge pages, the last one too: its unused part costs at most 2 MiB of zeroed memory,
    # against up to 511 faults of 4 KiB pages (measured: 10-30% of the faulting time of a 33 MiB result).
    huge_bytes = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    pool = _pool
    m = pool.take(huge_bytes)
    if m is None:
        m = _new_mapping(huge_bytes)
        if m is None:
            return np.empty(shape, dtype=np.float32)  # np.empty raises the MemoryError, if any
    whole = np.frombuffer(m.mmap, dtype=np.float32, count=n, offset=m.offset)
    pool.track(whole, m)
    return whole.reshape(shape)


def _new_mapping(huge_bytes: int) -> _Mapping | None:
    try:  # room to start at a 2 MiB boundary; what lies before it is never touched
        mapping = mmap.mmap(-1, huge_bytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, OverflowError):
        return None
    whole = np.frombuffer(mapping, dtype=np.uint8)
    offset = -whole.ctypes.data % HUGE_PAGE  # a multiple of the 4 KiB page: mmap is page aligned
    del whole
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE, offset, huge_bytes)
    except OSError:  # a kernel built without THP: plain pages, still a valid array
        pass
    return _Mapping(mapping, offset, huge_bytes)
