"""The OpenAI-compatible ASGI application over a `Realm`.

Every request runs in its own guest (a fresh WebAssembly instance, as `Realm.generate`
does), all of them on one host copy of each model, batched by the host: concurrent
requests share forward passes and each gets the tokens it gets alone.  Requests are
validated (pydantic) before any guest starts; errors use OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable, Sequence

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ..errors import ArgumentTypeError, InvalidArgumentError, RealmError
from ..runtime import Completion, Model, Realm
from .admission import Admission, ServerLimits
from .errors import APIError, from_realm
from .metrics import CONTENT_TYPE, Metrics
from .schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("realm.server")

#: Largest request body (bytes); a longer one is answered 413 before it is read further.
MAX_BODY_BYTES = 8 << 20
#: Seconds a shutdown waits for requests in flight before it cuts them.
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0

_FINISH = {"eog": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


class RealmApp:
    """The ASGI app `create_app` returns: its FastAPI app (`.app`) inside a middleware that
    refuses bodies over max_bytes (by Content-Length, or as they arrive), counts /v1 answers by
    status and logs one line per request when it ends; `drain` starts a graceful stop."""

    def __init__(self, app: Any, srv: "_Server", max_bytes: int):
        self.app, self.srv, self.max_bytes = app, srv, max_bytes

    def drain(self, cut_after_s: float) -> None:
        """The server is stopping: see _Server.drain."""
        self.srv.drain(cut_after_s)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                await self._too_large().response()(scope, receive, sending)
                return
            seen = 0

            async def limited() -> dict:
                nonlocal seen
                message = await receive()
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
                return message

            await self.app(scope, limited, sending)
        finally:
            path = scope.get("path", "")
            if path.startswith("/v1/"):
                self.srv.metrics.requests.labels(path, str(status[0] or 499)).inc()
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %d %.1f ms", client[0], scope.get("method", "-"), path, status[0] or 499,
                     1000 * (time.perf_counter() - t0))

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is over {self.max_bytes} bytes", code="body_too_large")


def check_api_keys(api_keys: Sequence[str]) -> tuple[str, ...]:
    """The keys as a tuple: each a non-empty str of printable ASCII without spaces, as a client
    can send it in `Authorization: Bearer KEY` (HTTP headers are not UTF-8)."""
    if isinstance(api_keys, str):
        raise ArgumentTypeError("api_keys must be a sequence of keys, not one str")
    keys = tuple(api_keys)
    for key in keys:
        if not isinstance(key, str):
            raise ArgumentTypeError(f"an API key must be a str, not {type(key).__name__}")
        if not key or not all("!" <= c <= "~" for c in key):
            raise InvalidArgumentError("an API key must be printable ASCII without spaces, as a client sends it "
                                       "in an Authorization header")
    return keys


def _tenant_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class _Server:
    """The handlers' shared state."""

    def __init__(self, realm: Realm, limits: ServerLimits, api_keys: tuple[str, ...],
                 catalog: tuple[str, ...] | None):
        self.realm, self.limits, self.catalog = realm, limits, catalog
        self.keys = {key.encode(): _tenant_name(key) for key in api_keys}
        self.admission = Admission(limits)
        # a thread per running generation (the default executor has too few for 16)
        self.pool = concurrent.futures.ThreadPoolExecutor(limits.max_concurrent, thread_name_prefix="realm-serve")
        self._names: dict[int, str] = {}  # model id -> name, kept after an unload (its metrics stay)
        self.metrics = Metrics(realm, self.name_of, self.admission.figures)
        self.created = int(time.time())
        self._token_bytes: dict[tuple[int, int], bytes] = {}
        self.runs: set[_Run] = set()  # the generations running now (changed on the event loop only)

    def drain(self, cut_after_s: float) -> None:
        """The server is stopping: generations still running `cut_after_s` from now are stopped
        and their requests answered 503, so that each ends before the server's own deadline
        cancels it.  Callable from any thread."""
        timer = threading.Timer(cut_after_s, self._cut_all)
        timer.daemon = True
        timer.start()

    def _cut_all(self) -> None:
        for run in list(self.runs):  # a copy: the event loop may add or drop runs meanwhile
            run.cut()

    # -- who and what --------------------------------------------------------------
    def tenant(self, request: Request) -> str:
        """The API key's tenant (401 without a valid one when keys are set), else the client's address."""
        if not self.keys:
            return "anon-" + (request.client.host if request.client else "unknown")
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token:
            given = token.strip().encode()
            for key, name in self.keys.items():
                if hmac.compare_digest(key, given):
                    return name
        raise APIError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key")

    def name_of(self, model_id: int) -> str:
        if model_id not in self._names:  # models come and go under a catalog (realm.serve_ray)
            self._names.update((m.id, m.path.stem) for m in self.realm.models)
        return self._names.get(model_id, str(model_id))

    def model(self, name: str | None) -> Model:
        if name is None:
            if self.catalog:
                name = self.catalog[0]
            else:
                return self.realm.model()
        for m in self.realm.models:
            if name in (m.name, m.path.name, m.path.stem):
                return m
        raise APIError(404, f"the model {name!r} does not exist here (GET /v1/models lists them)", param="model",
                       code="model_not_found")

    def model_id(self, m: Model) -> str:
        return m.path.stem

    def token_bytes(self, m: Model, ids: list[int]) -> list[bytes]:
        missing = [t for t in dict.fromkeys(ids) if (m.id, t) not in self._token_bytes]
        if missing:
            for t, b in zip(missing, self.realm.token_bytes(missing, m)):
                self._token_bytes[(m.id, t)] = b
        return [self._token_bytes[(m.id, t)] for t in ids]


