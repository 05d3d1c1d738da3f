"""`Realm`: load GGUF models once in the host, generate text in WebAssembly guests.

    import realm

    rt = realm.Realm(threads=2)
    rt.load_model("smollm2")                     # a GGUF path, or a name realm pulls
    rt.generate("The capital of France is", max_tokens=16, temperature=0)
    for piece in rt.generate("Once upon a time", stream=True):
        print(piece, end="", flush=True)
    rt.chat([{"role": "user", "content": "What is 2 + 2?"}])
    rt.last_usage       # Usage(prompt_tokens=..., completion_tokens=..., prefill/decode tok/s, guest memory)
    rt.complete("...")  # a Completion: text, token ids, stop reason, usage

Each generation runs in a fresh guest (its own Wasmtime store and linear
memory) that shares the host's copy of the model: the guest tokenizes, runs
the generation loop and samples; the host computes every layer.  Any number of
threads may generate at once on one `Realm`.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import queue
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import abi
from .abi import Err, StopReason
from .batching import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_PREFIX_CACHE_BYTES, BatchSettings, configure
from .cache import LayerCache
from .chat import compiled, no_template_error, special_token_texts, vocabulary
from .errors import (ArgumentTypeError, ClosedError, DeadlineExceeded, InvalidArgumentError, LimitExceeded,
                     ModelNotFoundError, RealmError)
from .guest import Guest, GuestError, GuestSnapshot
from .host import TOP_LOGPROBS_MAX, TokenLogprob, stop_all
from .limits import HostBudget, Limits
from .models import MODELS, model_path, resolve
from .store import ModelStore
from .threads import check_threads

__all__ = ["Realm", "Model", "Usage", "Completion", "TextStream", "ContextWindowError", "GenerationError"]

#: Default size of the store's LayerCache (f32 tensors a guest fetches with realm_get_tensor;
#: the forward pass reads the quantized weights directly and needs none of it).
DEFAULT_CACHE_BYTES = 256 << 20
#: Context (prompt + completion tokens) when neither the call nor the Realm sets one,
#: capped by the model's training context.
DEFAULT_N_CTX = 4096

_U32_MASK = 0xFFFF_FFFF
_I32_MAX = 0x7FFF_FFFF
_STOP_NAMES = {StopReason.EOG: "eog", StopReason.STRING: "stop", StopReason.LENGTH: "length",
               StopReason.HOST: "cancelled"}


class GenerationError(RealmError, RuntimeError):
    """The guest could not generate (a model realm cannot run, the host refused a call...)."""


class ContextWindowError(RealmError, ValueError):
    """The prompt plus max_tokens does not fit the context."""


@dataclass(frozen=True)
class Model:
    """A model loaded in a `Realm` (from `load_model`); pass it, its id or its name as `model=`."""

    id: int
    path: Path
    name: str               #: what load_model was given (a model name, or the path as text)
    architecture: str
    n_vocab: int
    n_ctx_train: int        #: the model's training context (0 when the file states none)
    chat_template: str | None
    bos_token: str
    eos_token: str


@dataclass(frozen=True)
class Usage:
    """What one generation cost.  The guest's memory is its linear memory when it finished."""

    prompt_tokens: int
    completion_tokens: int
    decoded_tokens: int     #: single-token forward passes (the first token comes from the prompt's)
    prefill_seconds: float  #: the prompt's forward pass (512 tokens a call) and its logits
    decode_seconds: float   #: the generation loop: sampling, text, one forward pass per token
    guest_memory: int       #: bytes of the guest's linear memory
    cached_tokens: int = 0  #: prompt tokens whose KV rows came from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else math.inf

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decoded_tokens / self.decode_seconds if self.decode_seconds > 0 else math.nan


@dataclass(frozen=True)
class Completion:
    """A finished generation.  stop_reason: "eog" (an end-of-generation token), "stop" (a stop
    string; the text ends before it), "length" (max_tokens or the context) or "cancelled"."""

    text: str
    tokens: list[int]          #: the completion's token ids
    prompt_tokens: list[int]
    stop_reason: str
    seed: int
    usage: Usage
    #: with `logprobs=`: one per completion token, its log probability and the top alternatives
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class _Request:
    """One generation's guest inputs."""

    prompt: bytes
    flags: int
    params: bytes              # struct realm_generate_params
    stops: bytes               # u32 length + bytes, per stop string
    seed: int
    max_tokens: int
    n_ctx: int
    logprobs: int | None
    tenant: str | None


