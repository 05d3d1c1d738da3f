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
array; the mapping is unmapped when the last array using it is garbage collected.  It
does not own its data (`flags.owndata` is False), so `ndarray.resize` refuses it.
"""

from __future__ import annotations

import mmap
import sys
from typing import Sequence

import numpy as np

__all__ = ["HUGE_MIN_BYTES", "empty_float32", "huge_pages_available"]

HUGE_PAGE = 2 << 20
#: Arrays of at least this many bytes get a 2 MiB aligned mapping of their own: glibc's
#: largest mmap threshold (32 MiB on 64-bit), above which it maps fresh memory every time.
HUGE_MIN_BYTES = 32 << 20

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


def empty_float32(shape: Sequence[int]) -> np.ndarray:
    """An uninitialized C-contiguous float32 array of `shape`, as `np.empty` makes, on huge
    pages when it is large and the OS has them."""
    n = 1
    for s in shape:
        n *= int(s)
    nbytes = 4 * n
    if nbytes < HUGE_MIN_BYTES or not huge_pages_available():
        return np.empty(shape, dtype=np.float32)
    # Whole huge pages, the last one too: its unused part costs at most 2 MiB of zeroed memory,
    # against up to 511 faults of 4 KiB pages (measured: 10-30% of the faulting time of a 33 MiB result).
    huge_bytes = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    try:  # room to start at a 2 MiB boundary; what lies before it is never touched
        mapping = mmap.mmap(-1, huge_bytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, OverflowError):
        return np.empty(shape, dtype=np.float32)  # np.empty raises the MemoryError, if any
    whole = np.frombuffer(mapping, dtype=np.uint8)
    offset = -whole.ctypes.data % HUGE_PAGE  # a multiple of the 4 KiB page: mmap is page aligned
    del whole
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE, offset, huge_bytes)
    except OSError:  # a kernel built without THP: plain pages, still a valid array
        pass
    return np.frombuffer(mapping, dtype=np.float32, count=n, offset=offset).reshape(shape)