# -- generation on a worker thread, pieces handed to the event loop ------------------------

class _Run:
    """One generation on a worker thread; its pieces of text and log probabilities land in an
    event loop as the guest makes them (no other thread in between)."""

    def __init__(self, start: Callable[..., Completion], pool: concurrent.futures.Executor, runs: set[_Run]):
        self._items: collections.deque = collections.deque()  # ("piece", text), then ("done" | "error", value)
        self._ready = asyncio.Event()
        self.logprobs: list = []  # filled on the event loop, in order
        self._stop = threading.Event()
        self.cut_off = False  # stopped by the server's drain (_Server.drain)
        loop = asyncio.get_running_loop()

        def put(item: tuple) -> None:
            self._items.append(item)
            self._ready.set()

        def hand_over(fn: Callable, arg: Any) -> None:
            """fn(arg) on the event loop; once the loop has closed (the server stopped after
            its drain timed out) nobody reads this generation any more: it stops."""
            try:
                loop.call_soon_threadsafe(fn, arg)
            except RuntimeError:
                self._stop.set()

        def on_text(piece: str) -> bool:
            hand_over(put, ("piece", piece))
            return self._stop.is_set()

        def on_logprob(entry: Any) -> None:
            hand_over(self.logprobs.append, entry)

        async def work() -> None:
            runs.add(self)
            try:
                call = functools.partial(start, on_text=on_text, on_logprob=on_logprob)
                completion = await loop.run_in_executor(pool, call)
                put(("error", _shut_down()) if self.cut_off else ("done", completion))
            except BaseException as exc:  # handed to the handler
                put(("error", exc))
            finally:
                runs.discard(self)

        self.task = asyncio.ensure_future(work())

    async def get(self, timeout: float | None = None) -> tuple:
        """The next item; consecutive pieces come joined as one (when the event loop falls
        behind, it sends fewer, larger chunks rather than falling further behind).
        asyncio.TimeoutError after `timeout` seconds without one."""
        while not self._items:
            self._ready.clear()
            await asyncio.wait_for(self._ready.wait(), timeout)
        kind, value = self._items.popleft()
        if kind == "piece":
            while self._items and self._items[0][0] == "piece":
                value += self._items.popleft()[1]
        return kind, value

    async def cancel(self) -> None:
        """Stop the generation at its next token and wait until its guest has ended (its KV
        cache freed)."""
        self._stop.set()
        await asyncio.wait([self.task])

    def cut(self) -> None:
        """Stop the generation at its next token; its request is answered 503 (any thread)."""
        self.cut_off = True
        self._stop.set()


def _shut_down() -> APIError:
    return APIError(503, "the server stopped before this generation finished", code="server_shutting_down")


