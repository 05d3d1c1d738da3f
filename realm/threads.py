"""Thread counts: how many cores this process may use and which counts realm accepts.

Every `threads=` argument (dequantize, HostModel, Realm, the CLI) goes through
`check_threads`: None means every usable core; an explicit count must lie in
[1, max_threads()].  More threads than cores only slow the kernels down (OpenMP
threads spin at barriers), but a few times the cores is accepted so the
results' thread-count invariance can be tested; beyond that an absurd count
would make OpenMP create thousands of OS threads or abort the process.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["usable_cores", "max_threads", "check_threads"]

#: Accepted threads per usable core (see the module docstring).
THREADS_PER_CORE_MAX = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The largest thread count realm accepts: THREADS_PER_CORE_MAX x the usable cores."""
    return THREADS_PER_CORE_MAX * usable_cores()


def check_threads(threads: object) -> int:
    """A valid `threads=` value as an int (0 for None: every usable core); else
    ArgumentTypeError / InvalidArgumentError naming the accepted range."""
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise ArgumentTypeError(f"threads must be an int or None, not {type(threads).__name__}")
    limit = max_threads()
    if not 1 <= threads <= limit:
        raise InvalidArgumentError(f"threads must be in [1, {limit}] ({THREADS_PER_CORE_MAX} x the "
                                   f"{usable_cores()} usable cores) or None for every core, not {threads}")
    return int(threads)
