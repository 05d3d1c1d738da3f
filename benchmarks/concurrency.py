"""Concurrent tenants on one model: realm's continuous batching vs llama.cpp's batched decode.

    python benchmarks/concurrency.py [--models smollm2 gemma3] [--n 1 4 16] [--tokens 48]
                                     [--threads 2] [--repeat 3] [--llama-batched-bench PATH] [--markdown]

For each model and N: N threads each call `Realm.generate(..., stream=True)` at once on one
`Realm` (8-token prompts, one per tenant, greedy, --tokens tokens each, ignore_eos, prefix cache
off so every prompt is computed), and time each piece of text as it arrives.
  * decode tok/s: tokens (pieces of text) of all requests per second while every request
    decodes -- from the last first token to the first end -- as llama.cpp's S_TG counts the
    tokens of every sequence after all prompts are in;
  * end-to-end tok/s: all completion tokens over the whole run (guest start, prompts, decode);
  * TTFT: from the start to a request's first token (p50, p99 over all requests of all repeats);
  * tok/s per request: its completion tokens after the first over its own decode time;
  * vs N=1: decode tok/s over the first N's (the single stream when --n starts with 1);
  * peak RSS of this process after a model's runs (realm) / of the llama.cpp runs.
llama.cpp: `llama-batched-bench -npp 8 -ntg TOKENS -npl N -t THREADS` built from the vendored
llama.cpp of llama-cpp-python's sdist (see ../shared/DESIGN.md or the README); skipped when absent.
Medians over --repeat runs after one warm-up per N.  Each repeat runs every N in turn, and llama.cpp
runs after each of realm's runs, so the runs a ratio compares are seconds apart: the ratio to
llama.cpp is the median of the (realm, llama.cpp) pairs' ratios, and vs N=1 the median of each
repeat's ratio to its own first N (this machine's speed drifts by 20-50% over minutes, which a
ratio of medians taken minutes apart would carry).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import LLAMA_BIN, add_load_args, peak_rss, percentile, print_table, start_together

from realm import Realm
from realm.models import resolve

BENCH = LLAMA_BIN / "llama-batched-bench"


def prompts(rt: Realm, model, n: int) -> list[str]:
    """n different prompts of 8 tokens each (BOS included where the model adds one; " on" is
    one token in both models' vocabularies)."""
    out = []
    for i in range(n):
        text = f"Tenant {i} writes"
        while len(rt.tokenize(text, model)) < 8:
            text += " on"
        out.append(text)
    return out


def run_once(rt: Realm, model, texts: list[str], tokens: int) -> dict:
    n = len(texts)
    stamps: list[list[float]] = [[] for _ in range(n)]
    counts = [0] * n

    def work(i: int) -> None:
        stream = rt.generate(texts[i], model, max_tokens=tokens, temperature=0, ignore_eos=True, stream=True)
        for _ in stream:
            stamps[i].append(time.perf_counter())
        stamps[i].append(time.perf_counter())  # the end
        counts[i] = stream.completion.usage.completion_tokens

    start = start_together(n, work)
    end = time.perf_counter()
    # steady state: while every request decodes (from the last first token to the first end)
    lo, hi = max(s[0] for s in stamps), min(s[-1] for s in stamps)
    inside = sum(lo < t <= hi for s in stamps for t in s[:-1])
    return {
        "decode": inside / (hi - lo) if hi > lo and inside else sum(c - 1 for c in counts) / (end - lo),
        "wall": sum(counts) / (end - start),
        "ttft": [s[0] - start for s in stamps],
        "per_request": [(c - 1) / (s[-1] - s[0]) for c, s in zip(counts, stamps)],
    }


def llama_batched(path: Path, model: Path, ns: list[int], tokens: int, threads: int) -> dict[int, float]:
    """{N: S_TG} from llama-batched-bench, and its peak RSS (key 'rss', bytes: read from /proc while
    it runs -- getrusage's figure for children would count this big process's pages at the fork)."""
    ctx = max(ns) * (8 + tokens) + 64
    cmd = [str(path), "-m", str(model), "-c", str(ctx), "-b", "2048", "-ub", "512", "-npp", "8", "-ntg", str(tokens),
           "-npl", ",".join(map(str, ns)), "-t", str(threads), "-tb", str(threads)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.DEVNULL, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, peak_rss(proc.pid))
            time.sleep(0.05)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        log.seek(0)
        out = log.read()
    rates: dict = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and re.fullmatch(r"\d+", cells[2] or ""):
            rates[int(cells[2])] = float(cells[7])
    rates["rss"] = peak
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(ap)
    ap.add_argument("--llama-batched-bench", type=Path, default=Path(os.environ.get("LLAMA_BATCHED_BENCH", BENCH)))
    args = ap.parse_args()

    rows = []
    peer = args.llama_batched_bench.is_file()
    if not peer:
        print(f"(llama-batched-bench not found at {args.llama_batched_bench}: llama.cpp skipped)")
    for name in args.models:
        path = Path(resolve(name))
        peer_rss = 0
        with Realm(threads=args.threads, prefix_cache_bytes=0) as rt:
            model = rt.load_model(path)
            texts = {n: prompts(rt, model, n) for n in args.n}
            for n in args.n:
                run_once(rt, model, texts[n], 4)  # warm-up
            # every N in turn in each repeat: the runs a ratio compares are seconds apart
            runs: dict[int, list[dict]] = {n: [] for n in args.n}
            theirs: dict[int, list[float]] = {n: [] for n in args.n}
            for _ in range(args.repeat):
                for n in args.n:
                    runs[n].append(run_once(rt, model, texts[n], args.tokens))
                    if peer:
                        rates = llama_batched(args.llama_batched_bench, path, [n], args.tokens, args.threads)
                        theirs[n].append(rates[n])
                        peer_rss = max(peer_rss, rates["rss"])
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        first = args.n[0]
        for n in args.n:
            decode = statistics.median(r["decode"] for r in runs[n])
            wall = statistics.median(r["wall"] for r in runs[n])
            ttft = [t for r in runs[n] for t in r["ttft"]]
            per = [t for r in runs[n] for t in r["per_request"]]
            ratio = statistics.median(r["decode"] / t for r, t in zip(runs[n], theirs[n])) if theirs[n] else None
            own = statistics.median(r["decode"] / b["decode"] for r, b in zip(runs[n], runs[first]))
            rows.append([name, str(n), f"{decode:.0f}", f"{statistics.median(theirs[n]):.0f}" if theirs[n] else "-",
                         f"{ratio:.2f}x" if ratio else "-", f"{own:.2f}x", f"{wall:.0f}",
                         f"{1000 * percentile(ttft, 0.5):.0f}", f"{1000 * percentile(ttft, 0.99):.0f}",
                         f"{statistics.median(per):.1f}", f"{rss / 2**20:.0f}",
                         f"{peer_rss / 2**20:.0f}" if theirs[n] else "-"])
    print(f"\n{args.threads} threads, 8-token prompts, {args.tokens} tokens each, greedy; medians of {args.repeat}")
    print_table(["model", "N", "realm decode tok/s", "llama.cpp tok/s", "ratio (pairs)", f"vs N={args.n[0]} (pairs)", "end-to-end tok/s", "TTFT p50 ms",
                 "TTFT p99 ms", "tok/s per request", "realm RSS MiB", "llama.cpp RSS MiB"], rows, args.markdown)


if __name__ == "__main__":
    main()
