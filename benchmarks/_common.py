"""Timing and table printing shared by the benchmark scripts (run as `python benchmarks/X.py`,
which puts this folder on sys.path)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def median_seconds(fn: Callable[[], object], repeat: int, *, warm: bool = True) -> float:
    """Median wall time of `repeat` calls of fn; `warm` makes one untimed call first (page-ins,
    code loading, thread pools)."""
    if warm:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(cols: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> None:
    """rows of cells under cols: a Markdown table, or right-aligned columns."""
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(cols)]
    print("  ".join(h.rjust(w) for h, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
