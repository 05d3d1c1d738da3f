"""Continuous batching: the forward work of every tenant of a model in one pass over its weights.

A decode step of a small model is bound by memory bandwidth: reading the weights costs
the same for one token as for sixteen.  So the host does not run each tenant's forward
call on its own: the calls that wait at the same time are run as one batched pass
(csrc/forward.h's `realm_forward_batch`), every weight block decoded once for all their
tokens, attention per sequence over its own KV cache.  Guests see nothing of it: each
import call returns when its own work is done, with the bits it would have had alone.

Rendezvous (leader/follower, no scheduler thread).  A caller queues its work and waits.
Whenever no pass is running, a waiting caller checks whether the next pass may start:
  - at once if every *awaited* member has queued -- the members (tenants) whose work
    the last pass answered are expected back within a moment (a guest samples and
    streams text between two forward calls);
  - else once the rendezvous window has passed since the last pass ended: the window
    is the last pass's duration, at least RENDEZVOUS_MIN_S and at most
    RENDEZVOUS_MAX_S.  A member that misses it is not awaited again (it joins
    whichever pass runs when it comes), so a slow or hostile tenant costs the others at
    most one window per sequence.
That caller becomes the leader: it takes the queued work (see `_compose`), runs the
pass without the GIL, hands each follower its result and wakes them.  A tenant that
is alone never waits: its last pass awaited only itself.  Its cost is one lock and one
condition check per call (benchmarks/concurrency.py measures it at N = 1).

What a pass takes: the work of the earliest stage among the queued (a whole forward
step, then per-layer calls in layer order, then the LM head: per-layer guests converge
on the same layer) -- unless some work was passed over STARVED_PASSES times, whose stage
then goes next -- each KV cache once.  A forward step's tokens are cut into chunks
when others share the pass: at most `max_batch_tokens` tokens a pass, decode steps
first, so a long prompt is prefilled a chunk a pass beside the decoders instead of
stalling them.

No oversubscription: passes of every model in the process draw on one pool of cores
(`realm.cores.CORES`); a pass runs only when its threads fit, so N concurrent generations share
the cores through one OpenMP team instead of N spinning against each other, and the
passes run on runner threads shared by every model (`realm.cores`), so the process keeps
no more OpenMP teams than its cores hold.

Exact prefix cache (`PrefixCache`): KV rows of token prefixes the host computed, kept
per model, reused for a new sequence that starts with the same tokens.  A KV row
depends only on the tokens up to it, and every pass gives each token the same bits,
so reused rows are the rows a recomputation would write.
"""

from __future__ import annotations

import _thread
import collections
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np

from . import _native
from ._native import FORWARD_EINVAL
from .errors import ArgumentTypeError, check_int
from .forward import HostModel, KVCache
from .limits import HostBudget
from .store import ModelStore
from .cores import RUNNERS

__all__ = ["BatchSettings", "Engine", "PrefixCache", "engine_for", "release_engine", "engine_stats", "configure",
           "DEADLINE", "WITHDRAWN"]

#: Default tokens of one pass when several sequences share it: a burst of 16 short prompts
#: (~150 tokens) is prefilled in one pass, and a decoder waits at most one such pass for a long
#: prompt's chunk (~0.25 s for Gemma 3 270M on 2 cores).  128 split such a burst in two: its
#: last prompts' first tokens came one pass (~50 ms) later.
DEFAULT_MAX_BATCH_TOKENS = 256
#: Default bytes of KV rows the prefix cache of one model keeps.
DEFAULT_PREFIX_CACHE_BYTES = 64 << 20
#: Bounds of the rendezvous window (see the module docstring).
RENDEZVOUS_MIN_S = 0.002
RENDEZVOUS_MAX_S = 0.05
#: Passes a queued work may be passed over (for work of an earlier stage) before its stage goes next.
STARVED_PASSES = 2
#: Prefixes shorter than this are not worth an entry.
PREFIX_MIN_TOKENS = 4

