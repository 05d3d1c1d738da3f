"""Timing and table printing shared by the benchmark scripts (run as `python benchmarks/X.py`,
which puts this folder on sys.path)."""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

#: Where llama.cpp's tools are built from the vendored source of llama-cpp-python's sdist (README).
LLAMA_BIN = Path.home() / ".cache/realm/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"


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


def add_load_args(ap: argparse.ArgumentParser) -> None:
    """The options of the concurrent-load scripts: models, client counts, tokens, threads, repeats."""
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--n", nargs="+", type=int, default=[1, 4, 16], help="concurrent clients")
    ap.add_argument("--tokens", type=int, default=48, help="tokens each client generates")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")


def start_together(n: int, work: Callable[[int], object]) -> float:
    """work(0) .. work(n - 1) on n threads released at once; returns the release time
    (perf_counter) once all have finished."""
    barrier = threading.Barrier(n + 1)

    def run(i: int) -> None:
        barrier.wait()
        work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return start


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
