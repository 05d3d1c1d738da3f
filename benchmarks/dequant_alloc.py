"""realm.dequantize's fresh results: np.empty vs realm's huge-page mapping (realm/fresh.py) vs out=.

    python benchmarks/dequant_alloc.py [--mib 4,16,32,64] [--types Q4_0,Q8_0,F16] [--repeat 15]

For each result size, type and thread count (all, 1), the three ways run in turns
(round robin, so a busy machine slows all of them alike) and each prints Melem/s and,
for the two allocating ways, the ratio to `out=`.  With one thread the figures are
also given in thread CPU time (user + system, page faults included), which a busy
machine does not inflate.  The memory of each result is freed before the next call,
so below glibc's 32 MiB mmap threshold np.empty gets memory back that is already
faulted in.  Finally the page-fault cost of 32 MiB of fresh memory, alone.
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


def np_empty_way(raw, qtype, threads):
    saved, fresh._available = fresh._available, False
    try:
        return realm.dequantize(raw, qtype, threads=threads)
    finally:
        fresh._available = saved


def mapped_way(raw, qtype, threads):
    saved, fresh.HUGE_MIN_BYTES = fresh.HUGE_MIN_BYTES, 0  # the mapping at any size
    try:
        return realm.dequantize(raw, qtype, threads=threads)
    finally:
        fresh.HUGE_MIN_BYTES = saved


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
    saved, fresh.HUGE_MIN_BYTES = fresh.HUGE_MIN_BYTES, 0
    try:
        return fresh.empty_float32((n // 4,))
    finally:
        fresh.HUGE_MIN_BYTES = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", default="16,32,64", help="result sizes in MiB")
    ap.add_argument("--types", default="Q4_0,Q8_0,F16")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    ggml = load_ggml()
    print(f"median of {args.repeat} in turns; huge pages: {fresh.huge_pages_available()}; "
          f"realm maps results of {fresh.HUGE_MIN_BYTES >> 20} MiB and more")
    print(f"{'MiB':>4} {'type':5} {'thr':3} {'clock':6} {'out=':>6} {'np.empty':>8} {'ratio':>5} {'realm':>6} {'ratio':>5}")
    for mib in (int(s) for s in args.mib.split(",")):
        n = (mib << 18) // 4096 * 4096
        rows = np.random.default_rng(0).standard_normal((n // 4096, 4096), dtype=np.float32)
        out = np.empty(n, np.float32)
        for name in args.types.split(","):
            qtype = realm.GGMLType[name.strip().upper()]
            raw = ggml.quantize(rows, qtype)
            for threads in (None, 1):
                ways = {"out=": lambda: realm.dequantize(raw, qtype, out=out, threads=threads),
                        "np.empty": lambda: np_empty_way(raw, qtype, threads),
                        "realm": lambda: mapped_way(raw, qtype, threads)}
                clocks = [("wall", time.perf_counter)] + ([("cpu", time.thread_time)] if threads == 1 else [])
                for label, clock in clocks:
                    t = round_robin(ways, args.repeat, clock)
                    rate = {k: n / v / 1e6 for k, v in t.items()}
                    print(f"{mib:>4} {name:5} {'all' if threads is None else '1':3} {label:6} {rate['out=']:6.0f} "
                          f"{rate['np.empty']:8.0f} {t['out='] / t['np.empty']:5.2f} {rate['realm']:6.0f} "
                          f"{t['out='] / t['realm']:5.2f}", flush=True)
    cost = fault_cost_ms(args.repeat)
    print("page faults of 32 MiB of fresh memory, thread CPU ms: " + ", ".join(f"{k} {v:.1f}" for k, v in cost.items()))


if __name__ == "__main__":
    main()