#: `Engine.forward`'s answer when the caller's deadline passed while its work waited.
DEADLINE = -1_000_001
#: ... and when the member left (its tenant closed) while its work waited.
WITHDRAWN = -1_000_002


@dataclass(frozen=True)
class BatchSettings:
    """How a store's models batch: max_batch_tokens bounds the tokens of a pass that several
    sequences share (a lone sequence's prompt goes whole); prefix_cache_bytes bounds each
    model's prefix cache (0: off)."""

    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES

    def __post_init__(self) -> None:
        check_int("max_batch_tokens", self.max_batch_tokens, 1)
        check_int("prefix_cache_bytes", self.prefix_cache_bytes, 0)


# -- the prefix cache ----------------------------------------------------------------------------

class _Prefix:
    __slots__ = ("tokens", "k", "v", "nbytes")

    def __init__(self, tokens: np.ndarray, k: np.ndarray, v: np.ndarray):
        self.tokens, self.k, self.v = tokens, k, v
        self.nbytes = tokens.nbytes + k.nbytes + v.nbytes


class _Node:
    """A node of the prefix cache's token trie: `through` entries pass through (or end at) it;
    `key` is set where an entry ends, which is at a leaf (no entry is a prefix of another)."""

    __slots__ = ("children", "through", "key")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.through = 0
        self.key: int | None = None


class PrefixCache:
    """KV rows of token prefixes, least recently used out first, at most max_bytes.

    `insert(tokens, kv)` keeps rows 0..len(tokens)-1 of a cache holding those tokens; `longest(tokens)`
    finds an entry sharing the longest prefix with a sequence.  Any prefix of an entry is usable:
    row j depends on tokens 0..j only.  So no entry is a prefix of another: a new entry
    supersedes those, and one already covered is not kept twice.  The entries hang in a token
    trie, so a lookup walks the sequence once instead of comparing it with every entry.  With a
    `budget` (the store's HostBudget) every entry is also charged there, beside the tenants' KV
    caches and models: an entry that does not fit evicts older ones, and is dropped if even an
    empty cache leaves no room -- a cache never takes a byte a tenant could have had.
    Thread-safe."""

    def __init__(self, max_bytes: int, budget: HostBudget | None = None):
        self.max_bytes = max_bytes
        self.budget = budget
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[int, _Prefix] = collections.OrderedDict()
        self._root = _Node()
        self._ids = 0
        self.nbytes = 0
        self.hits = 0          #: lookups that reused rows
        self.hit_tokens = 0    #: rows reused
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, tokens: np.ndarray) -> tuple[_Prefix | None, int]:
        """An entry sharing the longest prefix with tokens, and that length."""
        with self._lock:
            self.lookups += 1
            node, n = self._walk(tokens)
            if n == 0:
                return None, 0
            key = self._leaf_under(node)
            self._entries.move_to_end(key)
            return self._entries[key], n

    def count_hit(self, rows: int) -> None:
        with self._lock:
            self.hits += 1
            self.hit_tokens += rows

    def insert(self, tokens: np.ndarray, kv: KVCache) -> None:
        """Keep the rows of `tokens` (the tokens at positions 0.. of kv) unless an entry holds
        them already; entries that are a prefix of them go."""
        n = len(tokens)
        if n < PREFIX_MIN_TOKENS or self.max_bytes == 0 or n * kv.row_bytes + tokens.nbytes > self.max_bytes:
            return
        with self._lock:
            if self._uncovered(tokens) is None:
                return
        k, v = kv.read_rows(n)  # without the lock: others may insert meanwhile, so look again below
        entry = _Prefix(tokens.copy(), k, v)
        with self._lock:
            node = self._uncovered(tokens)
            if node is None:
                return
            if node.key is not None:  # an entry of a prefix of tokens: superseded
                self._drop(node.key)
            while self.nbytes + entry.nbytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
            while self.budget is not None and not self.budget.reserve(entry.nbytes):
                if not self._entries:
                    return  # the tenants hold the budget: no room for a cache
                self._drop(next(iter(self._entries)))
            self._ids += 1
            self._entries[self._ids] = entry
            self.nbytes += entry.nbytes
            node = self._root
            for t in entry.tokens.tolist():
                node = node.children.setdefault(t, _Node())
                node.through += 1
            node.key = self._ids

    def _uncovered(self, tokens: np.ndarray) -> _Node | None:
        """The deepest node of tokens' path, or None where an entry holds tokens (or more), which
        then counts as used (needs the lock)."""
        node, depth = self._walk(tokens)
        if depth < len(tokens):
            return node
        self._entries.move_to_end(self._leaf_under(node))
        return None

    def _walk(self, tokens: np.ndarray) -> tuple[_Node, int]:
        """The deepest node on tokens' path and its depth: the longest prefix of tokens that an
        entry shares (needs the lock)."""
        node, depth = self._root, 0
        for t in tokens.tolist():
            child = node.children.get(t)
            if child is None:
                break
            node, depth = child, depth + 1
        return node, depth

    @staticmethod
    def _leaf_under(node: _Node) -> int:
        """The key of an entry through node (the oldest branch's)."""
        while node.key is None:
            node = next(iter(node.children.values()))
        return node.key

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.nbytes -= entry.nbytes
        if self.budget is not None:
            self.budget.release(entry.nbytes)
        parent = self._root
        for t in entry.tokens.tolist():
            node = parent.children[t]
            node.through -= 1
            if node.through == 0:  # nothing else below: the rest of the path goes with it
                del parent.children[t]
                return
            parent = node
        parent.key = None

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                self._drop(next(iter(self._entries)))


