"""`realm serve` vs llama.cpp's llama-server: N concurrent streaming clients over HTTP.

    python benchmarks/serve.py [--models smollm2 gemma3] [--n 1 4 16] [--tokens 48] [--threads 2]
                               [--repeat 3] [--llama-server PATH] [--sampling greedy|full] [--markdown]

Both servers run at once on 127.0.0.1, with the same model and threads, and take turns: each
round of load goes to one, then the other, while the idle one waits (realm with --max-concurrent
16, llama-server with -np 16: 16 slots, continuous batching).  N clients at once each stream a /v1/completions request (an 8-token prompt of its
own, greedy -- or with `--sampling full` drawn from the whole distribution at temperature 1 --
--tokens tokens, ignore_eos) and time its chunks.  Printed per N: aggregate
completion tok/s (all tokens over the wall time of the round) and the realm / llama-server
ratio (the median of the rounds' ratios, pair by pair: this machine's speed drifts by 10-20% over
minutes), time to first token p50/p99 (from sending the request to its first chunk), and each
server's peak RSS (VmHWM).  Medians of --repeat rounds after a warm-up round.
llama-server is built from the vendored llama.cpp of llama-cpp-python's sdist (README); the
script skips it when absent.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from _common import LLAMA_BIN, SAMPLING, add_load_args, peak_rss, percentile, print_table, stream_round

from realm.models import resolve

SERVER = LLAMA_BIN / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit(f"{url} did not come up")


def round_of(url: str, n: int, tokens: int, model: str, tag: int, sampling: str) -> dict:
    """n clients at once; prompts new to the server in each round (tag), so that neither
    server's prompt cache answers them."""
    jobs = [(f"Client {i} asks in round {tag} about the weather in", model) for i in range(n)]
    start, results = stream_round(url, jobs, tokens, sampling)
    wall = max(r[2] for r in results) - start
    return {"tps": sum(r[1] for r in results) / wall, "ttft": [r[0] for r in results]}


def start(cmd: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_up(url, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def summary(rounds: list[dict]) -> dict:
    ttft = [t for r in rounds for t in r["ttft"]]
    return {"tps": statistics.median(r["tps"] for r in rounds), "p50": percentile(ttft, 0.5),
            "p99": percentile(ttft, 0.99)}


def measure(servers: dict[str, str], ns: list[int], tokens: int, repeat: int, model: str,
            sampling: str) -> dict[int, dict]:
    """{N: {server: figures}, "ratio": realm / llama-server tok/s, the median over rounds
    taken in pairs}; the servers (name -> url) take turns, round by round."""
    out = {}
    for n in ns:
        for url in servers.values():
            round_of(url, n, 4, model, 0, sampling)  # warm-up
        rounds: dict[str, list] = {name: [] for name in servers}
        for r in range(repeat):
            for name, url in servers.items():
                rounds[name].append(round_of(url, n, tokens, model, 1 + r, sampling))
                time.sleep(0.2)  # the other server's threads go idle
        out[n] = {name: summary(rs) for name, rs in rounds.items()}
        if len(servers) == 2:
            out[n]["ratio"] = statistics.median(a["tps"] / b["tps"] for a, b in zip(*rounds.values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_args(ap)
    ap.add_argument("--llama-server", type=Path, default=Path(os.environ.get("LLAMA_SERVER", SERVER)))
    ap.add_argument("--sampling", choices=sorted(SAMPLING), default="greedy",
                    help="greedy, or the whole distribution at temperature 1 (OpenAI's defaults)")
    args = ap.parse_args()
    slots = max(args.n)

    rows = []
    for name in args.models:
        path = Path(resolve(name))
        servers, procs = {}, {}
        try:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            procs["realm"] = start([sys.executable, "-m", "realm", "serve", "--model", str(path), "--port", str(port),
                                    "--threads", str(args.threads), "--max-concurrent", str(slots),
                                    "--tenant-concurrent", str(slots)], url)
            servers["realm"] = url
            if args.llama_server.is_file():
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                ctx = slots * (16 + args.tokens + 16)
                procs["llama"] = start([str(args.llama_server), "-m", str(path), "--host", "127.0.0.1", "--port",
                                        str(port), "-np", str(slots), "-c", str(ctx), "-t", str(args.threads), "-tb",
                                        str(args.threads), "--no-webui"], url)
                servers["llama"] = url
            else:
                print(f"(llama-server not found at {args.llama_server}: skipped)")
            figures = measure(servers, args.n, args.tokens, args.repeat, path.stem, args.sampling)
            rss = {k: peak_rss(p.pid) for k, p in procs.items()}
        finally:
            for proc in procs.values():
                stop(proc)
        for n in args.n:
            m, t, ratio = figures[n]["realm"], figures[n].get("llama"), figures[n].get("ratio")
            rows.append([name, str(n), f"{m['tps']:.0f}", f"{t['tps']:.0f}" if t else "-",
                         f"{ratio:.2f}x" if t else "-",
                         f"{1000 * m['p50']:.0f}", f"{1000 * m['p99']:.0f}",
                         f"{1000 * t['p50']:.0f}" if t else "-", f"{1000 * t['p99']:.0f}" if t else "-",
                         f"{rss['realm'] / 2**20:.0f}", f"{rss['llama'] / 2**20:.0f}" if t else "-"])
    print(f"\nstreaming /v1/completions, {args.threads} threads, {args.tokens} tokens each, {args.sampling}; "
          f"medians of {args.repeat}")
    print_table(["model", "N", "realm tok/s", "llama-server tok/s", "ratio (pairs)", "realm TTFT p50 ms", "p99",
                 "llama-server TTFT p50 ms", "p99", "realm RSS MiB", "llama-server RSS MiB"], rows, args.markdown)


if __name__ == "__main__":
    main()
