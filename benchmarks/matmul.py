"""Quantized matmul speed: realm vs llama.cpp's ggml mul_mat, same weights, same run.

    python benchmarks/matmul.py [--rows 4096] [--cols 4096] [--batch 64] [--threads 2]
                                [--repeat 7] [--types Q4_K,Q6_K] [--markdown]

For each format, llama.cpp's quantizer makes a [rows x cols] weight matrix from
Gaussian values; then y = x W^T is timed for one token (matvec: decode) and
for --batch tokens (matmul: prompt prefill), on one thread and on --threads.
The peer is llama.cpp itself: a ggml graph of mul_mat nodes computed by
libggml-cpu (ggml_graph_compute_with_ctx), i.e. the kernels llama.cpp runs,
including its llamafile sgemm where it applies, compiled for this CPU.
From 8 tokens on, llama.cpp 0.3.36 takes the K-quants (Q2_K..Q6_K), IQ4_XS and
the IQ2/IQ3/IQ1 types through its tiled matmul (ggml-cpu/tiled), which sums
whole blocks in another order than its one-token kernels: its results then
differ from realm's (the "max diff" column), which keeps the one-token
numerics at every batch size.  GGML_CPU_TILED_MM=0 in the environment turns
that path off, leaving llama.cpp's vec_dot kernels, the same bits as realm's;
the header says which is in force.
Figures are GFLOP/s (2 rows cols tokens / time, medians of --repeat runs);
"tok/s" is what that rate means for a model of 100M weights in this format.

Both libraries use OpenMP.  On a machine shared with other busy processes the
default (spinning) wait policy can stall every barrier for a scheduler time
slice, for both alike; OMP_WAIT_POLICY=passive avoids that at a small cost in
barrier latency.  The header prints the load average and the policy in force.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

import numpy as np

from realm import GGMLType, _native

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ggml_ref import load_ggml  # noqa: E402

from _common import median_seconds  # noqa: E402

TYPES = "F32,F16,BF16,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K"
MODEL_WEIGHTS = 100e6


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class GgmlMulMat:
    """`reps` mul_mat nodes y = x W^T over one weight tensor, in one ggml graph, so a
    compute call (which starts its own thread pool) is timed over several products."""

    _libs: tuple[ctypes.CDLL, ctypes.CDLL] | None = None

    @classmethod
    def libs(cls) -> tuple[ctypes.CDLL, ctypes.CDLL]:
        if cls._libs is None:
            import llama_cpp

            libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
            base = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
            cpu = ctypes.CDLL(os.path.join(libdir, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
            p = ctypes.c_void_p
            for name, res, args in [
                ("ggml_init", p, [_InitParams]), ("ggml_free", None, [p]),
                ("ggml_new_tensor_2d", p, [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
                ("ggml_mul_mat", p, [p, p, p]), ("ggml_new_graph", p, [p]),
                ("ggml_build_forward_expand", None, [p, p]), ("ggml_get_data", p, [p]),
            ]:
                fn = getattr(base, name)
                fn.restype, fn.argtypes = res, args
            cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
            cpu.ggml_graph_compute_with_ctx.argtypes = [p, p, ctypes.c_int]
            if hasattr(cpu, "ggml_cpu_init"):
                cpu.ggml_cpu_init()
            cls._libs = (base, cpu)
        return cls._libs

    def __init__(self, wq: np.ndarray, qtype: GGMLType, rows: int, cols: int, x: np.ndarray, reps: int, runs: int):
        base, self.cpu = self.libs()
        self.base, self.reps, self.rows, self.n_tok = base, reps, rows, x.shape[0]
        # every compute call takes its work buffer (the quantized x, per-thread scratch) from the
        # context, never given back: room for each call's, with a margin
        work = 2 * x.nbytes + (1 << 20)
        mem = wq.nbytes + x.nbytes + reps * self.n_tok * rows * 4 + (runs + 2) * work + (16 << 20)
        self.ctx = base.ggml_init(_InitParams(mem, None, False))
        if not self.ctx:
            raise MemoryError("ggml_init failed")
        w = base.ggml_new_tensor_2d(self.ctx, int(qtype), cols, rows)
        ctypes.memmove(base.ggml_get_data(w), wq.ctypes.data, wq.nbytes)
        xt = base.ggml_new_tensor_2d(self.ctx, int(GGMLType.F32), cols, self.n_tok)
        ctypes.memmove(base.ggml_get_data(xt), x.ctypes.data, x.nbytes)
        self.graph = base.ggml_new_graph(self.ctx)
        self.ys = [base.ggml_mul_mat(self.ctx, w, xt) for _ in range(reps)]
        for y in self.ys:
            base.ggml_build_forward_expand(self.graph, y)

    def run(self, threads: int) -> None:
        if self.cpu.ggml_graph_compute_with_ctx(self.ctx, self.graph, threads) != 0:
            raise RuntimeError("ggml_graph_compute failed")

    def result(self) -> np.ndarray:
        ptr = ctypes.cast(self.base.ggml_get_data(self.ys[0]), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, (self.n_tok, self.rows)).copy()

    def close(self) -> None:
        self.base.ggml_free(self.ctx)


def measure(qtype: GGMLType, wq: np.ndarray, rows: int, cols: int, n_tok: int, threads: list[int], repeat: int) -> dict:
    x = np.random.default_rng(1).standard_normal((n_tok, cols), dtype=np.float32)
    flops = 2.0 * rows * cols * n_tok
    reps = 8 if n_tok == 1 else 2
    y = np.empty((n_tok, rows), dtype=np.float32)
    g = GgmlMulMat(wq, qtype, rows, cols, x, reps, (repeat + 1) * len(threads))
    res = {}
    try:
        for nt in threads:
            def realm_run():
                for _ in range(reps):
                    _native.matmul(wq, qtype, rows, x, out=y, threads=nt)
            res[("realm", nt)] = flops / (median_seconds(realm_run, repeat) / reps) / 1e9
            res[("llama", nt)] = flops / (median_seconds(lambda: g.run(nt), repeat) / reps) / 1e9
        ref = g.result()
        res["agree"] = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
    finally:
        g.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--markdown", action="store_true", help="print the rows as a Markdown table")
    args = ap.parse_args()
    ggml = load_ggml()
    threads = sorted({1, args.threads})
    rng = np.random.default_rng(0)

    cols = [f"{'realm' if who == 'realm' else 'llama.cpp'} {nt}t" for who in ("realm", "llama") for nt in threads]
    head = ["format", "tokens", *cols, f"ratio {threads[-1]}t", f"tok/s {threads[-1]}t", "max diff"]
    sep = " | " if args.markdown else "  "
    print(f"# y = x W^T, W {args.rows} x {args.cols}; GFLOP/s (median of {args.repeat}); "
          f"ratio = realm / llama.cpp (ggml mul_mat, same run); tok/s = for {MODEL_WEIGHTS / 1e6:.0f}M weights; "
          f"load average {os.getloadavg()[0]:.2f}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"GGML_CPU_TILED_MM={os.environ.get('GGML_CPU_TILED_MM', 'unset (on)')}")
    widths = [6, 6] + [12] * len(cols) + [9, 9, 9]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
    else:
        print(sep.join(h.rjust(w) for h, w in zip(head, widths)))
    for name in args.types.split(","):
        qtype = GGMLType[name.strip().upper()]
        wq = ggml.quantize(rng.standard_normal((args.rows, args.cols), dtype=np.float32), qtype)
        for n_tok in (1, args.batch):
            r = measure(qtype, wq, args.rows, args.cols, n_tok, threads, args.repeat)
            nt = threads[-1]
            cells = [qtype.name, str(n_tok)] + [f"{r[(who, t)]:.1f}" for who in ("realm", "llama") for t in threads]
            cells += [f"{r[('realm', nt)] / r[('llama', nt)]:.2f}", f"{r[('realm', nt)] * 1e9 / (2 * MODEL_WEIGHTS):.0f}",
                      f"{r['agree']:.0e}"]
            if args.markdown:
                print("| " + " | ".join(cells) + " |")
            else:
                print(sep.join(c.rjust(w) for c, w in zip(cells, widths)), flush=True)


if __name__ == "__main__":
    main()
