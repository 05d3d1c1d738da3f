"""Prefetch: a layer-by-layer reader with and without `ModelStore.prefetch`, same run.

    python benchmarks/prefetch.py [--models smollm2,gemma3] [--repeat 5] [--tokens 8] [--threads N] [--markdown]

The reader walks the model's blocks in order like a forward pass: for block i it
fetches every tensor with `get_tensor_f32` (a cache hit, or dequantize + cache)
and multiplies each weight matrix by a batch of `--tokens` activations (on
one BLAS thread).  Each
pass starts from an empty cache sized to hold about three blocks, so nothing is
left over from the last pass.  Modes:
  none      no prefetch: every tensor is dequantized when the reader reaches it
  page-in   prefetch(next block, fill_cache=False): only madvise(WILLNEED) of its bytes
  fill      prefetch(next block): block i+1 is dequantized on the prefetch thread
            while block i is being multiplied
Prints the median time per pass, the part of it the reader spent waiting in
`get_tensor_f32` (dequantizing, or waiting for the prefetch thread), and the
speed-up over "none".  `--threads` is the reader's dequantizer thread count
(default 1, like the prefetch thread's, so the modes differ only in prefetching).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections import defaultdict

# The stand-in compute runs on the reader's thread only, so that its time is the
# same in every mode (a threaded BLAS would fight the prefetch thread for cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from realm.cache import LayerCache  # noqa: E402
from realm.models import MODELS, pull  # noqa: E402
from realm.store import ModelStore  # noqa: E402

from _common import print_table  # noqa: E402


def blocks_of(model) -> list[list[str]]:
    by_block: dict[int, list[str]] = defaultdict(list)
    for name in model.tensors:
        m = re.match(r"blk\.(\d+)\.", name)
        if m:
            by_block[int(m.group(1))].append(name)
    return [by_block[i] for i in sorted(by_block)]


def one_pass(path, mode: str, tokens: int, threads: int | None, rng) -> tuple[float, float]:
    with ModelStore(LayerCache(1)) as probe:  # measure the block size to size the cache
        mid = probe.load(path)
        blocks = blocks_of(probe.get(mid))
        block_bytes = max(sum(4 * probe.get_tensor(mid, n).n_elements for n in b) for b in blocks)
    with ModelStore(LayerCache(3 * block_bytes)) as store:
        mid = store.load(path)
        fetching = 0.0
        t0 = time.perf_counter()
        for i, names in enumerate(blocks):
            if mode != "none" and i + 1 < len(blocks):
                store.prefetch(mid, blocks[i + 1], fill_cache=(mode == "fill"))
            for name in names:
                t1 = time.perf_counter()
                w = store.get_tensor_f32(mid, name, threads=threads)
                fetching += time.perf_counter() - t1
                if w.ndim == 2:
                    x = rng.standard_normal((tokens, w.shape[1]), dtype=np.float32)
                    x @ w.T
        return time.perf_counter() - t0, fetching


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=8, help="activation rows per matrix product")
    ap.add_argument("--threads", type=int, default=1,
                    help="the reader's dequantizer threads (default 1, as the prefetch thread's)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    rows = []
    for name in args.models.split(","):
        path = pull(name)
        one_pass(path, "none", args.tokens, args.threads, rng)  # warm the page cache and the code
        base = None
        for mode in ("none", "page-in", "fill"):
            runs = [one_pass(path, mode, args.tokens, args.threads, rng) for _ in range(args.repeat)]
            t = statistics.median(r[0] for r in runs) * 1e3
            base = base or t
            rows.append([name, mode, f"{t:.1f} ms", f"{statistics.median(r[1] for r in runs) * 1e3:.1f} ms",
                         f"{base / t:.2f}x"])

    cols = ["model", "prefetch", "pass", "reader waits", "speed-up"]
    print_table(cols, rows, args.markdown)
    print(f"(medians of {args.repeat} passes; {args.tokens} tokens per product; file pages already cached; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: prefetching helps only "
          f"when a core is free for it)")


if __name__ == "__main__":
    main()