class TextStream:
    """The pieces of text of a generation running on another thread, as they come.

    Iterate it for the pieces (str, whole characters).  Once it is exhausted, `completion`
    holds the finished `Completion`.  Breaking off early, `close()` or leaving a `with`
    block stops the generation.  An error in the generation is raised by the iteration.
    """

    _DONE = object()

    def __init__(self, run: Callable[[Callable[[str], bool], list], Completion],
                 on_done: Callable[[Completion], None]):
        self.completion: Completion | None = None
        #: with `logprobs=`: a `TokenLogprob` per token as soon as it is known (a token's comes
        #: with the next token's forward step, the last one's at the end)
        self.logprobs: list[TokenLogprob] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._on_done = on_done
        self._finished = False

        def sink(piece: str) -> bool:
            self._queue.put(piece)
            return self._cancel.is_set()

        def work() -> None:
            try:
                result: Any = run(sink, self.logprobs)
            except BaseException as exc:  # handed to the iterating thread
                result = exc
            self._queue.put((self._DONE, result))

        self._thread = threading.Thread(target=work, name="realm-generate", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, tuple) and item and item[0] is self._DONE:
            self._finished = True
            self._thread.join()
            if isinstance(item[1], BaseException):
                raise item[1]
            self.completion = item[1]
            self._on_done(item[1])
            raise StopIteration
        return item

    @property
    def text(self) -> str:
        """The whole text (consumes the stream)."""
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion.text

    def cancel(self) -> None:
        """Ask the generation to stop at its next token, without waiting (the iteration then
        ends as the guest stops; `close` waits too)."""
        self._cancel.set()

    def close(self) -> None:
        """Stop the generation (at its next token) and wait for it."""
        self._cancel.set()
        while not self._finished:
            try:
                next(self)
            except StopIteration:
                break
            except Exception:  # the generation failed; closing does not report it
                self._finished = True

    def __enter__(self) -> "TextStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._cancel.set()


#: Realms alive in this process, for the interpreter's exit (`_stop_at_exit`).
_LIVE: "weakref.WeakSet[Realm]" = weakref.WeakSet()
#: Seconds the interpreter's exit waits for the generations still running to stop.
EXIT_WAIT_S = 10.0


def _stop_at_exit() -> None:
    """At the interpreter's exit (atexit handlers run before its modules are torn down, while
    daemon threads still run): Realms take no new generations; every guest still running -- a
    generation on a TextStream's thread or on a daemon thread of the program's, a `Tenant`'s
    call -- is stopped at its next import call (about a forward pass: `host.stop_all`), and the
    exit waits for them and for snapshots being taken, at most EXIT_WAIT_S.  A guest, pass or
    compilation left running into the teardown crashed the process."""
    end = time.monotonic() + EXIT_WAIT_S
    taking = [lock for r in list(_LIVE) for lock in r._stop()]
    stop_all(end)
    for lock in taking:
        if lock.acquire(timeout=max(0.0, end - time.monotonic())):
            lock.release()


atexit.register(_stop_at_exit)


