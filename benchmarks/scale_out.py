"""One `realm serve` process vs `realm serve --ray` (Ray Serve) with 1 and 2 replicas, at the
same total threads: N concurrent streaming clients across two models.

    python benchmarks/scale_out.py [--models smollm2 gemma3] [--n 16] [--tokens 48] [--threads 2]
                                   [--repeat 3] [--cycles 3] [--probes 20] [--markdown]

Each server runs alone on the machine (one after the other) on 127.0.0.1 with both models:
`realm serve --threads T`; `realm serve --ray` (a local Ray instance, routed by model in Serve's
proxy) with 1 replica of T CPUs, and with T replicas of 1 CPU (each replica's Realm gets as many
threads as Ray gives it CPUs; Serve's multiplexing puts each model on its own replica), and the
latter again routed by a router deployment (one more Ray call per request).  N clients at once,
alternating between the models, each stream a /v1/completions request (an 8-token prompt of its
own, greedy, --tokens tokens, ignore_eos).  Each of --cycles cycles starts every setup once, in
turn (in reverse order every other cycle), and times --repeat rounds after a warm-up, so that
each setup is compared with the single process of its own cycle, minutes apart, not with one
measured at another hour of this machine's drifting speed.  Printed: aggregate completion
tok/s (median of all rounds), its ratio to the single process (median of the cycles' ratios,
each cycle's median against the single process's), time to first token p50/p99 over all
rounds, the latency of a one-token completion sent alone (p50 of --probes a start, both
models), and of GET /v1/models sent alone (p50 of 5 x --probes a start): a request without
model work, so what Ray adds to it over the single process (median of the cycles'
differences) is Ray's cost per request (its proxy, router and replica hops).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _common import percentile, print_table, stream_round
from serve import free_port, wait_up

from realm.models import resolve
from realm.serve_ray import PROXY_CALLBACK_ENV


def probe(client: httpx.Client, url: str, model: str) -> float:
    """Seconds for one non-streamed one-token completion, alone."""
    t0 = time.perf_counter()
    r = client.post(url + "/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 1,
                                                   "temperature": 0})
    r.raise_for_status()
    return time.perf_counter() - t0


def hop(client: httpx.Client, url: str) -> float:
    """Seconds for GET /v1/models, alone: a request that does no model work."""
    t0 = time.perf_counter()
    client.get(url + "/v1/models").raise_for_status()
    return time.perf_counter() - t0


def load_round(url: str, n: int, tokens: int, models: list[str], tag: int) -> dict:
    """n clients at once, alternating models; prompts new in each round (tag)."""
    jobs = [(f"Client {i} asks in round {tag} about the weather in", models[i % len(models)]) for i in range(n)]
    start, results = stream_round(url, jobs, tokens)
    wall = max(r[2] for r in results) - start
    return {"tps": sum(r[1] for r in results) / wall, "ttft": [r[0] for r in results]}


def measure(cmd: list[str], url: str, args: argparse.Namespace, models: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    client = httpx.Client(timeout=120)  # one connection, kept alive: the probes time the server
    try:
        wait_up(url, proc, timeout=300)
        for m in models:  # each model loaded (on its replica) before anything is timed
            probe(client, url, m)
            time.sleep(1.0)  # Serve's routers learn where it was loaded
        load_round(url, args.n, 4, models, 0)
        rounds = [load_round(url, args.n, args.tokens, models, 1 + r) for r in range(args.repeat)]
        lat = [probe(client, url, models[i % len(models)]) for i in range(args.probes)]
        hops = [hop(client, url) for _ in range(5 * args.probes)]
        return {"tps": [r["tps"] for r in rounds], "ttft": [t for r in rounds for t in r["ttft"]],
                "lat": lat, "hop": statistics.median(hops)}
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--n", type=int, default=16, help="concurrent clients")
    ap.add_argument("--tokens", type=int, default=48, help="tokens each client generates")
    ap.add_argument("--threads", type=int, default=2, help="total threads (and Ray CPUs) of each setup")
    ap.add_argument("--repeat", type=int, default=3, help="load rounds timed each time a server starts")
    ap.add_argument("--cycles", type=int, default=3, help="times each setup is started, in turn with the others")
    ap.add_argument("--probes", type=int, default=20, help="one-token requests sent alone, for the latency")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if args.cycles < 1 or args.repeat < 1:
        ap.error("--cycles and --repeat must be at least 1")
    paths = [Path(resolve(m)) for m in args.models]
    names = [p.stem for p in paths]
    model_args = [a for p in paths for a in ("--model", str(p))]
    limits = ["--max-concurrent", str(args.n), "--tenant-concurrent", str(args.n)]
    many = ["--ray", "--replicas", str(args.threads), "--cpus-per-replica", "1"]
    setups = [("realm serve", ["--threads", str(args.threads)], {}),
              ("ray, 1 replica", ["--ray", "--replicas", "1", "--cpus-per-replica", str(args.threads)], {})]
    if args.threads > 1:
        setups += [(f"ray, {args.threads} replicas", many, {}),
                   (f"ray, {args.threads} replicas, router", many, {PROXY_CALLBACK_ENV: ""})]
    runs: list[list[dict]] = [[] for _ in setups]  # per setup, one measurement a cycle
    for cycle in range(args.cycles):
        order = range(len(setups)) if cycle % 2 == 0 else reversed(range(len(setups)))
        for i in order:
            label, extra, env = setups[i]
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "realm", "serve", "--port", str(port), *model_args, *limits, *extra]
            runs[i].append(measure(cmd, url, args, names, env))
            print(f"cycle {cycle + 1}, {label}: {statistics.median(runs[i][-1]['tps']):.0f} tok/s", file=sys.stderr)
    rows, base = [], runs[0]
    for (label, _, _), ms in zip(setups, runs):
        ttft = [t for m in ms for t in m["ttft"]]
        ratios = [statistics.median(m["tps"]) / statistics.median(b["tps"]) for m, b in zip(ms, base)]
        added = [m["hop"] - b["hop"] for m, b in zip(ms, base)]
        rows.append([label, f"{statistics.median(t for m in ms for t in m['tps']):.0f}",
                     f"{statistics.median(ratios):.2f}x", " ".join(f"{r:.2f}" for r in ratios),
                     f"{1000 * percentile(ttft, 0.5):.0f}", f"{1000 * percentile(ttft, 0.99):.0f}",
                     f"{1000 * statistics.median(t for m in ms for t in m['lat']):.1f}",
                     f"{1000 * statistics.median(m['hop'] for m in ms):.1f}",
                     "-" if ms is base else f"{1000 * statistics.median(added):+.1f}"])
    print(f"\n{args.n} streaming clients across {', '.join(args.models)}; {args.threads} threads in all; "
          f"{args.tokens} tokens each, greedy; {args.cycles} cycles of {args.repeat} rounds")
    print_table(["setup", "tok/s", "vs one process", "each cycle", "TTFT p50 ms", "p99", "1-token request p50 ms",
                 "GET /v1/models p50 ms", "Ray's added ms"], rows, args.markdown)


if __name__ == "__main__":
    main()
