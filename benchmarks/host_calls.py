"""Host calls from the guest: realm_get_tensor (cache miss vs hit) and the bare cost of an import.

    python benchmarks/host_calls.py [--model PATH] [--repeat 15] [--calls 20000]

Table 1: a Q4_K and a Q6_K tensor of Gemma-3-270M fetched by the real guest
(guest_fetch_tensor -> realm_get_tensor -> ModelStore/LayerCache -> f32 copied
into guest memory), on a cache miss (a store whose cache holds nothing, so every
call dequantizes) and on a hit; next to it, the same tensor dequantized on the
host without a guest by realm, by llama.cpp's to_float (one thread) and by
gguf-py.  Times are medians in milliseconds.

Table 2: what one guest->host call costs, measured from a wasm loop of --calls
calls: a call to another wasm function (no host), to a Python host function that
does nothing defined with wasmtime-py's `define_func` (its Python trampoline), and to
realm's validated imports (defined through realm's C trampoline, realm/_imports.pxi).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import wasmtime

import realm
from realm.cache import LayerCache
from realm.guest import Guest
from realm.host import add_realm_imports
from realm.store import ModelStore

from _common import median_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MiB = 1 << 20


def default_model() -> Path:
    from realm.models import pull

    return pull("gemma3")


def peers():
    """(llama.cpp to_float, gguf-py dequantize) or None for each one not installed."""
    try:
        from ggml_ref import load_ggml

        ggml = load_ggml()
    except Exception:  # llama-cpp-python missing
        ggml = None
    try:
        import gguf.quants as gq
        from gguf import GGMLQuantizationType
    except ImportError:
        gq = None
    to_float = (lambda t: ggml.to_float(t.data.reshape(-1), int(t.dtype))) if ggml else None
    gguf_py = (lambda t: gq.dequantize(t.data, GGMLQuantizationType(int(t.dtype)))) if gq else None
    return to_float, gguf_py


def fetcher(g: Guest, name: str):
    """A zero-argument call of the guest export with buffers allocated once."""
    raw = name.encode()
    name_ptr = g.alloc(len(raw))
    g.write(name_ptr, raw)
    need = g.call("guest_fetch_tensor", name_ptr, len(raw), 0, 0)
    out = g.alloc(need)

    def fetch():
        rc = g.call("guest_fetch_tensor", name_ptr, len(raw), out, need)
        assert rc == need, rc
    return fetch


def tensor_table(path: Path, repeat: int) -> None:
    hot = ModelStore(LayerCache(256 * MiB))
    cold = ModelStore(LayerCache(0))  # caches nothing: every fetch is a miss
    hot_id, cold_id = hot.load(path), cold.load(path)
    tensors = hot.get(hot_id).tensors
    picks = []
    for qtype in (realm.GGMLType.Q4_K, realm.GGMLType.Q6_K):
        name = max((n for n, t in tensors.items() if t.dtype == qtype), key=lambda n: tensors[n].n_elements)
        picks.append(name)
    to_float, gguf_py = peers()

    print(f"{path.name}: realm_get_tensor through the guest, median of {repeat} (ms)")
    cols = ["tensor", "type", "Melem", "miss", "hit", "miss/hit", "realm", "llama.cpp", "gguf-py"]
    widths = [26, 5, 6, 7, 7, 8, 7, 9, 8]
    print(" ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    with Guest(hot) as warm_guest, Guest(cold) as cold_guest:
        warm_guest.attach(hot_id)
        cold_guest.attach(cold_id)
        for name in picks:
            t = tensors[name]
            miss = 1e3 * median_seconds(fetcher(cold_guest, name), repeat)
            before = hot.cache.stats()["hits"]
            hit = 1e3 * median_seconds(fetcher(warm_guest, name), repeat)  # the warm-up call is the one miss
            assert hot.cache.stats()["hits"] - before == repeat
            host = 1e3 * median_seconds(lambda: realm.dequantize(t.data, t.dtype, t.shape), repeat)
            ll = 1e3 * median_seconds(lambda: to_float(t), repeat) if to_float else float("nan")
            gp = 1e3 * median_seconds(lambda: gguf_py(t), max(3, repeat // 3)) if gguf_py else float("nan")
            row = [name, t.dtype.name, f"{t.n_elements / 1e6:.2f}", f"{miss:.3f}", f"{hit:.3f}",
                   f"{miss / hit:.1f}x", f"{host:.3f}", f"{ll:.3f}", f"{gp:.2f}"]
            print(" ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print("miss: dequantize + copy into guest memory; hit: copy only (LayerCache); "
          "realm / llama.cpp / gguf-py: dequantize on the host, no guest")


LOOP_WAT = """
(module
  (import "env" "noop" (func $noop (param i64 i32 i32) (result i32)))
  (import "env" "realm_get_model_info" (func $info (param i64 i32 i32) (result i32)))
  (import "env" "realm_get_metadata" (func $meta (param i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $inner (param i64 i32 i32) (result i32) (i32.const 0))
  (func $loop (param $n i32) (param $id i64) (param $which i32)
    (loop $again
      (drop (if (result i32) (i32.eqz (local.get $which))
        (then (call $inner (local.get $id) (i32.const 0) (i32.const 8)))
        (else (if (result i32) (i32.eq (local.get $which) (i32.const 1))
          (then (call $noop (local.get $id) (i32.const 0) (i32.const 8)))
          (else (if (result i32) (i32.eq (local.get $which) (i32.const 2))
            (then (call $info (local.get $id) (i32.const 0) (i32.const 8)))
            (else (call $meta (local.get $id) (i32.const 0) (i32.const 0)))))))))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
  (export "loop" (func $loop)))
"""


def call_table(path: Path, calls: int, repeat: int) -> None:
    store = ModelStore()
    model_id = store.load(path)
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    i64, i32 = wasmtime.ValType.i64(), wasmtime.ValType.i32()
    linker.define_func("env", "noop", wasmtime.FuncType([i64, i32, i32], [i32]), lambda *args: 0)
    host = add_realm_imports(linker, store, shared=[model_id])
    wasm = wasmtime.Store(engine)
    loop = linker.instantiate(wasm, wasmtime.Module(engine, LOOP_WAT)).exports(wasm)["loop"]
    print(f"\nimport call cost, median of {repeat} loops of {calls} calls (microseconds per call)")
    for which, label in enumerate(["wasm -> wasm function (no host)", "wasm -> Python no-op (wasmtime-py trampoline)",
                                   "realm_get_model_info (validated, 12 bytes out)",
                                   "realm_get_metadata size query"]):
        us = median_seconds(lambda: loop(wasm, calls, model_id, which), repeat) * 1e6 / calls
        print(f"  {label:48s} {us:8.3f}")
    host.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a Gemma-3 GGUF with Q4_K and Q6_K tensors (default: realm pull gemma3)")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    path = args.model or default_model()
    tensor_table(path, args.repeat)
    call_table(path, args.calls, max(3, args.repeat // 3))


if __name__ == "__main__":
    main()
