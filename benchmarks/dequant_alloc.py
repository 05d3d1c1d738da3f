"""realm.dequantize's results without out=: np.empty, realm's huge-page mapping and its pool
(realm/fresh.py), against out=.

    python benchmarks/dequant_alloc.py [--mib 4,16,32,64] [--types Q4_0,Q8_0,F16] [--repeat 15]

For each result size, type and thread count (all, 1), five ways run in turns (round
robin, so a busy machine slows all of them alike) and each prints Melem/s and, for the
allocating ways, the ratio to `out=`:
  out=      into one preallocated array;
  np.empty  realm with its huge pages off: NumPy's allocation;
  mapped    a fresh 2 MiB aligned MADV_HUGEPAGE mapping every call (the pool off);
  pooled    the default: each result is dropped before the next call, so its mapping,
            already faulted in, comes back from the pool;
  kept      every result is kept (as when a whole model is dequantized into a dict):
            the pool cannot help, and each call pays the faults of fresh memory.
The three realm ways map results of every size here (below 32 MiB `dequantize` itself
uses np.empty), each with a pool of its own.  The discarding ways free each result inside
the timed call (munmap included); `kept` frees its results after the turns.  With one
thread the figures are also given in thread CPU time (user + system, page faults
included), which a busy machine does not inflate.  Below glibc's 32 MiB mmap threshold
np.empty gets memory back that is already faulted in.  Finally the page-fault cost of
32 MiB of fresh memory, alone.
"""

from __future__ import annotations

import argparse
import mmap
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import realm
from realm import fresh

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ggml_ref import load_ggml  # noqa: E402


def with_pool(pool, fn):
    """fn() with `pool` as realm's result pool and realm's mapping at every size."""
    saved = fresh._pool, fresh.HUGE_MIN_BYTES
    fresh._pool, fresh.HUGE_MIN_BYTES = pool, 0
    try:
        return fn()
    finally:
        fresh._pool, fresh.HUGE_MIN_BYTES = saved


def np_empty_way(raw, qtype, threads):
    saved, fresh._available = fresh._available, False
    try:
        return realm.dequantize(raw, qtype, threads=threads)
    finally:
        fresh._available = saved




def round_robin(ways: dict, repeat: int, clock) -> dict[str, float]:
    times = {k: [] for k in ways}
    for f in ways.values():
        f()
    for _ in range(repeat):
        for k, f in ways.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fault_cost_ms(repeat: int) -> dict[str, float]:
    """Thread CPU ms to touch every 4 KiB page of 32 MiB of fresh memory, three ways."""
    n = 32 << 20

    def plain():
        m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            m.madvise(mmap.MADV_NOHUGEPAGE)
        return np.frombuffer(m, np.uint8)

    ways = {"4 KiB pages": plain, "np.empty": lambda: np.empty(n, np.uint8),
            "realm (2 MiB)": lambda: mapped_way_bytes(n)}
    out = {}
    for k, alloc in ways.items():
        def touch():
            alloc()[::4096] = 1
        out[k] = round_robin({k: touch}, repeat, time.thread_time)[k] * 1e3
    return out


def mapped_way_bytes(n: int) -> np.ndarray:
    return with_pool(fresh._Pool(max_bytes=0), lambda: fresh.empty_float32((n // 4,)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", default="16,32,64", help="result sizes in MiB")
    ap.add_argument("--types", default="Q4_0,Q8_0,F16")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    ggml = load_ggml()
    print(f"median of {args.repeat} in turns; huge pages: {fresh.huge_pages_available()}; "
          f"realm maps results of {fresh.HUGE_MIN_BYTES >> 20} MiB and more; "
          f"pool: {fresh.POOL_MAX_ENTRIES} mappings, {fresh.POOL_MAX_BYTES >> 20} MiB")
    ratioed = ["np.empty", "mapped", "pooled", "kept"]
    print(f"{'MiB':>4} {'type':5} {'thr':3} {'clock':5} {'out=':>6} " + " ".join(f"{k:>8} {'/out=':>5}" for k in ratioed))
    for mib in (int(s) for s in args.mib.split(",")):
        n = (mib << 18) // 4096 * 4096
        rows = np.random.default_rng(0).standard_normal((n // 4096, 4096), dtype=np.float32)
        out = np.empty(n, np.float32)
        for name in args.types.split(","):
            qtype = realm.GGMLType[name.strip().upper()]
            raw = ggml.quantize(rows, qtype)
            for threads in (None, 1):
                unpooled, pooled, keeping = fresh._Pool(max_bytes=0), fresh._Pool(), fresh._Pool()
                kept: list[np.ndarray] = []

                def dequantize():
                    return realm.dequantize(raw, qtype, threads=threads)

                ways = {"out=": lambda: realm.dequantize(raw, qtype, out=out, threads=threads),
                        "np.empty": lambda: np_empty_way(raw, qtype, threads),
                        "mapped": lambda: with_pool(unpooled, dequantize),
                        "pooled": lambda: with_pool(pooled, dequantize),
                        "kept": lambda: kept.append(with_pool(keeping, dequantize))}
                clocks = [("wall", time.perf_counter)] + ([("cpu", time.thread_time)] if threads == 1 else [])
                for label, clock in clocks:
                    t = round_robin(ways, args.repeat, clock)
                    kept.clear()
                    keeping.release()  # what came back must not serve the next clock's turns
                    rate = {k: n / v / 1e6 for k, v in t.items()}
                    print(f"{mib:>4} {name:5} {'all' if threads is None else '1':3} {label:5} {rate['out=']:6.0f} "
                          + " ".join(f"{rate[k]:8.0f} {t['out='] / t[k]:5.2f}" for k in ratioed), flush=True)
                for pool in (unpooled, pooled, keeping):
                    pool.release()
    cost = fault_cost_ms(args.repeat)
    print("page faults of 32 MiB of fresh memory, thread CPU ms: " + ", ".join(f"{k} {v:.1f}" for k, v in cost.items()))


if __name__ == "__main__":
    main()
