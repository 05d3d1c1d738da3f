"""End-to-end generation through the guest vs llama.cpp: prefill and decode tok/s.

    python benchmarks/generate.py [--threads 2] [--tokens 64] [--repeat 5] [--models smollm2 gemma3]
                                  [--sampling greedy|llama|full]

For each model, the same ~100-token prompt, the logits of the last token only, and greedy
decoding, or with --sampling a seeded draw: `llama` is llama.cpp's default chain (top-k 40,
top-p 0.95, min-p 0.05, temperature 0.8), `full` the whole distribution at temperature 1
(OpenAI's defaults, and `realm serve`'s):
  * realm: `Realm.complete` -- a fresh guest per generation that tokenizes, prefills the
    prompt through realm_forward (one call per 512 tokens), then samples and decodes a token at
    a time (one realm_forward call a token, and realm_emit_text for its text: 2 import calls);
    prefill is the guest_generate_prefill call, decode the guest_generate_run call;
  * host only: realm's forward pass driven from Python without a guest (HostModel.forward),
    to show what the guest adds (its sampling included);
  * llama.cpp (llama-cpp-python, same threads, n_batch 512): eval of the prompt, then eval
    of one token at a time with an argmax over the last logits, or with llama.cpp's own
    sampler chain (llama_sampler_sample) for --sampling.
Medians of --repeat runs after one warm-up.  The last table is the guest's cost per decoded
token: measured (guest - host only) and estimated as 2 import calls at the cost of
one realm import call, measured from a wasm loop.

Each engine runs in a subprocess of its own: libgomp counts the threads of every OpenMP team
in a process, and a team left by one engine on another thread (realm's passes run on a
runner thread, llama.cpp's on the caller's) makes the other's barriers sleep instead of spin,
which slowed llama.cpp's decode here by a third when it ran after realm in one process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np
import wasmtime

from realm import Realm
from realm.forward import HostModel
from realm.host import add_realm_imports
from realm.models import resolve

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based inks and a wooden press adapted from those used to make "
    "wine. Within a few decades, print shops had spread from Mainz to more than two hundred cities "
    "across Europe, and the price of books fell so far that ordinary merchants and craftsmen could "
    "afford them. Scholars argue about how much the press changed the way people thought, but few "
    "doubt that it"
)

CALLS_PER_TOKEN = 2  # realm_forward and realm_emit_text

CALL_WAT = """
(module
  (import "env" "realm_get_model_info" (func $info (param i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "loop") (param $n i32) (param $id i64)
    (loop $again
      (drop (call $info (local.get $id) (i32.const 0) (i32.const 8)))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))
"""


#: --sampling: (temperature, top_k, top_p, min_p)
SAMPLING = {"greedy": (0.0, 0, 1.0, 0.0), "llama": (0.8, 40, 0.95, 0.05), "full": (1.0, 0, 1.0, 0.0)}


def bench_realm(rt: Realm, model, tokens: int, repeat: int, sampling: str) -> dict:
    temperature, top_k, top_p, min_p = SAMPLING[sampling]
    runs = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        c = rt.complete(PROMPT, model, max_tokens=tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        min_p=min_p, seed=i, ignore_eos=True)
        wall = time.perf_counter() - t0
        if i:  # the first run warms the page cache and the kernels
            u = c.usage
            runs.append((u.prompt_tokens / u.prefill_seconds, u.decoded_tokens / u.decode_seconds,
                         wall - u.prefill_seconds - u.decode_seconds, u.guest_memory))
    return {"n_prompt": c.usage.prompt_tokens, "prompt_tokens": c.prompt_tokens,
            "prefill": median([r[0] for r in runs]), "decode": median([r[1] for r in runs]),
            "setup_ms": median([r[2] for r in runs]) * 1e3, "memory": runs[-1][3]}


def bench_host(rt: Realm, model, prompt_tokens: list[int], tokens: int, repeat: int, threads: int) -> dict:
    runs = []
    with HostModel(rt.store, model.id, threads=threads) as host:
        for i in range(repeat + 1):
            kv = host.new_kv_cache(len(prompt_tokens) + tokens)
            t0 = time.perf_counter()
            logits = host.forward(prompt_tokens, kv, last_only=True)
            t1 = time.perf_counter()
            for _ in range(tokens - 1):
                logits = host.forward([int(logits[0].argmax())], kv, last_only=True)
            t2 = time.perf_counter()
            if i:
                runs.append((len(prompt_tokens) / (t1 - t0), (tokens - 1) / (t2 - t1)))
    return {"prefill": median([r[0] for r in runs]), "decode": median([r[1] for r in runs])}


def llama_chain(llama_cpp, sampling: str, seed: int):
    """llama.cpp's sampler chain for a --sampling preset (not greedy)."""
    temperature, top_k, top_p, min_p = SAMPLING[sampling]
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in (llama_cpp.llama_sampler_init_top_k(top_k), llama_cpp.llama_sampler_init_top_p(top_p, 1),
                    llama_cpp.llama_sampler_init_min_p(min_p, 1), llama_cpp.llama_sampler_init_temp(temperature),
                    llama_cpp.llama_sampler_init_dist(seed)):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain


def bench_llama(path: Path, prompt_tokens: list[int], tokens: int, repeat: int, threads: int,
                sampling: str) -> dict | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    n_vocab = llm.n_vocab()
    runs = []
    for i in range(repeat + 1):
        chain = llama_chain(llama_cpp, sampling, i) if sampling != "greedy" else None
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_tokens)
        t1 = time.perf_counter()
        for _ in range(tokens - 1):
            if chain is None:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
                llm.eval([int(logits.argmax())])
            else:
                llm.eval([llama_cpp.llama_sampler_sample(chain, llm.ctx, -1)])
        t2 = time.perf_counter()
        if chain is not None:
            llama_cpp.llama_sampler_free(chain)
        if i:
            runs.append((len(prompt_tokens) / (t1 - t0), (tokens - 1) / (t2 - t1)))
    llm.close()
    return {"prefill": median([r[0] for r in runs]), "decode": median([r[1] for r in runs])}


def import_call_us(rt: Realm, model, calls: int = 20000, repeat: int = 5) -> float:
    """Microseconds per call of a validated realm import from a wasm loop."""
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    host = add_realm_imports(linker, rt.store, shared=[model.id])
    wasm = wasmtime.Store(engine)
    loop = linker.instantiate(wasm, wasmtime.Module(engine, CALL_WAT)).exports(wasm)["loop"]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        loop(wasm, calls, model.id)
        times.append(time.perf_counter() - t0)
    host.close()
    return median(times) / calls * 1e6


def worker(args: argparse.Namespace) -> dict:
    """One engine's figures for one model, in this (fresh) process."""
    path = Path(args.model_path)
    if args.worker == "llama":
        return bench_llama(path, json.loads(args.prompt_tokens), args.tokens, args.repeat, args.threads,
                           args.sampling) or {}
    with Realm(threads=args.threads, prefix_cache_bytes=0) as rt:
        model = rt.load_model(path)
        if args.worker == "host":
            return bench_host(rt, model, json.loads(args.prompt_tokens), args.tokens, args.repeat, args.threads)
        return {**bench_realm(rt, model, args.tokens, args.repeat, args.sampling),
                "per_call_us": import_call_us(rt, model)}


def run_worker(engine: str, path: Path, args: argparse.Namespace, prompt_tokens: list[int] | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--model-path", str(path), "--threads", str(args.threads),
           "--tokens", str(args.tokens), "--repeat", str(args.repeat), "--prompt-tokens", json.dumps(prompt_tokens),
           "--sampling", args.sampling]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"the {engine} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64, help="tokens to generate per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--sampling", choices=sorted(SAMPLING), default="greedy",
                    help="greedy, llama.cpp's default chain, or the full distribution at temperature 1")
    ap.add_argument("--worker", choices=("realm", "host", "llama"), help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-tokens", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows, overhead = [], []
    for name in args.models:
        path = resolve(name)
        r = run_worker("realm", path, args)
        h = run_worker("host", path, args, r["prompt_tokens"])
        ll = run_worker("llama", path, args, r["prompt_tokens"]) or None
        rows.append((path.stem, r, h, ll))
        per_call = r["per_call_us"]
        measured = (1 / r["decode"] - 1 / h["decode"]) * 1e3
        overhead.append((path.stem, CALLS_PER_TOKEN, per_call, CALLS_PER_TOKEN * per_call / 1e3, measured,
                         1e3 / r["decode"]))

    nan = float("nan")
    print(f"\ngeneration, {args.threads} threads, {args.sampling} sampling, {args.tokens} tokens, "
          f"median of {args.repeat}, "
          f"each engine in a process of its own (tok/s; ratio = realm / llama.cpp)")
    head = ("model", "prompt", "prefill realm", "host only", "llama.cpp", "ratio",
            "decode realm", "host only", "llama.cpp", "ratio", "setup ms", "guest MiB")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for stem, r, h, ll in rows:
        lp, ld = (ll["prefill"], ll["decode"]) if ll else (nan, nan)
        print(f"| {stem} | {r['n_prompt']} | {r['prefill']:.1f} | {h['prefill']:.1f} | {lp:.1f} | "
              f"{r['prefill'] / lp:.2f}x | {r['decode']:.1f} | {h['decode']:.1f} | {ld:.1f} | "
              f"{r['decode'] / ld:.2f}x | {r['setup_ms']:.1f} | {r['memory'] / (1 << 20):.1f} |")
    print("\nthe guest's cost per decoded token (ms)")
    head = ("model", "calls/token", "us/call", "calls x us/call", "measured (guest - host only)", "ms/token")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for stem, calls, per_call, estimate, measured, per_token in overhead:
        print(f"| {stem} | {calls} | {per_call:.1f} | {estimate:.3f} | {measured:.3f} | {per_token:.2f} |")
    print("setup: a fresh guest per generation (instantiate the model's snapshot, mapped copy-on-write, and tokenize); "
          "guest MiB: its linear memory after the run")


if __name__ == "__main__":
    main()