def create_app(realm: Realm, *, limits: ServerLimits | None = None, api_keys: tuple[str, ...] = (),
               max_body_bytes: int = MAX_BODY_BYTES, catalog: tuple[str, ...] | None = None,
               shutdown_grace_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> RealmApp:
    """The ASGI app serving `realm`'s loaded models (the Realm's `limits` should carry
    limits.timeout_s and kv_bytes, and tenant_kv_bytes=limits.tenant_kv_bytes:
    `realm.server.serve` builds it so).
    catalog: the model names GET /v1/models lists, the first the default, when the caller loads
    them into `realm` on demand (realm.serve_ray); None: the models loaded now.
    shutdown_grace_s: how long a stream in flight may go on once the server is stopping
    (sse-starlette otherwise cuts every stream at the signal); the server's own graceful
    timeout still bounds the whole drain.  The returned app's drain(cut_after_s), called when
    the server starts stopping, answers 503 to the generations still running after that long
    (`realm.server.serve` calls it half a second before its drain's deadline)."""
    srv = _Server(realm, limits or ServerLimits(), check_api_keys(api_keys), tuple(catalog) if catalog else None)
    srv.shutdown_grace_s = shutdown_grace_s
    app = FastAPI(title="realm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _validation_error(exc.errors()).response()

    @app.exception_handler(RealmError)
    async def _realm_error(request: Request, exc: RealmError) -> Response:
        return from_realm(exc).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        # a bug: still an answer in OpenAI's shape (uvicorn logs the traceback)
        return APIError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                        code="internal_error").response()

    @app.exception_handler(HTTPException)
    async def _routing_error(request: Request, exc: HTTPException) -> Response:
        # the router's own answers (an unknown path, a method the path does not take) in the
        # same shape as every other error, with their headers (Allow)
        where = f"{request.method} {request.url.path}"
        headers = exc.headers or {}
        allowed = [v for k, v in headers.items() if k.lower() == "allow"]
        message = (f"Invalid URL ({where})" if exc.status_code == 404 else
                   f"{where}: {exc.detail}" + (f" (allowed: {allowed[0]})" if allowed else ""))
        response = APIError(exc.status_code, message).response()
        response.headers.update(headers)
        return response

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> dict[str, Any]:
        waiting, running, tenants = srv.admission.figures()
        return {"status": "ok", "models": [srv.model_id(m) for m in realm.models], "running": running,
                "queued": waiting, "kv_bytes": sum(realm.in_flight().values())}

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics() -> Response:
        return Response(srv.metrics.render(), media_type=CONTENT_TYPE)

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models(request: Request) -> dict[str, Any]:
        srv.tenant(request)
        names = srv.catalog or [srv.model_id(m) for m in realm.models]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": srv.created,
                                            "owned_by": "realm"} for name in names]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        tenant = srv.tenant(request)
        body = _parse(CompletionRequest, await _json(request))
        model = srv.model(body.model)
        start = functools.partial(realm.complete, body.prompt, model, logprobs=body.logprobs, tenant=tenant,
                                  **body.options())
        return await _respond(srv, request, tenant, model, body, start, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        tenant = srv.tenant(request)
        body = _parse(ChatCompletionRequest, await _json(request))
        model = srv.model(body.model)
        try:
            n_logprobs = body.n_logprobs()
        except ValueError as exc:
            raise APIError(400, str(exc), param="top_logprobs", code="invalid_value") from None
        start = functools.partial(realm.chat_complete, body.chat_messages(), model, logprobs=n_logprobs,
                                  tenant=tenant, **body.options())
        return await _respond(srv, request, tenant, model, body, start, chat=True)

    return RealmApp(app, srv, max_body_bytes)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the body's JSON nests too deeply", code="invalid_json") from None
    except ValueError:  # Python's bound on an int's digits (4300)
        raise APIError(400, "the body's JSON has a number with too many digits", code="invalid_json") from None


def _parse(schema: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc.errors()) from None


def _validation_error(errors: list[dict[str, Any]]) -> APIError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return APIError(400, f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param, code="invalid_value")


async def _respond(srv: _Server, request: Request, tenant: str, model: Model, body: Any,
                   start: Callable[..., Completion], *, chat: bool) -> Response:
    await srv.admission.enter(tenant)
    entered = True
    try:
        t0 = time.perf_counter()
        run = _Run(start, srv.pool, srv.runs)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            # the first piece (or the refusal) before any header: a prompt over the context is a 400
            head = await run.get()
            if head[0] == "error":
                raise _run_error(head[1])
            entered = False  # the stream's generator leaves the slot
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(srv, tenant, model, run, head, rid, chat, include_usage, t0)
            return EventSourceResponse(events, ping=15, send_timeout=60, shutdown_grace_period=srv.shutdown_grace_s)
        completion = await _collect(srv, request, run, model, t0)
        return JSONResponse(_whole(srv, model, completion, rid, chat))
    finally:
        if entered:
            with anyio.CancelScope(shield=True):
                await srv.admission.leave(tenant)


async def _collect(srv: _Server, request: Request, run: _Run, model: Model, t0: float) -> Completion:
    """A non-streamed generation's Completion; a client that leaves cancels it."""
    first = None
    while True:
        try:
            kind, value = await run.get(timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                with anyio.CancelScope(shield=True):
                    await run.cancel()
                raise APIError(499, "the client closed the connection", code="client_closed") from None
            continue
        except BaseException:  # cancelled (the server shuts down): the guest must not outlive us
            with anyio.CancelScope(shield=True):
                await run.cancel()
            raise
        if kind == "piece":
            first = first or time.perf_counter()
        elif kind == "error":
            raise _run_error(value) from None
        else:
            _account(srv, model, value, t0, first)
            return value


def _run_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    return from_realm(exc) if isinstance(exc, RealmError) else APIError(500, f"{type(exc).__name__}: {exc}")


def _account(srv: _Server, model: Model, c: Completion, t0: float, first: float | None) -> None:
    name = srv.model_id(model)
    m = srv.metrics
    m.prompt_tokens.labels(name).inc(c.usage.prompt_tokens)
    m.completion_tokens.labels(name).inc(c.usage.completion_tokens)
    if first is not None:
        m.ttft.labels(name).observe(first - t0)
    if c.usage.decoded_tokens and c.usage.decode_seconds > 0:
        m.tokens_per_second.labels(name).observe(c.usage.decode_tokens_per_second)


def _usage(c: Completion) -> dict[str, Any]:
    u = c.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def _raw_tokens(srv: _Server, model: Model, entries: list) -> dict[int, bytes]:
    """The bytes of every token the entries name, sampled or among the top alternatives."""
    ids = [e.token for e in entries] + [t for e in entries for t, _ in e.top]
    return dict(zip(ids, srv.token_bytes(model, ids)))


def _chat_logprobs(srv: _Server, model: Model, entries: list) -> dict[str, Any]:
    def item(token: int, lp: float, raw: bytes) -> dict[str, Any]:
        return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}

    raw = _raw_tokens(srv, model, entries)
    return {"content": [dict(item(e.token, e.logprob, raw[e.token]),
                             top_logprobs=[item(t, lp, raw[t]) for t, lp in e.top]) for e in entries]}


def _text_logprobs(srv: _Server, model: Model, entries: list, offset: int) -> dict[str, Any]:
    raw = _raw_tokens(srv, model, entries)
    tokens = [raw[e.token].decode("utf-8", "replace") for e in entries]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{raw[t].decode("utf-8", "replace"): lp for t, lp in e.top} for e in entries],
            "text_offset": offsets}