# -- work and the batcher ---------------------------------------------------------------------------

_FORWARD, _LAYER, _LM_HEAD = 0, 1, 2


class _Wake:
    """The wake-up of one waiting caller: a raw lock, held until `set` releases it.  Every
    caller waits at every step, and a Condition's wait and notify run a dozen lines of Python
    each (a new lock per wait, a deque of waiters) while holding the GIL that the other
    tenants' steps need.  `set` and `wait` are called with the engine's lock held."""

    __slots__ = ("_sem", "_set")

    def __init__(self) -> None:
        self._sem = _thread.allocate_lock()
        self._sem.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._sem.release()

    def wait(self, lock: Any, timeout: float | None) -> None:
        """Release lock, block until `set` or timeout seconds, take lock again; the wake-up is
        consumed (a `set` that came after the timeout included).  An exception raised meanwhile
        (Ctrl-C) is raised once lock is held again: the caller's `with lock:` releases it, and
        a lock released twice may be one another thread holds."""
        lock.release()
        try:
            self._sem.acquire(True, -1 if timeout is None else timeout)
        finally:
            _retake(lock)
        if self._set:
            self._sem.acquire(False)  # held again whether the wait took it or timed out
            self._set = False


def _retake(lock: Any) -> None:
    """lock.acquire(), retried past an exception raised while it blocks (a signal's handler
    raising KeyboardInterrupt), which is raised once the lock is held."""
    interrupted: BaseException | None = None
    while True:
        try:
            lock.acquire()
            break
        except BaseException as exc:
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


class _Work:
    """One caller's queued work.  stage orders the kinds: 0 a whole forward step, 1 + il layer il,
    1 + n_layer the LM head."""

    __slots__ = ("member", "kind", "stage", "kv", "tokens", "done", "pos", "logits", "hidden", "out", "il",
                 "rc", "finished", "running", "skipped", "wake")

    def __init__(self, member: Hashable, kind: int, stage: int):
        self.member, self.kind, self.stage = member, kind, stage
        self.wake = _Wake()  # its caller waits here
        self.kv: KVCache | None = None
        self.tokens: np.ndarray | None = None
        self.done = 0                     # tokens (forward) already run
        self.pos = 0
        self.logits: np.ndarray | None = None
        self.hidden: np.ndarray | None = None
        self.out: np.ndarray | None = None
        self.il = -1
        self.rc = 0
        self.finished = False
        self.running = False
        self.skipped = 0                  # passes that ran while it waited

    @property
    def left(self) -> int:
        return len(self.tokens) - self.done if self.tokens is not None else 0