class Realm:
    """Models loaded once in the host, shared by guests that generate text.

    threads: threads of the host's forward pass (None: every core this process may use).
    cache_bytes: size of the store's LayerCache.
    n_ctx: default context (prompt + completion) per generation; None: 4096 capped by
        the model's training context.  With max_tokens, a generation's KV cache holds
        only prompt + max_tokens positions.
    limits: the `Limits` of every guest this Realm runs (default `Limits()`); deadline_s
        bounds a whole generation, or one tokenize/detokenize call.
    budget_bytes: the ceiling on what all guests together keep alive in KV caches and
        stored models (the store's `HostBudget`; None: half the machine's memory).
    max_batch_tokens: tokens of one forward pass when concurrent generations share it (their
        decode steps, and chunks of a prompt that arrives meanwhile); see `realm.batching`.
    prefix_cache_bytes: KV rows of prompts kept per model for later prompts that start with
        the same tokens (0: off).
    tenant_kv_bytes: KV cache bytes the running generations of one `tenant` label hold
        together (None: no such cap; each guest is still held to `limits.kv_bytes`).  A
        generation that would pass it is refused with `LimitExceeded`.

    Threads calling `generate`/`complete`/`chat` at once are batched: their forward steps run
    as one pass over the weights, and each gets the tokens it would get alone.
    """

    def __init__(self, threads: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES, *,
                 n_ctx: int | None = None, limits: Limits | None = None, budget_bytes: int | None = None,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES, tenant_kv_bytes: int | None = None):
        check_threads(threads)
        _check_n_ctx(n_ctx)
        if limits is not None and not isinstance(limits, Limits):
            raise ArgumentTypeError(f"limits must be a realm.Limits, not {type(limits).__name__}")
        if tenant_kv_bytes is not None:
            if isinstance(tenant_kv_bytes, bool) or not isinstance(tenant_kv_bytes, int):
                raise ArgumentTypeError(f"tenant_kv_bytes must be an int or None, not {type(tenant_kv_bytes).__name__}")
            if tenant_kv_bytes < 0:
                raise InvalidArgumentError(f"tenant_kv_bytes must be >= 0, not {tenant_kv_bytes}")
        self.tenant_kv_bytes = tenant_kv_bytes
        self._tenants: dict[str, list] = {}  # tenant label -> [its HostBudget, its running generations]
        self.threads = threads
        self.n_ctx = n_ctx
        self.limits = limits
        settings = BatchSettings(max_batch_tokens=max_batch_tokens, prefix_cache_bytes=prefix_cache_bytes)
        self.store = ModelStore(LayerCache(max_bytes=cache_bytes), budget=HostBudget(budget_bytes))
        configure(self.store, settings)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time: a file is loaded once
        self._models: dict[int, Model] = {}
        self._default: Model | None = None
        self._closed = False
        self._tokenizers: dict[int, tuple[Guest, threading.Lock]] = {}  # model id -> a guest that tokenizes
        self._local = threading.local()
        self._running: dict[int, tuple[str | None, Any]] = {}  # id(guest) -> (tenant label, its RealmHost)
        self._snapshots: dict[int, GuestSnapshot] = {}  # model id -> a guest to start generations from
        self._snapshotting: dict[int, threading.Lock] = {}  # model id -> held while one is taken
        _LIVE.add(self)

    # -- models ---------------------------------------------------------------------
    def load_model(self, model: str | os.PathLike) -> Model:
        """Load a GGUF file, or a model realm pulls by name ("smollm2", "gemma3"), fetched on
        first use.  Loading the same file again returns the same Model.  The first model
        loaded is the default of `generate` and `chat`."""
        with self._load_lock:
            return self._load(model)

    def _load(self, model: str | os.PathLike) -> Model:
        path = Path(resolve(model)).resolve()
        with self._lock:
            for m in self._models.values():
                if m.path == path:
                    return m
        model_id = self.store.load(path)
        stored = self.store.get(model_id)
        md = stored.metadata
        tokens = vocabulary(md)
        context = md.get(f"{stored.architecture}.context_length")
        template = md.get("tokenizer.chat_template")
        handle = Model(id=model_id, path=path, name=str(model), architecture=stored.architecture,
                       n_vocab=len(tokens) if tokens is not None else 0,
                       n_ctx_train=int(context) if isinstance(context, int) else 0,
                       chat_template=template if isinstance(template, str) else None,
                       **special_token_texts(md))
        with self._lock:
            self._models[model_id] = handle
            if self._default is None:
                self._default = handle
        return handle

    @property
    def models(self) -> list[Model]:
        with self._lock:
            return list(self._models.values())

    def model(self, model: Model | int | str | os.PathLike | None = None) -> Model:
        """A loaded model by handle, id, the name or path it was loaded with; None: the default."""
        with self._lock:
            if self._closed:
                raise ClosedError("this Realm is closed")
            if model is None:
                if self._default is None:
                    raise ModelNotFoundError("no model is loaded: call load_model first")
                return self._default
            if isinstance(model, Model):
                found = self._models.get(model.id)
            elif isinstance(model, int) and not isinstance(model, bool):
                found = self._models.get(model)
            else:
                text = str(model)
                path = model_path(text).resolve() if text in MODELS else Path(text).resolve()
                found = next((m for m in self._models.values() if m.name == text or m.path == path), None)
        if found is None:
            what = f"{model.name!r} (id {model.id})" if isinstance(model, Model) else repr(model)  # not its template
            raise ModelNotFoundError(f"model {what} is not loaded in this Realm")
        return found

    def unload_model(self, model: Model | int | str | os.PathLike) -> None:
        """Remove a model (generations already running keep it until they end)."""
        handle = self.model(model)
        with self._lock:
            self._models.pop(handle.id, None)
            if self._default is not None and self._default.id == handle.id:
                self._default = next(iter(self._models.values()), None)
            tok = self._tokenizers.pop(handle.id, None)
            self._snapshots.pop(handle.id, None)
            self._snapshotting.pop(handle.id, None)
        if tok is not None:
            with tok[1]:
                tok[0].close()
        self.store.remove(handle.id)

    # -- tokens -----------------------------------------------------------------------
    def tokenize(self, text: str | bytes, model: Model | int | str | None = None, *, add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        """Token ids of text, computed in a guest (llama.cpp's ids: `Llama.tokenize(text,
        add_bos=add_special, special=parse_special)`)."""
        data = _text_bytes(text, "text", allow_bytes=True)
        flags = (abi.TOKENIZE_ADD_SPECIAL if add_special else 0) | (abi.TOKENIZE_PARSE_SPECIAL if parse_special else 0)
        with self._tokenizer(self.model(model)) as g:
            return _tokenize(g, data, flags)

    def token_bytes(self, tokens: Sequence[int], model: Model | int | str | None = None) -> list[bytes]:
        """Each token's own bytes (its piece of text; control tokens as their text), as
        OpenAI's logprobs report them."""
        handle = self.model(model)
        out = []
        with self._tokenizer(handle) as g:
            for t in tokens:
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < handle.n_vocab:
                    raise InvalidArgumentError(f"token ids must be ints in [0, {handle.n_vocab}), not {t!r}")
                out.append(_detokenize(g, int(t).to_bytes(4, "little", signed=True), abi.DETOKENIZE_SPECIAL))
        return out

    def in_flight(self) -> dict[str | None, int]:
        """KV bytes held by the generations running now, by the `tenant` label they were given."""
        with self._lock:
            hosts = list(self._running.values())
        out: dict[str | None, int] = {}
        for tenant, host in hosts:
            out[tenant] = out.get(tenant, 0) + host.kv_bytes
        return out

    def detokenize(self, tokens: Sequence[int] | np.ndarray, model: Model | int | str | None = None, *,
                   special: bool = False, errors: str = "replace") -> str:
        """The text of token ids, computed in a guest; control tokens render as their text only
        with `special`.  Bytes that are not UTF-8 (a character cut between tokens) decode by `errors`."""
        handle = self.model(model)
        try:
            ids = np.asarray(tokens).reshape(-1)
        except (TypeError, ValueError):
            raise ArgumentTypeError("tokens must be a sequence of int token ids") from None
        if ids.size and ids.dtype.kind not in "iu":
            raise ArgumentTypeError(f"tokens must be int token ids, not {ids.dtype}")
        if ids.size and (ids.min() < -2**31 or ids.max() >= 2**31):  # the guest refuses ids outside the vocabulary
            raise InvalidArgumentError("token ids must fit in int32")
        with self._tokenizer(handle) as g:
            return _detokenize(g, ids.astype("<i4").tobytes(), abi.DETOKENIZE_SPECIAL if special else 0
                               ).decode("utf-8", errors)

    # -- generation ----------------------------------------------------------------------
    def generate(self, prompt: str, model: Model | int | str | None = None, *, max_tokens: int | None = 256,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 repeat_penalty: float = 1.0, repeat_last_n: int = 64, frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0, seed: int | None = None, stop: str | Sequence[str] | None = None,
                 n_ctx: int | None = None, ignore_eos: bool = False, logprobs: int | None = None,
                 tenant: str | None = None, stream: bool = False) -> str | TextStream:
        """Continue `prompt`; returns the text, or with stream=True a `TextStream` of pieces.

        The prompt is tokenized as llama.cpp's completion API does it (BOS if the vocabulary
        asks for it, control-token text parsed).  Sampling is llama.cpp's chain with its
        defaults; temperature <= 0 is greedy.  seed: None draws one (see Completion.seed).
        stop: strings that end the text (not included).  max_tokens: None generates until an
        end-of-generation token or a full context; ignore_eos goes on past end-of-generation
        tokens (llama.cpp's --ignore-eos, for benchmarks).  logprobs: record each token's log
        probability and this many top alternatives (0..20; `Completion.logprobs`,
        `TextStream.logprobs`).  tenant: a label the generation's KV bytes count under in
        `in_flight()`.  The usage lands in `last_usage`."""
        handle = self.model(model)
        opts = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                    frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed,
                    stop=stop, n_ctx=n_ctx, ignore_eos=ignore_eos, logprobs=logprobs, tenant=tenant)
        request = self._request(handle, _text_bytes(prompt, "prompt"),
                                abi.TOKENIZE_ADD_SPECIAL | abi.TOKENIZE_PARSE_SPECIAL, opts)
        return self._start(handle, request, stream)

    def complete(self, prompt: str, model: Model | int | str | None = None, *,
                 on_text: Callable[[str], bool | None] | None = None,
                 on_logprob: Callable[[TokenLogprob], None] | None = None, **options: Any) -> Completion:
        """`generate` returning the whole `Completion` (text, token ids, stop reason, usage).
        on_text is called with each piece of text as it comes, on this thread (a true return
        stops the generation); on_logprob with each `TokenLogprob` (with `logprobs=`)."""
        if options.pop("stream", False):
            raise InvalidArgumentError("complete() does not stream: use generate(..., stream=True)")
        handle = self.model(model)
        request = self._request(handle, _text_bytes(prompt, "prompt"),
                                abi.TOKENIZE_ADD_SPECIAL | abi.TOKENIZE_PARSE_SPECIAL, _options(options))
        return self._run(handle, request, on_text, on_logprob=on_logprob)

    def chat_complete(self, messages: Sequence[Mapping[str, Any]], model: Model | int | str | None = None, *,
                      chat_template: str | None = None, on_text: Callable[[str], bool | None] | None = None,
                      on_logprob: Callable[[TokenLogprob], None] | None = None, **options: Any) -> Completion:
        """`chat` returning the whole `Completion`; on_text and on_logprob as `complete`."""
        if options.pop("stream", False):
            raise InvalidArgumentError("chat_complete() does not stream: use chat(..., stream=True)")
        handle = self.model(model)
        request = self._chat_request(messages, handle, chat_template, options)
        return self._run(handle, request, on_text, on_logprob=on_logprob)

    def chat(self, messages: Sequence[Mapping[str, Any]], model: Model | int | str | None = None, *,
             chat_template: str | None = None, max_tokens: int | None = 256, stream: bool = False,
             **options: Any) -> str | TextStream:
        """The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]): the model's
        chat template (or `chat_template`) renders them, then `generate` continues with the
        same options; the EOS token's text is a stop string too (as llama-cpp-python)."""
        handle = self.model(model)
        request = self._chat_request(messages, handle, chat_template, dict(options, max_tokens=max_tokens))
        return self._start(handle, request, stream)

    def _chat_request(self, messages: Sequence[Mapping[str, Any]], handle: Model, chat_template: str | None,
                      options: Mapping[str, Any]) -> _Request:
        prompt = self.render_chat(messages, handle, chat_template=chat_template)
        opts = _options(options)
        stops = _stop_list(opts["stop"])
        if handle.eos_token and handle.eos_token not in stops:
            stops.append(handle.eos_token)
        opts["stop"] = stops
        # the template writes any BOS itself: the text is tokenized without adding one
        return self._request(handle, _text_bytes(prompt, "the chat's prompt (its messages rendered)"),
                             abi.TOKENIZE_PARSE_SPECIAL, opts)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], model: Model | int | str | None = None, *,
                    chat_template: str | None = None, add_generation_prompt: bool = True) -> str:
        """The prompt text `chat` would generate from."""
        handle = self.model(model)
        source = handle.chat_template if chat_template is None else chat_template
        if chat_template is None and (source is None or not source.strip()):
            raise no_template_error(handle.path.name)
        if not isinstance(source, str):
            raise ArgumentTypeError(f"chat_template must be a str, not {type(source).__name__}")
        template = compiled(source, handle.bos_token, handle.eos_token)
        return template.render(messages, add_generation_prompt=add_generation_prompt)

    @property
    def last_usage(self) -> Usage | None:
        """The usage of the last generation this thread finished (None before the first)."""
        return getattr(self._local, "usage", None)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release every model (running generations keep theirs until they end); later calls
        raise ClosedError.  Closing twice does nothing more."""
        with self._lock:
            self._closed = True
            tokenizers = list(self._tokenizers.values())
            self._tokenizers.clear()
            self._snapshots.clear()
            self._snapshotting.clear()
            self._models.clear()
            self._default = None
        for g, lock in tokenizers:
            with lock:
                g.close()
        self.store.close()

    def __enter__(self) -> "Realm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop(self) -> list[threading.Lock]:
        """At the interpreter's exit: no new generations; returns the locks of the snapshots
        being taken."""
        with self._lock:
            self._closed = True
            return list(self._snapshotting.values())

    # -- internals --------------------------------------------------------------------------
    def _guest(self, handle: Model) -> Guest:
        """A fresh guest attached to the model."""
        g = Guest(self.store, limits=self.limits, threads=self.threads)
        try:
            g.attach(handle.id)
        except BaseException:
            g.close()
            raise
        return g

    def _tokenizer(self, handle: Model) -> "_Borrowed":
        """A guest kept per model for tokenize/detokenize (its tokenizer is built once)."""
        with self._lock:
            entry = self._tokenizers.get(handle.id)
        if entry is None:
            g = self._guest(handle)
            with self._lock:
                entry = self._tokenizers.setdefault(handle.id, (g, threading.Lock()))
            if entry[0] is not g:
                g.close()
        return _Borrowed(self, handle.id, *entry)

    def _snapshot(self, handle: Model) -> GuestSnapshot:
        """A guest attached to the model with its tokenizer built, taken once per model: each
        generation's guest starts from its memory image, mapped copy-on-write (~0.03 ms; the
        tokenizer of Gemma 3's 262,144 tokens takes ~25 ms to build)."""
        with self._lock:
            snap = self._snapshots.get(handle.id)
            taking = self._snapshotting.setdefault(handle.id, threading.Lock())
        if snap is not None:
            return snap
        with taking:  # one request takes it (~0.1 s: it compiles guest.wasm); those beside it wait
            with self._lock:
                snap = self._snapshots.get(handle.id)
            if snap is None:
                g = self._guest(handle)
                try:
                    try:
                        _tokenize(g, b"x", 0)  # builds the tokenizer
                    except GuestError:  # a model without one: each generation then says so itself
                        pass
                    snap = g.snapshot()
                finally:
                    g.close()
                with self._lock:
                    snap = self._snapshots.setdefault(handle.id, snap)
        return snap

    def _drop_tokenizer(self, model_id: int, guest: Guest) -> None:
        """Forget a kept guest that can no longer run (the next call makes a fresh one)."""
        with self._lock:
            if self._tokenizers.get(model_id, (None,))[0] is guest:
                del self._tokenizers[model_id]
        guest.close()

    def _request(self, handle: Model, prompt: bytes, flags: int, o: Mapping[str, Any]) -> _Request:
        max_tokens = o["max_tokens"]
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or not 1 <= max_tokens <= _I32_MAX):
            raise InvalidArgumentError(f"max_tokens must be an int in [1, 2^31) or None, not {max_tokens!r}")
        _check_n_ctx(o["n_ctx"])
        n_ctx = o["n_ctx"] or self.n_ctx or DEFAULT_N_CTX
        if handle.n_ctx_train:
            if o["n_ctx"] or self.n_ctx:
                if n_ctx > handle.n_ctx_train:
                    raise ContextWindowError(f"n_ctx={n_ctx} exceeds {handle.path.name}'s training context "
                                             f"of {handle.n_ctx_train} tokens")
            else:
                n_ctx = min(n_ctx, handle.n_ctx_train)
        seed = o["seed"]
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") >> 1
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise InvalidArgumentError(f"seed must be an int in [0, 2^64), not {seed!r}")
        floats = {}
        for name in ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty"):
            value = o[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidArgumentError(f"{name} must be a finite number, not {value!r}")
            floats[name] = float(value)
        if floats["repeat_penalty"] <= 0:
            raise InvalidArgumentError("repeat_penalty must be > 0 (1 is off)")
        ints = {}
        for name, low, high in (("top_k", -2**31, 2**31 - 1), ("repeat_last_n", 0, 65536)):
            value = o[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgumentError(f"{name} must be an int in [{low}, {high}], not {value!r}")
            ints[name] = value
        stops = _stop_list(o["stop"])
        if len(stops) > abi.STOP_STRINGS_MAX:
            raise InvalidArgumentError(f"at most {abi.STOP_STRINGS_MAX} stop strings")
        blob = b""
        for s in stops:
            if not isinstance(s, str) or not s:
                raise InvalidArgumentError(f"stop strings must be non-empty str, not {s!r}")
            raw = _text_bytes(s, "a stop string")
            if len(raw) > abi.STOP_STRING_MAX:
                raise InvalidArgumentError(f"a stop string may have at most {abi.STOP_STRING_MAX} bytes")
            blob += struct.pack("<I", len(raw)) + raw
        if o["ignore_eos"]:
            flags |= abi.GENERATE_IGNORE_EOG
        logprobs = o["logprobs"]
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= TOP_LOGPROBS_MAX):
            raise InvalidArgumentError(f"logprobs must be None or an int in [0, {TOP_LOGPROBS_MAX}], not {logprobs!r}")
        params = abi.GENERATE_PARAMS_STRUCT.pack(
            seed, n_ctx, max_tokens or 0, floats["temperature"], ints["top_k"], floats["top_p"], floats["min_p"],
            floats["repeat_penalty"], floats["frequency_penalty"], floats["presence_penalty"],
            ints["repeat_last_n"], flags, 0)
        tenant = o["tenant"]
        if tenant is not None and not isinstance(tenant, str):
            raise ArgumentTypeError(f"tenant must be a str or None, not {type(tenant).__name__}")
        return _Request(prompt, flags, params, blob, seed, max_tokens or 0, n_ctx, logprobs, tenant)

    def _start(self, handle: Model, request: _Request, stream: bool) -> str | TextStream:
        if stream:
            return TextStream(lambda sink, logprobs: self._run(handle, request, sink, record=False, logprobs=logprobs),
                              self._record)
        return self._run(handle, request, None).text

    def _tenant_budget(self, tenant: str | None, delta: int) -> HostBudget | None:
        """The tenant's shared KV budget (needs self._lock), counting its running generations
        by delta; a tenant's entry goes with its last generation."""
        if tenant is None or self.tenant_kv_bytes is None:
            return None
        entry = self._tenants.get(tenant)
        if entry is None:
            entry = self._tenants[tenant] = [HostBudget(self.tenant_kv_bytes), 0]
        entry[1] += delta
        if entry[1] == 0:
            del self._tenants[tenant]
        return entry[0]

    def _record(self, completion: Completion) -> None:
        self._local.usage = completion.usage

    def _run(self, handle: Model, request: _Request, sink: Callable[[str], bool | None] | None, *,
             record: bool = True, logprobs: list[TokenLogprob] | None = None,
             on_logprob: Callable[[TokenLogprob], None] | None = None) -> Completion:
        pieces: list[str] = []

        def collect(piece: str) -> bool:
            pieces.append(piece)
            return bool(sink(piece)) if sink is not None else False

        snap = self._snapshot(handle)
        g = Guest(self.store, limits=self.limits, threads=self.threads, snapshot=snap)
        with self._lock:
            self._running[id(g)] = (request.tenant, g.host)
            g.host.kv_budget = self._tenant_budget(request.tenant, +1)
        try:
            with g.deadline():  # one deadline for the whole generation
                g.host.text_sink = collect
                if request.logprobs is not None:
                    g.host.logprobs = request.logprobs
                    if logprobs is not None:  # a stream's live list
                        g.host.token_logprobs = logprobs
                    g.host.logprob_sink = on_logprob
                completion = _generate(g, request, pieces, handle)
                if request.logprobs is not None:
                    if len(g.host.token_logprobs) < len(completion.tokens):
                        g.host.last_logprob(completion.tokens[-1])
                    completion = dataclasses.replace(completion, logprobs=list(g.host.token_logprobs))
        finally:
            with self._lock:
                self._running.pop(id(g), None)
            g.close()
            with self._lock:
                self._tenant_budget(request.tenant, -1)
        if record:
            self._record(completion)
        return completion


class _Borrowed:
    """`with` a kept guest under its lock; one that can no longer run (past a deadline, a trap)
    is dropped, so the next call gets a fresh one."""

    def __init__(self, realm: Realm, model_id: int, guest: Guest, lock: threading.Lock):
        self.realm, self.model_id, self.guest, self.lock = realm, model_id, guest, lock

    def __enter__(self) -> Guest:
        self.lock.acquire()
        return self.guest

    def __exit__(self, *exc: object) -> None:
        try:
            if self.guest.failed is not None:
                self.realm._drop_tokenizer(self.model_id, self.guest)
        finally:
            self.lock.release()


# -- driving the guest's exports ----------------------------------------------------------

def _tokenize(g: Guest, data: bytes, flags: int) -> list[int]:
    with g.buffer(data) as text:
        cap = 4 * len(data) + 16  # BPE: <= one token a byte; SPM byte fallback: up to 3 a byte, + BOS/EOS
        while True:
            with g.buffer(4 * cap) as out:
                try:
                    n = g.call_checked("guest_tokenize", text, len(data), flags, out, cap)
                except GuestError as exc:
                    if exc.code != Err.BUFFER_TOO_SMALL:
                        raise
                    cap = g.call_checked("guest_tokenize", text, len(data), flags, 0, 0)
                    continue
                return np.frombuffer(g.read(out, 4 * n), dtype="<i4").tolist()


def _detokenize(g: Guest, ids: bytes, flags: int) -> bytes:
    n = len(ids) // 4
    with g.buffer(ids) as tokens:
        size = g.call_checked("guest_detokenize", tokens, n, flags, 0, 0)
        if size == 0:
            return b""
        with g.buffer(size) as out:
            got = g.call_checked("guest_detokenize", tokens, n, flags, out, size)
            return g.read(out, got)


def _generate(g: Guest, request: _Request, pieces: list[str], handle: Model) -> Completion:
    with g.buffers(request.params, request.prompt, request.stops) as (params, prompt, stops):
        try:
            g.call_checked("guest_generate_start", params, prompt, len(request.prompt), stops, len(request.stops))
        except GuestError as exc:
            if exc.code == Err.CONTEXT_FULL:
                n_prompt = len(_tokenize(g, request.prompt, request.flags & ~abi.GENERATE_IGNORE_EOG))
                wanted = f" + max_tokens {request.max_tokens}" if request.max_tokens else ""
                raise ContextWindowError(
                    f"the prompt's {n_prompt} tokens{wanted} do not fit the context of {request.n_ctx} "
                    f"tokens (pass a larger n_ctx, up to the model's {handle.n_ctx_train or 'context'})") from None
            raise _generation_error(exc) from exc
        try:
            t0 = time.perf_counter()
            g.call_checked("guest_generate_prefill")
            t1 = time.perf_counter()
            g.call_checked("guest_generate_run")
            t2 = time.perf_counter()
        except GuestError as exc:
            raise _generation_error(exc) from exc
        ptr = g.call("guest_generate_result") & _U32_MASK
        (tokens_ptr, n_prompt, n_completion, n_decoded, _, reason) = abi.GENERATE_RESULT_STRUCT.unpack(
            g.read(ptr, abi.GENERATE_RESULT_SIZE))
        ids = np.frombuffer(g.read(tokens_ptr, 4 * (n_prompt + n_completion)), dtype="<i4").tolist()
        memory = g.memory_size
        g.call_checked("guest_generate_end")
    usage = Usage(prompt_tokens=n_prompt, completion_tokens=n_completion, decoded_tokens=n_decoded,
                  prefill_seconds=t1 - t0, decode_seconds=t2 - t1, guest_memory=memory,
                  cached_tokens=g.host.cached_tokens)
    return Completion(text="".join(pieces), tokens=ids[n_prompt:], prompt_tokens=ids[:n_prompt],
                      stop_reason=_STOP_NAMES.get(StopReason(reason), "unknown"), seed=request.seed, usage=usage)


def _generation_error(exc: GuestError) -> RealmError:
    """What a generation's failed guest call raises: the host's refusals as LimitExceeded and
    DeadlineExceeded, anything else as GenerationError."""
    if exc.code == Err.LIMIT:
        return LimitExceeded(str(exc))
    if exc.code == Err.DEADLINE:
        return DeadlineExceeded(str(exc))
    return GenerationError(str(exc))


# -- options --------------------------------------------------------------------------------

_DEFAULTS: dict[str, Any] = dict(max_tokens=256, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                                 repeat_penalty=1.0, repeat_last_n=64, frequency_penalty=0.0, presence_penalty=0.0,
                                 seed=None, stop=None, n_ctx=None, ignore_eos=False, logprobs=None, tenant=None)


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Generation options with the defaults of `Realm.generate`; unknown names are a TypeError."""
    unknown = set(options) - set(_DEFAULTS)
    if unknown:
        raise ArgumentTypeError(f"unexpected generation option(s): {', '.join(sorted(unknown))}")
    return {**_DEFAULTS, **options}


def _text_bytes(text: Any, name: str, *, allow_bytes: bool = False) -> bytes:
    """A str argument as UTF-8 (or bytes as they are, where allowed); ArgumentTypeError otherwise."""
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise InvalidArgumentError(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None
    if allow_bytes and isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    kinds = "a str or bytes" if allow_bytes else "a str"
    raise ArgumentTypeError(f"{name} must be {kinds}, not {type(text).__name__}")


def _stop_list(stop: Any) -> list:
    """The `stop` option as a list (its items are checked with the request)."""
    if stop is not None and not isinstance(stop, (str, list, tuple)):
        raise ArgumentTypeError(f"stop must be a str, a list of str or None, not {type(stop).__name__}")
    return [stop] if isinstance(stop, str) else list(stop or ())


def _check_n_ctx(n_ctx: Any) -> None:
    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 2 <= n_ctx <= 1 << 24):
        raise InvalidArgumentError(f"n_ctx must be an int in [2, 2^24] or None, not {n_ctx!r}")
