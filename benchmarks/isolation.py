"""Isolation: a well-behaved tenant's decode speed alone and beside each attacker.

    python benchmarks/isolation.py [--model smollm2] [--threads 1] [--tokens 64] [--rounds 3] [--markdown]

The victim: `Realm.complete` of a fixed prompt, greedy, --tokens tokens (ignore_eos), on
--threads forward-pass threads; its decode tok/s comes from `Completion.usage`.  Each attacker
(tests/attackers.py) runs on its own thread for the whole of the victim's rounds, restarted
whenever realm stops it:
  spin     a guest that never returns (deadline_s 1): stopped by its deadline
  hammer   a guest calling realm_get_model_info in a loop (deadline_s 1): stopped by its deadline
  hog      a guest growing and writing its memory until the cap (memory_bytes 256 MiB)
  walker   issue 10's quota walk: store SmolLM2 (from guest memory) -> kv_create -> remove, 16 rounds
  hoarder  store SmolLM2 -> kv_create, keeping everything: refused at its quota
  parser   realm_store_model of a 64 MiB header of nested arrays, 16 times: refused by the reader's caps
  template a chat template of nested loops and doubling strings, rendered: cut off by the
           template's time limit (1 s)
  all      every attacker above at once
The table: the victim's median decode tok/s and its ratio to alone (target >= 0.8 on this 2-core
machine), how long each attack ran before realm stopped it (median, and its limit), and the
process's peak RSS against the host budget's peak (what tenants kept alive in KV caches and
stored models).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attackers  # noqa: E402
from _common import print_table  # noqa: E402
from realm import ChatTemplate, Limits, Realm  # noqa: E402
from realm.models import resolve  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
LIMITS = Limits(memory_bytes=256 << 20, deadline_s=1.0, stored_models=2)
TEMPLATE_LIMIT_S = 1.0


def victim_rate(rt: Realm, tokens: int) -> float:
    c = rt.complete(PROMPT, max_tokens=tokens, temperature=0, ignore_eos=True)
    return c.usage.decode_tokens_per_second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=1, help="the victim's forward-pass threads")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="victim generations per attacker")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    path = resolve(args.model)
    model_bytes = bytearray(Path(path).read_bytes())
    data = {"walker": model_bytes, "hoarder": model_bytes,
            "parser": bytearray(attackers.nested_arrays_header(64 << 20))}
    with Realm(threads=args.threads, prefix_cache_bytes=0) as rt:
        model = rt.load_model(path)
        attacks = {name: (lambda fn=fn, name=name: fn(rt.store, model.id, data.get(name), LIMITS))
                   for name, fn in attackers.ATTACKS.items()}
        attacks["template"] = lambda: attackers.template_attack(ChatTemplate(attackers.TEMPLATE))
        limits = {"spin": f"deadline {LIMITS.deadline_s:g} s", "hammer": f"deadline {LIMITS.deadline_s:g} s",
                  "hog": f"memory {LIMITS.memory_bytes >> 20} MiB", "walker": f"{LIMITS.stored_models} models",
                  "hoarder": f"{LIMITS.stored_models} models",
                  "parser": "header caps", "template": "template time limit"}

        victim_rate(rt, args.tokens)  # warm-up
        alone = statistics.median(victim_rate(rt, args.tokens) for _ in range(args.rounds))
        rows = [["alone", f"{alone:.1f}", "1.00", "-", "-", "-"]]
        for name in [*attacks, "all"]:
            chosen = list(attacks) if name == "all" else [name]
            stop, outcomes = threading.Event(), {n: [] for n in chosen}
            workers = [threading.Thread(target=attackers.keep_attacking, args=(attacks[n], stop, outcomes[n]))
                       for n in chosen]
            for w in workers:
                w.start()
            time.sleep(0.2)  # let the attack get going
            rates = [victim_rate(rt, args.tokens) for _ in range(args.rounds)]
            stop.set()
            for w in workers:
                w.join()
            rate = statistics.median(rates)
            ended = {o.ended_by for n in chosen for o in outcomes[n]}
            took = statistics.median(o.seconds for n in chosen for o in outcomes[n]) if ended else float("nan")
            rows.append([name, f"{rate:.1f}", f"{rate / alone:.2f}", ", ".join(sorted(ended)), f"{took:.2f}",
                         limits.get(name, "all of them")])
        budget = rt.store.budget
    cols = ["attacker", "victim decode tok/s", "vs alone", "attack ended by", "attack ran (s)", "limit"]
    print(f"{args.model}, victim on {args.threads} thread(s), {args.tokens} tokens, medians of {args.rounds}")
    print_table(cols, rows, args.markdown)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_rss:.0f} MiB; host budget: peak {budget.peak / 2**20:.0f} MiB of "
          f"{budget.max_bytes / 2**20:.0f} MiB reserved by tenants (KV caches and stored models)")


if __name__ == "__main__":
    main()