class Engine:
    """One model's forward pass, shared by every tenant of a store: the `HostModel`, the
    batcher that runs their work in common passes, and the prefix cache.  Made by
    `engine_for`; thread-safe."""

    def __init__(self, store: ModelStore, model_id: int, threads: int | None, settings: BatchSettings,
                 held: bool):
        self.model = HostModel(store, model_id, threads=threads, held=held)
        self.settings = settings
        self.prefix = PrefixCache(settings.prefix_cache_bytes, store.budget)
        self._batch = _native.Batch(self.model._fm)
        self._n_layer = self.model.config.n_layer
        # One lock; each queued work's caller waits on a _Wake of its own, woken when its work
        # ends or when it may lead the next pass (a broadcast would wake every caller at each
        # submission and each pass: N^2 wake-ups a step); _cond is for leave()'s waits.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[_Work] = []
        self._running = False
        self._awaited: set[Hashable] = set()   # members the last pass answered, expected back
        self._late: set[Hashable] = set()      # members that missed a rendezvous: never awaited again
        self._last_end = 0.0
        self._last_seconds = 0.0
        self._users = 0
        self._removed = False
        #: passes run, tokens and sequences they held (see `stats`)
        self.passes = 0
        self.pass_tokens = 0
        self.pass_seqs = 0
        self.max_seqs = 0
        self.last_seqs = 0
        self._closed = False
        RUNNERS.opened()  # closed by _close

    # -- the work -----------------------------------------------------------------
    def check(self, kv: KVCache, tokens_addr: int, n: int, pos: int, il: int = -1) -> int:
        """The C code's verdict on one sequence's arguments (0 or a REALM_E* code)."""
        return self._batch.check(kv, tokens_addr, n, pos, il)

    def forward(self, member: Hashable, kv: KVCache, tokens: np.ndarray, pos: int, logits: np.ndarray | None,
                deadline: float | None = None) -> int:
        """Embedding and every layer for int32 tokens at positions pos.. of kv, then -- unless
        logits is None -- the last token's logits into `logits` (n_vocab float32), run in a pass
        with whatever else waits.  Returns 0 or the C code (the caller checked the arguments
        with `check`), DEADLINE or WITHDRAWN."""
        w = _Work(member, _FORWARD, 0)
        w.kv, w.tokens, w.pos, w.logits = kv, tokens, pos, logits
        return self._submit(w, deadline)

    def layer(self, member: Hashable, kv: KVCache, il: int, hidden: np.ndarray, pos: int, out: np.ndarray,
              deadline: float | None = None) -> int:
        """Layer il of hidden rows [n, n_embd] at positions pos.. into out (may be hidden)."""
        w = _Work(member, _LAYER, 1 + il)
        w.kv, w.il, w.hidden, w.pos, w.out = kv, il, hidden, pos, out
        return self._submit(w, deadline)

    def lm_head(self, member: Hashable, hidden: np.ndarray, out: np.ndarray, deadline: float | None = None) -> int:
        """Logits [n, n_vocab] of hidden rows [n, n_embd] into out."""
        w = _Work(member, _LM_HEAD, 1 + self._n_layer)
        w.hidden, w.out = hidden, out
        return self._submit(w, deadline)

    def reuse_prefix(self, kv: KVCache, history: np.ndarray, tokens: np.ndarray, pos: int, keep_last: bool) -> int:
        """Copy into kv the rows of a cached prefix that cover tokens at positions pos.. (history:
        the tokens kv holds at 0..pos-1); returns how many of `tokens` they cover -- all but the
        last when its logits are wanted (`keep_last`)."""
        if self.prefix.max_bytes == 0 or not len(self.prefix):
            return 0
        full = np.concatenate([history[:pos], tokens]) if pos else tokens
        entry, n = self.prefix.longest(full)
        n = min(n, pos + len(tokens) - (1 if keep_last else 0))
        if entry is None or n <= pos:
            return 0
        kv.write_rows(entry.k, entry.v, pos, n)
        self.prefix.count_hit(n - pos)
        return n - pos

    def keep_prefix(self, kv: KVCache, history: np.ndarray) -> None:
        """Offer the rows kv holds for `history` (its tokens at 0..) to the prefix cache (which
        refuses prefixes too short, or any when it is off)."""
        self.prefix.insert(history[:min(len(history), kv.length)], kv)

    def leave(self, member: Hashable) -> None:
        """The member has no more work for now (its sequence ended, its tenant closed): the next
        passes do not wait for it.  Work of it that is queued is withdrawn; work in the running
        pass is waited for, so the member's memory may be freed once this returns."""
        with self._cond:
            self._awaited.discard(member)
            self._late.discard(member)
            for w in self._queue:
                if w.member is member and not w.running:
                    w.rc, w.finished = WITHDRAWN, True
                    w.wake.set()
            self._queue = [w for w in self._queue if not w.finished]
            self._wake_next()  # the next pass need not wait for the member any more
            while any(w.member is member and w.running for w in self._queue):
                self._cond.wait()

    def stats(self) -> dict[str, Any]:
        """Passes run and what they held; the prefix cache's entries, bytes and hits."""
        with self._cond:
            p = self.prefix
            return {"passes": self.passes, "pass_tokens": self.pass_tokens, "pass_sequences": self.pass_seqs,
                    "max_sequences": self.max_seqs, "last_sequences": self.last_seqs, "queued": len(self._queue),
                    "prefix_entries": len(p), "prefix_bytes": p.nbytes, "prefix_hits": p.hits,
                    "prefix_hit_tokens": p.hit_tokens, "prefix_lookups": p.lookups}

    # -- the rendezvous -------------------------------------------------------------
    def _submit(self, work: _Work, deadline: float | None) -> int:
        with self._lock:
            self._queue.append(work)
        try:
            while True:
                with self._lock:
                    batch = self._turn(work, deadline)
                    if batch is None:
                        return work.rc
                    self._running = True
                started: list[bool] = []
                ran: list[int] = []  # the pass's code, also when the leader is interrupted after it
                t0 = time.monotonic()
                try:  # the leader has the pass run without the lock
                    self._on_runner(batch, started, ran)
                finally:
                    with self._lock:
                        if started:
                            self._finish(batch, ran[0] if ran else FORWARD_EINVAL, time.monotonic() - t0)
                        else:  # interrupted before the pass ran (waiting for cores): the others' work waits on
                            self._unclaim(batch)
        except BaseException:  # the caller unwinds (Ctrl-C): its work, unless a pass runs it, goes too
            with self._lock:
                if not work.finished and not work.running:
                    work.rc, work.finished = WITHDRAWN, True
                    self._queue.remove(work)
                    self._wake_next()
            raise

    def _turn(self, work: _Work, deadline: float | None) -> list[tuple[_Work, int]] | None:
        """Wait (with the lock) until work is finished (None) or this caller leads a pass (its
        batch).  Work still queued past the deadline is withdrawn with DEADLINE."""
        while True:
            if work.finished:
                return None
            now = time.monotonic()
            if deadline is not None and now > deadline and not work.running:
                work.rc, work.finished = DEADLINE, True
                self._queue.remove(work)
                self._wake_next()  # it may have been the one woken to lead
                return None
            delay = None
            if not self._running:
                delay = self._delay(now)
                if delay <= 0:
                    return self._compose()
                if work is not self._first_waiting():
                    # only the first waits out the window (_wake_next wakes the next first): a
                    # timer of each would fire in the pass it leads, on the pass's cores
                    delay = None
            if deadline is not None:
                left = max(deadline - now, 0.0)
                delay = left if delay is None else min(delay, left)
            work.wake.wait(self._lock, None if delay is None else delay + 1e-4)

    def _first_waiting(self) -> _Work | None:
        """The first work in the queue that no pass runs (needs the lock)."""
        for w in self._queue:
            if not w.running and not w.finished:
                return w
        return None

    def _wake_next(self) -> None:
        """Wake the caller of the first work waiting in the queue, which leads the next pass
        (now, or once the rendezvous window has passed); needs the lock."""
        if not self._running and (w := self._first_waiting()) is not None:
            w.wake.set()

    def _delay(self, now: float) -> float:
        """Seconds until the next pass may start (<= 0: now); needs the lock and a queue."""
        if not self._queue:
            return 3600.0
        queued = {w.member for w in self._queue}
        missing = self._awaited - queued
        if not missing:
            return 0.0
        window = min(max(self._last_seconds, RENDEZVOUS_MIN_S), RENDEZVOUS_MAX_S)
        left = self._last_end + window - now
        if left <= 0:
            self._awaited -= missing
            self._late |= missing
        return left

    def _compose(self) -> list[tuple[_Work, int]]:
        """The next pass: (work, tokens it runs) of the earliest stage queued, each KV cache
        once; forward steps within the token budget when others share the pass."""
        stage = min(w.stage for w in self._queue)
        starved = [w for w in self._queue if w.skipped >= STARVED_PASSES]
        if starved:  # work of a later stage, passed over while others kept coming: its turn
            stage = starved[0].stage
        batch: list[tuple[_Work, int]] = []
        caches: set[int] = set()
        candidates = [w for w in self._queue if w.stage == stage]
        if stage == 0:
            candidates.sort(key=lambda w: w.left > 1)  # decode steps first, then prompts, each in order
            shared = len(candidates) > 1 or bool(self._awaited - {candidates[0].member})
            budget = self.settings.max_batch_tokens if shared else None
        for w in candidates:
            if w.kv is not None:
                if id(w.kv) in caches:
                    continue
                caches.add(id(w.kv))
            take = 0
            if stage == 0:
                take = w.left if budget is None else min(w.left, budget)
                if batch and take == 0:
                    break
                take = max(take, 1)
                if budget is not None:
                    budget -= take
            w.running = True
            batch.append((w, take))
        return batch

    def _on_runner(self, batch: list[tuple[_Work, int]], started: list[bool], ran: list[int]) -> None:
        """`_execute` on one of the process's runners (see `realm.cores.Runners`): `started`
        once it starts, its code put in `ran`.  A leader interrupted meanwhile (Ctrl-C) raises
        once the pass is done, and the others in it still get the pass's code."""

        def job() -> None:
            started.append(True)
            ran.append(self._execute(batch))

        RUNNERS.run(self.model._fm.threads, job)

    def _execute(self, batch: list[tuple[_Work, int]]) -> int:
        """Run one pass (on a runner, without the engine's lock)."""
        fm = self.model._fm
        kind = batch[0][0].kind
        if kind == _FORWARD:
            items = []
            for w, take in batch:
                ends = w.done + take == len(w.tokens)
                logits = w.logits.ctypes.data if ends and w.logits is not None else 0
                items.append((w.kv, w.tokens.ctypes.data + 4 * w.done, take, w.pos + w.done, logits))
            return self._batch.forward(items)
        if kind == _LAYER:
            rows = [w.hidden for w, _ in batch]
            x = np.concatenate(rows) if len(rows) > 1 else rows[0].copy()
            rc = self._batch.layer(batch[0][0].il, [(w.kv, len(w.hidden), w.pos) for w, _ in batch],
                                   x.ctypes.data)
            if rc == 0:
                at = 0
                for w, _ in batch:
                    w.out[...] = x[at:at + len(w.hidden)]
                    at += len(w.hidden)
            return rc
        rows = [w.hidden for w, _ in batch]
        logits = fm.lm_head(np.concatenate(rows) if len(rows) > 1 else rows[0])
        at = 0
        for w, _ in batch:
            w.out[...] = logits[at:at + len(w.hidden)]
            at += len(w.hidden)
        return 0

    def _unclaim(self, batch: list[tuple[_Work, int]]) -> None:
        """A pass that never ran: its work back to waiting in the queue (needs the lock)."""
        self._running = False
        for w, _ in batch:
            w.running = False
        self._wake_next()
        self._cond.notify_all()  # leave() waiting for a member's running work

    def _finish(self, batch: list[tuple[_Work, int]], rc: int, seconds: float) -> None:
        """Hand out a pass's results (needs the lock)."""
        self._running = False
        self._last_end = time.monotonic()
        self._last_seconds = seconds
        self.passes += 1
        self.pass_seqs += len(batch)
        self.max_seqs = max(self.max_seqs, len(batch))
        self.last_seqs = len(batch)
        for w, take in batch:
            w.running = False
            self.pass_tokens += take or (len(w.hidden) if w.hidden is not None else 0)
            if w.kind == _FORWARD and rc == 0:
                w.done += take
                if w.left > 0:
                    continue  # more chunks of its prompt
            w.rc, w.finished = rc, True
            w.wake.set()
            if w.member not in self._late:
                self._awaited.add(w.member)
        self._queue = [w for w in self._queue if not w.finished]
        for w in self._queue:
            if not any(w is b for b, _ in batch):
                w.skipped += 1
        self._wake_next()
        self._cond.notify_all()  # leave() waiting for a member's running work

    # -- lifetime ---------------------------------------------------------------------
    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        RUNNERS.closed()
        self.prefix.clear()
        self.model.close()


