"""GGUF open time: realm's reader vs gguf-py's GGUFReader, both models, same run.

    python benchmarks/gguf_open.py [--repeat 7] [--ref-repeat 3] [--models smollm2,gemma3] [--markdown]

For each model (fetched with `realm pull` if needed) it times, as medians:
  realm open        GGUFFile.open: header parsed, tensor index built, nothing of the weights read
  realm open+vocab  the same, then every token string decoded (what a tokenizer would do)
  store.load        ModelStore.load on a fresh store (adds the tensor views and the header copy)
  gguf-py open      gguf.GGUFReader(path)
and prints the ratio gguf-py / realm.  Targets (issue 3): SmolLM2 <= 50 ms, Gemma3-270M <= 150 ms.
"""

from __future__ import annotations

import argparse

from realm.models import MODELS, pull
from realm.reader import GGUFFile
from realm.store import ModelStore

from _common import median_seconds, print_table


def realm_open(path) -> None:
    GGUFFile.open(path).close()


def realm_open_vocab(path) -> None:
    with GGUFFile.open(path) as f:
        f.metadata["tokenizer.ggml.tokens"].tolist()


def store_load(path) -> None:
    with ModelStore() as store:
        store.load(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs of each realm measurement")
    ap.add_argument("--ref-repeat", type=int, default=3, help="runs of gguf-py (seconds each)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    try:
        import gguf
    except ImportError:
        gguf = None

    rows = []
    for name in args.models.split(","):
        path = pull(name)
        realm_open(path)  # warm the page cache: every run below reads from memory
        row = {
            "model": name,
            "realm open": median_seconds(lambda: realm_open(path), args.repeat, warm=False) * 1e3,
            "realm open+vocab": median_seconds(lambda: realm_open_vocab(path), args.repeat, warm=False) * 1e3,
            "store.load": median_seconds(lambda: store_load(path), args.repeat, warm=False) * 1e3,
            "gguf-py open": (median_seconds(lambda: gguf.GGUFReader(path), args.ref_repeat, warm=False) * 1e3
                             if gguf is not None else float("nan")),
        }
        row["gguf-py / realm"] = row["gguf-py open"] / row["realm open"]
        rows.append(row)

    cols = ["model", "realm open", "realm open+vocab", "store.load", "gguf-py open", "gguf-py / realm"]
    cells = [[r["model"]] + [f"{r[c]:.1f} ms" for c in cols[1:-1]] + [f"{r[cols[-1]]:.0f}x"] for r in rows]
    print_table(cols, cells, args.markdown)
    print(f"(medians: realm of {args.repeat} runs, gguf-py of {args.ref_repeat}; file pages already cached)")


if __name__ == "__main__":
    main()
