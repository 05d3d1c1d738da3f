"""Dequantization speed: realm vs llama.cpp's to_float vs gguf-py, same tensor, same run.

    python benchmarks/dequant.py [--elements 16777216] [--repeat 7] [--types Q4_K,Q6_K]

Prints Melem/s (median of --repeat runs) per format for realm on one thread and
on all threads into a preallocated array (`out=`), realm on one thread and on all
threads returning a new array (no `out=`; each result is dropped before the next call, so
from 32 MiB realm/fresh.py's pool hands its memory back, already faulted in: results a
program keeps pay their page faults, see benchmarks/dequant_alloc.py's `kept`) and the
ratio of the two on all threads, llama.cpp's reference dequantizer (one thread),
gguf-py's NumPy code, and a plain float32 fill of the same size: the memory-bandwidth
limit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import realm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ggml_ref import load_ggml  # noqa: E402

from _common import median_seconds  # noqa: E402


def sample_blocks(ggml, qtype: realm.GGMLType, n: int) -> np.ndarray:
    """Realistic blocks: llama.cpp's quantizer applied to Gaussian weights (with a flat
    importance matrix for the IQ types whose quantizer needs one)."""
    rows = np.random.default_rng(0).standard_normal((n // 4096, 4096), dtype=np.float32)
    imatrix = np.ones(4096, dtype=np.float32) if qtype != realm.GGMLType.Q8_K and ggml.requires_imatrix(qtype) else None
    return ggml.quantize(rows, qtype, imatrix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=1 << 24, help="rounded down to whole rows of 4096")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--types", default=",".join(t.name for t in realm.SUPPORTED_TYPES))
    ap.add_argument("--markdown", action="store_true", help="print the rows as a Markdown table")
    args = ap.parse_args()
    n = args.elements // 4096 * 4096  # sample_blocks quantizes rows of 4096
    if n <= 0:
        ap.error("--elements must be at least 4096")
    ggml = load_ggml()
    try:
        import gguf
        from gguf import quants as gq
    except ImportError:
        gguf = None

    out = np.empty(n, dtype=np.float32)
    fill = n / median_seconds(lambda: out.fill(1.0), args.repeat) / 1e6
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{n} elements, median of {args.repeat}; isa={realm._native.best_isa()}, {cores} cores; "
          f"f32 fill {fill:.0f} Melem/s")
    cols = ["type", "realm 1t", "realm all", "new 1t", "new all", "new/out", "llama.cpp", "gguf-py", "1t/llama",
            "all/fill", "all/gguf"]
    widths = [6, 9, 9, 7, 7, 7, 9, 8, 8, 8, 8]
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|")
    else:
        print(" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for name in args.types.split(","):
        qtype = realm.GGMLType[name.strip().upper()]
        raw = sample_blocks(ggml, qtype, n)
        r1 = n / median_seconds(lambda: realm.dequantize(raw, qtype, out=out, threads=1), args.repeat) / 1e6
        rn = n / median_seconds(lambda: realm.dequantize(raw, qtype, out=out), args.repeat) / 1e6
        a1 = n / median_seconds(lambda: realm.dequantize(raw, qtype, threads=1), args.repeat) / 1e6
        an = n / median_seconds(lambda: realm.dequantize(raw, qtype), args.repeat) / 1e6
        ll = n / median_seconds(lambda: ggml.to_float(raw, qtype, out), args.repeat) / 1e6
        gp = float("nan")  # gguf-py has no Q8_K, and its F32 "dequantize" is a view
        if gguf is not None and qtype.name in gguf.GGMLQuantizationType.__members__ and qtype.name not in ("Q8_K", "F32"):
            gt = gguf.GGMLQuantizationType[qtype.name]
            rows = raw.reshape(-1, realm.quant_info(qtype).type_size * 16)
            gp = n / median_seconds(lambda: gq.dequantize(rows, gt), max(3, args.repeat // 2)) / 1e6
        row = [qtype.name, f"{r1:.0f}", f"{rn:.0f}", f"{a1:.0f}", f"{an:.0f}", f"{an / rn:.2f}", f"{ll:.0f}", f"{gp:.0f}", f"{r1 / ll:.2f}", f"{rn / fill:.2f}", f"{rn / gp:.1f}"]
        row = [c.replace("nan", "-") for c in row]
        if args.markdown:
            print("| " + " | ".join(row) + " |")
        else:
            print(" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
