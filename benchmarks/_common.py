"""Timing and table printing shared by the benchmark scripts (run as `python benchmarks/X.py`,
which puts this folder on sys.path)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit

#: Where llama.cpp's tools are built from the vendored source of llama-cpp-python's sdist (README).
LLAMA_BIN = Path.home() / ".cache/realm/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin"


def median_seconds(fn: Callable[[], object], repeat: int, *, warm: bool = True) -> float:
    """Median wall time of `repeat` calls of fn; `warm` makes one untimed call first (page-ins,
    code loading, thread pools)."""
    if warm:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss(pid: int) -> int:
    """A running process's peak RSS (VmHWM in /proc) in bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def print_table(cols: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> None:
    """rows of cells under cols: a Markdown table, or right-aligned columns."""
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(cols)]
    print("  ".join(h.rjust(w) for h, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def add_load_args(ap: argparse.ArgumentParser) -> None:
    """The options of the concurrent-load scripts: models, client counts, tokens, threads, repeats."""
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--n", nargs="+", type=int, default=[1, 4, 16], help="concurrent clients")
    ap.add_argument("--tokens", type=int, default=48, help="tokens each client generates")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")


def start_together(n: int, work: Callable[[int], object]) -> float:
    """work(0) .. work(n - 1) on n threads released at once; returns the release time
    (perf_counter) once all have finished."""
    barrier = threading.Barrier(n + 1)

    def run(i: int) -> None:
        barrier.wait()
        work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return start


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


# -- a light streaming client ------------------------------------------------------------------
# The servers under test share this machine's cores with their load.  Sixteen httpx client
# threads, each parsing every chunk as JSON, took ~0.9 ms of CPU a token (~0.4 of a core at
# 400 tok/s): more load on the faster server.  These clients are coroutines on one thread over
# plain sockets, and parse only the chunks that matter: until the first text, and the usage.

async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """An HTTP/1.1 response body as it arrives (chunked transfer coding decoded)."""
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF


#: Sampling fields of a request: greedy, or the whole distribution at temperature 1 (each field
#: given, since llama-server's defaults for the ones left out are top-k 40, top-p 0.95, min-p 0.05).
SAMPLING = {"greedy": {"temperature": 0}, "full": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}}


async def _stream_completion(url: str, prompt: str, model: str, tokens: int,
                             sampling: str = "greedy") -> tuple[float, int, float]:
    """(time to the first text, completion tokens, end) of one streamed /v1/completions."""
    u = urlsplit(url)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens, **SAMPLING[sampling],
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    try:
        writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        status = await reader.readline()
        if status.split()[1:2] != [b"200"]:
            raise RuntimeError(f"{url}: {status.decode(errors='replace').strip()}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            chunked |= name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower()
        first, count, usage, buf = 0.0, 0, None, b""
        async for data in _body(reader, chunked):
            buf = (buf + data).replace(b"\r\n", b"\n")  # SSE lines end in either
            *events, buf = buf.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    payload = line[6:]
                    if b'"usage":{' in payload or b'"usage": {' in payload:
                        usage = json.loads(payload)["usage"]["completion_tokens"]
                    elif not first:
                        choices = json.loads(payload).get("choices")
                        if choices and choices[0].get("text"):
                            first = time.perf_counter() - t0
                    count += 1
        return first, usage if usage is not None else count, time.perf_counter()
    finally:
        writer.close()


def stream_round(url: str, jobs: Sequence[tuple[str, str]], tokens: int,
                 sampling: str = "greedy") -> tuple[float, list[tuple[float, int, float]]]:
    """The (prompt, model) jobs streamed all at once; (their start, each one's (time to first
    text, completion tokens, end)) -- perf_counter times."""
    async def run() -> tuple[float, list]:
        start = time.perf_counter()
        return start, await asyncio.gather(*(_stream_completion(url, p, m, tokens, sampling) for p, m in jobs))
    return asyncio.run(run())
