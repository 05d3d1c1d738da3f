"""The process's cores and the threads realm's OpenMP work runs on.

`CORES` lends the cores to passes (and to other multi-threaded host work): work of t threads
runs once t are free, so concurrent generations share the cores instead of oversubscribing
them.  `RUNNERS` holds the threads that work runs on, shared by every model (see `Runners`
for why a thread per model, or the caller's own thread, would not do).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, TypeVar

from .threads import usable_cores

__all__ = ["CORES", "RUNNERS", "Cores", "Runners", "run_on_cores"]

T = TypeVar("T")


class Cores:
    """The process's cores, lent to passes and other multi-threaded host work: work of t threads
    runs once t are free (work wider than the machine runs alone)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._used = 0

    def acquire(self, threads: int) -> None:
        with self._cond:
            total = usable_cores()
            while self._used and self._used + threads > total:
                self._cond.wait()
            self._used += threads

    def release(self, threads: int) -> None:
        with self._cond:
            self._used -= threads
            self._cond.notify_all()


CORES = Cores()


_on_runner = threading.local()  # .yes on the runners' threads


class _Runner:
    """A thread that runs the jobs handed to it, one at a time."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="realm-pass", daemon=True).start()

    def run(self, job: Callable[[], T]) -> T:
        """job()'s result, or its exception, once it has run.  An exception raised in the caller
        meanwhile (KeyboardInterrupt at Ctrl-C, on the main thread) is held until then: a pass
        writes into its callers' KV caches and guest memories, which the unwinding would free
        under it (and its result, left in the queue, would answer the runner's next job)."""
        self._jobs.put(job)
        interrupted: BaseException | None = None
        while True:
            try:
                result = self._results.get()
                break
            except BaseException as exc:
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        if isinstance(result, BaseException):
            raise result
        return result

    def stop(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        _on_runner.yes = True
        while (job := self._jobs.get()) is not None:
            try:
                result = job()
            except BaseException as exc:  # handed to the caller
                result = exc
            self._results.put(result)


class Runners:
    """The threads every engine's passes (and `run_on_cores`'s work) run on, shared by the process.

    Each thread that runs an OpenMP region becomes the master of a team of its own, and libgomp
    counts the threads of every team: once they outnumber the cores, it stops spinning at barriers
    and sleeps at each one instead -- for every library of the process.  A pass has hundreds of
    barriers (measured: SmolLM2's decode step 10-70% slower while a second team existed, and
    llama.cpp's 35% slower in a process where realm had run).  So passes do not run on the thread
    of the caller that leads them, nor on a thread per model: a pass holds its cores (`CORES`)
    and borrows an idle runner, the most recently used first; a new runner starts only when
    passes run side by side, which their cores allow only on a machine that has room for both
    teams.  The runners stop when the last engine closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Runner] = []
        self._engines = 0

    def run(self, threads: int, job: Callable[[], T]) -> T:
        """job() on a runner, once `threads` cores are free (not from a runner's own job: it
        would wait for the cores that job holds)."""
        CORES.acquire(threads)
        try:
            with self._lock:
                runner = self._idle.pop() if self._idle else None
            runner = runner or _Runner()
            try:
                return runner.run(job)
            finally:
                with self._lock:
                    if self._engines:
                        self._idle.append(runner)
                    else:
                        runner.stop()
        finally:
            CORES.release(threads)

    def opened(self) -> None:
        with self._lock:
            self._engines += 1

    def closed(self) -> None:
        with self._lock:
            self._engines -= 1
            if not self._engines:
                for runner in self._idle:
                    runner.stop()
                self._idle.clear()


RUNNERS = Runners()


def run_on_cores(threads: int, job: Callable[[], T]) -> T:
    """job() -- host work that runs OpenMP regions of `threads` threads, outside the passes --
    on one of the runners once its cores are free, so it shares the cores and the OpenMP team
    with the passes (on a runner already: at once)."""
    if getattr(_on_runner, "yes", False):
        return job()
    return RUNNERS.run(threads, job)