def _whole(srv: _Server, model: Model, c: Completion, rid: str, chat: bool) -> dict[str, Any]:
    finish = _FINISH.get(c.stop_reason, "stop")
    base = {"id": rid, "created": int(time.time()), "model": srv.model_id(model), "system_fingerprint": None}
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": c.text, "refusal": None},
                  "finish_reason": finish,
                  "logprobs": _chat_logprobs(srv, model, c.logprobs) if c.logprobs is not None else None}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(c)}
    choice = {"index": 0, "text": c.text, "finish_reason": finish,
              "logprobs": _text_logprobs(srv, model, c.logprobs, 0) if c.logprobs is not None else None}
    return {**base, "object": "text_completion", "choices": [choice], "usage": _usage(c)}


async def _stream(srv: _Server, tenant: str, model: Model, run: _Run, head: tuple, rid: str, chat: bool,
                  include_usage: bool, t0: float) -> AsyncIterator[dict[str, str]]:
    """Server-sent events: OpenAI's chunks, then `[DONE]`.  A client that goes away (the
    generator is cancelled or closed) stops the generation and frees its KV cache."""
    created, name = int(time.time()), srv.model_id(model)
    kind_name = "chat.completion.chunk" if chat else "text_completion"
    sent_logprobs, offset, first, finished = 0, 0, None, False

    def chunk(delta_text: str | None, finish: str | None, entries: list | None, role: bool = False) -> str:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if delta_text is not None:
                delta["content"] = delta_text
            choice = {"index": 0, "delta": delta, "finish_reason": finish,
                      "logprobs": _chat_logprobs(srv, model, entries) if entries else None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish,
                      "logprobs": _text_logprobs(srv, model, entries, offset) if entries else None}
        out = {"id": rid, "object": kind_name, "created": created, "model": name, "system_fingerprint": None,
               "choices": [choice]}
        if include_usage:
            out["usage"] = None
        return json.dumps(out)

    try:
        if chat:
            yield {"data": chunk("", None, None, role=True)}
        while True:
            kind, value = head if head is not None else await run.get()
            head = None
            if kind == "error":
                err = _run_error(value)
                yield {"data": json.dumps(err.body())}
                break
            live = run.logprobs
            entries = live[sent_logprobs:len(live)] if kind == "piece" else None
            if kind == "piece":
                first = first or time.perf_counter()
                sent_logprobs += len(entries)
                yield {"data": chunk(value, None, entries)}
                offset += len(value)
                continue
            c: Completion = value
            _account(srv, model, c, t0, first)
            rest = (c.logprobs or [])[sent_logprobs:]
            yield {"data": chunk(None if chat else "", _FINISH.get(c.stop_reason, "stop"), rest)}
            if include_usage:
                usage = {"id": rid, "object": kind_name, "created": created, "model": name,
                         "system_fingerprint": None, "choices": [], "usage": _usage(c)}
                yield {"data": json.dumps(usage)}
            finished = True
            break
        yield {"data": "[DONE]"}
    finally:
        # shielded: the response's task is being cancelled, and anyio would cancel these awaits too
        with anyio.CancelScope(shield=True):
            if not finished:
                await run.cancel()
            await srv.admission.leave(tenant)