# -- one engine per (store, model, threads) ----------------------------------------------------------

class _Registry:
    def __init__(self, store: ModelStore):
        self.settings = BatchSettings()
        self.engines: dict[tuple[int, int | None], Engine] = {}
        self.store = weakref.ref(store)
        store.on_remove(self._removed)

    def _removed(self, model_id: int) -> None:
        with _registry_lock:
            gone = [key for key in self.engines if key[0] == model_id]
            closing = []
            for key in gone:
                engine = self.engines.pop(key)
                engine._removed = True
                if engine._users == 0:
                    closing.append(engine)
        for engine in closing:
            engine._close()


_registry_lock = threading.Lock()
_registries: "weakref.WeakKeyDictionary[ModelStore, _Registry]" = weakref.WeakKeyDictionary()


def _registry(store: ModelStore) -> _Registry:
    with _registry_lock:
        reg = _registries.get(store)
        if reg is None:
            reg = _registries[store] = _Registry(store)
        return reg


def configure(store: ModelStore, settings: BatchSettings) -> None:
    """The batching settings of a store's engines made from now on."""
    if not isinstance(settings, BatchSettings):
        raise ArgumentTypeError(f"settings must be a BatchSettings, not {type(settings).__name__}")
    _registry(store).settings = settings


def engine_for(store: ModelStore, model_id: int, threads: int | None, *, held: bool = False) -> Engine:
    """The engine of a model at a thread count, made on first use (raises what HostModel raises);
    pair with `release_engine`.  It lives while the model is in the store, so its prefix cache
    outlasts the requests; once the model is removed it goes with its last user."""
    reg = _registry(store)
    key = (model_id, threads)
    with _registry_lock:
        engine = reg.engines.get(key)
        if engine is not None:
            engine._users += 1
            return engine
    fresh = Engine(store, model_id, threads, reg.settings, held)
    with _registry_lock:
        engine = reg.engines.get(key)
        if engine is None:
            if model_id in store:
                reg.engines[key] = fresh
            else:  # removed: this user's own, closed when it lets go
                fresh._removed = True
            engine = fresh
        engine._users += 1
    if engine is not fresh:
        fresh._close()
    return engine


def engine_stats(store: ModelStore) -> dict[tuple[int, int | None], dict[str, Any]]:
    """`Engine.stats()` of each engine of a store, by (model id, threads)."""
    reg = _registry(store)
    with _registry_lock:
        engines = dict(reg.engines)
    return {key: engine.stats() for key, engine in engines.items()}


def release_engine(engine: Engine) -> None:
    """A user is done with the engine."""
    with _registry_lock:
        engine._users -= 1
        last = engine._users == 0 and engine._removed
    if last:
        engine._close()
