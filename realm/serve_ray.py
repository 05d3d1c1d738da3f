"""realm on Ray Serve (`pip install "realm[ray]"`, `realm serve --ray`): the app `realm serve`
runs, on replicas that each hold one `Realm`, requests routed by their OpenAI `model`.

    clients --HTTP--> Serve's proxy: ModelHeader copies the body's `model` into the header
                      Serve routes by (proxy_middlewares, installed through PROXY_CALLBACK_ENV)
                        |  or, without it: a Router deployment (no CPU) reads the body and
                        |  calls handle.options(multiplexed_model_id=model) -- one more Ray call
                        v
                  RealmReplica x N (each num_cpus CPUs, a Realm with as many threads):
                  create_app(realm) run in process; models loaded on demand, LRU past
                  max_models_per_replica (Serve's model multiplexing)

Serve sends a request to a replica that already has its model (or is loading it), else to
the one with the fewest models, which loads it.  Every answer carries `x-realm-replica:
<replica actor name>`.  The limits of `realm serve` (ServerLimits) hold per replica.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
    raise ImportError('realm.serve_ray needs the ray extra: pip install "realm[ray]"')

import asyncio
import collections
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from .batching import BatchSettings
from .errors import InvalidArgumentError, RealmError
from .models import MODELS
from .runtime import Model, Realm
from .server.admission import ServerLimits
from .server.app import MAX_BODY_BYTES, check_api_keys, create_app
from .server.errors import APIError, from_realm, request_timeout
from .server.protocol import DEFAULT_READ_TIMEOUT_S, check_read_timeout, headers_deadline_protocol
from .server.run import DEFAULT_SHUTDOWN_TIMEOUT_S, build_realm, check_port

log = logging.getLogger("realm.serve_ray")

APP_NAME = "realm"
#: The response header naming the replica (its Ray actor, in namespace "serve") that answered.
REPLICA_HEADER = b"x-realm-replica"
_ROUTED = ("/v1/completions", "/v1/chat/completions")
_API = "/v1/"  # the paths whose bodies the proxies read (realm's OpenAI API)


def model_id(spec: str) -> str:
    """The name a model is served under (its file's stem, as `realm serve` names it), from a
    path or a name realm pulls -- without pulling it."""
    if spec in MODELS and not Path(spec).exists():
        return Path(MODELS[spec].file_name).stem
    return Path(spec).stem


@dataclass(frozen=True)
class Catalog:
    """The models a deployment serves: served name -> what a replica loads (a path or a name
    realm pulls); the first is the default.  A request may name a model by its served name,
    its file name or what it was given as."""

    specs: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, models: Sequence[str]) -> "Catalog":
        if not models:
            raise InvalidArgumentError("a deployment needs at least one model")
        specs, aliases = {}, {}
        for spec in models:
            name = model_id(str(spec))
            specs.setdefault(name, str(spec))
            for alias in (name, name + ".gguf", str(spec)):
                aliases.setdefault(alias, name)
        return cls(specs, aliases)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def route(self, body: bytes) -> str:
        """The served name a request body's `model` names (the default when it names none);
        "" for a body that is not a JSON object or names an unknown model: any replica
        answers it, with the app's own error."""
        name = _body_model(body)
        if name is None:
            return self.names[0]
        return self.aliases.get(name, "") if isinstance(name, str) else ""


def _body_model(body: bytes) -> Any:
    """A JSON object's "model" (None without one); "" for a body that is not a JSON object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), an int of over 4300 digits, deep nesting
        return ""
    return data.get("model") if isinstance(data, dict) else ""


# -- replicas ---------------------------------------------------------------------------------

class _Models:
    """A replica's models: loaded into its Realm on demand; one Serve evicts is unloaded once
    the requests using it end (one routed but not yet generating must still find it)."""

    def __init__(self, realm: Realm, catalog: Catalog):
        self.realm, self.catalog = realm, catalog
        self.users: collections.Counter[str] = collections.Counter()
        self.evicted: set[str] = set()
        self._lock = threading.Lock()  # the counts: eviction runs on Serve's executor, the rest on the loop
        self._io = threading.Lock()  # loads and unloads one at a time, so none undoes a later one

    def load(self, name: str) -> Model:
        with self._io:
            with self._lock:
                self.evicted.discard(name)
            return self.realm.load_model(self.catalog.specs[name])

    def enter(self, name: str) -> None:
        with self._lock:
            self.users[name] += 1

    def leave(self, name: str) -> bool:
        """The request ended; True when the model is now to be unloaded (call unload, off the
        event loop: it may wait for a load)."""
        with self._lock:
            self.users[name] -= 1
            if self.users[name] > 0:
                return False
            del self.users[name]
            return name in self.evicted

    def evict(self, name: str) -> None:
        with self._lock:
            self.evicted.add(name)
            if self.users[name] > 0:
                return
        self.unload(name)

    def unload(self, name: str) -> None:
        with self._io:
            with self._lock:
                if name not in self.evicted or self.users[name] > 0:
                    return  # loaded again, or in use again, meanwhile
                self.evicted.discard(name)
            try:
                self.realm.unload_model(self.catalog.specs[name])
                log.info("unloaded %s", name)
            except RealmError:  # already gone (the Realm closed)
                pass


class _Loaded:
    """What Serve's multiplexing caches per model; Serve calls __del__ when it evicts it (and
    Python again when it collects it: only the first call counts)."""

    def __init__(self, models: _Models, name: str):
        self.models, self.name, self._done = models, name, False

    def __del__(self) -> None:
        if not self._done:
            self._done = True
            self.models.evict(self.name)


def _replica_threads() -> int:
    """The Realm's threads: the CPUs Ray reserved for this replica (at least one)."""
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)))


class RealmReplica:
    """One Realm and the app `realm serve` runs over it: Serve's HTTP ingress when the proxies
    route by model (__serve_build_asgi_app__), else called by the Router with whole HTTP
    requests (http), streaming back the app's ASGI messages."""

    def __init__(self, catalog: Catalog, *, max_models: int, limits: ServerLimits, api_keys: tuple[str, ...],
                 max_body_bytes: int, batch: BatchSettings | None = None,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S):
        self.replica = serve.get_replica_context().replica_id.to_full_id_str().encode()
        self.max_body_bytes, self.read_timeout_s = max_body_bytes, read_timeout_s
        self.realm = build_realm((), threads=_replica_threads(), limits=limits, batch=batch)
        self.models = _Models(self.realm, catalog)
        self.realm_app = create_app(self.realm, limits=limits, api_keys=api_keys, max_body_bytes=max_body_bytes,
                                    catalog=catalog.names)

        async def load(name: str) -> _Loaded:
            await asyncio.get_running_loop().run_in_executor(None, self.models.load, name)
            return _Loaded(self.models, name)

        # set up here: the LRU's size is a deployment option, not a constant
        self.model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        self._preloading = self._preload(catalog.names)  # held: the loop keeps only weak task references

    def _preload(self, names: Sequence[str]) -> asyncio.Task | None:
        """Start loading the model of this replica's rank (rank mod the models): Serve sends a
        model's requests to a replica that holds it, so without this the first requests of a
        cold deployment all land on the replica that took the first model, which then holds
        them all and draws every request while the others idle."""
        rank = getattr(serve.get_replica_context(), "rank", None)
        rank = getattr(rank, "rank", rank)
        if not names or not isinstance(rank, int):
            return None
        name = names[rank % len(names)]

        async def load() -> None:
            try:
                await self.model(name)
            except Exception as exc:  # a missing file, a failed pull: a request for it says so
                log.warning("replica %s did not preload %s: %s", self.replica.decode(), name, exc)

        try:
            return asyncio.get_running_loop().create_task(load())
        except RuntimeError:  # no loop runs the constructor: the first request loads
            return None

    async def _hold(self, name: str) -> None:
        """Load the model (Serve's LRU may unload another) and hold it for one request."""
        await self.model(name)
        self.models.enter(name)  # at once: nothing may evict it between the load and here

    async def _release(self, name: str) -> None:
        if self.models.leave(name):  # Serve evicted it meanwhile: unload it now
            await asyncio.get_running_loop().run_in_executor(None, self.models.unload, name)

    async def http(self, request: dict) -> AsyncIterator[dict]:
        """The app's answer to one request (see Router), as ASGI messages, this replica's name
        in the headers; the request's model (Serve's multiplexed model id) loaded first."""
        name = serve.get_multiplexed_model_id()
        app: Callable = self.realm_app
        if name:
            try:
                await self._hold(name)
            except RealmError as exc:  # a missing file, a failed pull
                name, app = "", from_realm(exc).response()
        try:
            async for message in _messages(app, request, self.replica):
                yield message
        finally:
            if name:
                await self._release(name)

    def __serve_build_asgi_app__(self) -> Callable:
        """The replica as Serve's HTTP ingress, when Serve's proxies route by the model themselves
        (proxy_middlewares): one Ray call per request instead of two."""

        async def app(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] == "lifespan":
                return await _lifespan(receive, send)
            if scope["type"] != "http":
                return
            body = scope.get(BODY_SCOPE_KEY)
            if isinstance(body, bytes):  # the proxy read it: receive() brings it again, then the end
                receive = _past_body(receive)
            else:
                try:
                    body = await _read_body(receive, self.max_body_bytes, self.read_timeout_s)
                except _SlowBody:
                    return await request_timeout().response()(scope, receive, send)
            name = self.models.catalog.route(body) if scope.get("path") in _ROUTED else ""
            first = True

            async def replay() -> dict:
                nonlocal first
                if first:
                    first = False
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            async def sending(message: dict) -> None:
                if message["type"] == "http.response.start":
                    message = dict(message, headers=[*message.get("headers", ()), (REPLICA_HEADER, self.replica)])
                await send(message)

            target: Callable = self.realm_app
            if name:
                try:
                    await self._hold(name)
                except RealmError as exc:
                    name, target = "", from_realm(exc).response()
            try:
                await target(scope, replay, sending)
            finally:
                if name:
                    await self._release(name)

        return app

    def __del__(self) -> None:
        realm = getattr(self, "realm", None)
        if realm is not None:
            realm.close()


async def _messages(app: Callable, request: dict, replica: bytes) -> AsyncIterator[dict]:
    """Run an ASGI app on one buffered request; its messages as it sends them (body chunks that
    queued up while Ray carried the last one go as one: fewer, larger chunks rather than falling
    further behind).  When the caller stops listening (the client left), the app sees
    http.disconnect and cancels its work."""
    scope = dict(request["scope"], type="http", asgi={"version": "3.0"})
    sent: collections.deque = collections.deque()
    ready, gone = asyncio.Event(), asyncio.Event()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request["body"], "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = dict(message, headers=[*message.get("headers", ()), (REPLICA_HEADER, replica)])
        sent.append(message)
        ready.set()

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: ready.set())
    try:
        while True:
            while not sent and not task.done():
                ready.clear()
                await ready.wait()
            if not sent:
                break
            message = sent.popleft()
            while (message["type"] == "http.response.body" and message.get("more_body") and sent
                   and sent[0]["type"] == "http.response.body"):
                nxt = sent.popleft()
                message = dict(nxt, body=message.get("body", b"") + nxt.get("body", b""))
            yield message
        task.result()  # the app's own failure, if any
    finally:
        gone.set()
        if not task.done():
            try:
                await asyncio.wait({task}, timeout=10)
            finally:
                task.cancel()


# -- the router ----------------------------------------------------------------------------

#: What a handle raises when its replica died or none can take the request now.
_GONE = (RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)
_SCOPE_KEYS = ("http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path", "headers",
               "client", "server")


class Router:
    """Serve's HTTP ingress: reads a request's body, picks the replica by its `model` (Serve's
    multiplexing) and relays the replica's answer.  A replica that dies before answering is a
    503 with Retry-After, which OpenAI's clients retry."""

    def __init__(self, replicas: Any, catalog: Catalog, *, max_body_bytes: int,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S):
        self.replicas, self.catalog, self.max_body_bytes = replicas, catalog, max_body_bytes
        self.read_timeout_s = read_timeout_s

    def __serve_build_asgi_app__(self) -> Callable:
        async def app(scope: dict, receive: Callable, send: Callable) -> None:  # a function: uvicorn takes a
            await self._asgi(scope, receive, send)                            # bound method for ASGI 2
        return app

    async def _asgi(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return
        try:
            body = await _read_body(receive, self.max_body_bytes, self.read_timeout_s)
        except _SlowBody:
            return await request_timeout().response()(scope, receive, send)
        name = self.catalog.route(body) if scope.get("path") in _ROUTED else ""
        request = {"scope": {k: scope[k] for k in _SCOPE_KEYS if k in scope}, "body": body}
        stream = self.replicas.options(multiplexed_model_id=name, stream=True).http.remote(request)
        started = finished = False
        try:
            async for message in stream:
                started = started or message["type"] == "http.response.start"
                await send(message)
            finished = True
        except _GONE as exc:
            finished = True
            if started:
                raise  # the answer was cut short: the client sees a broken stream
            await _unavailable(exc).response()(scope, receive, send)
        finally:
            if not finished:  # cancelled (the client left, and Serve cancelled this call but not
                stream.cancel()  # the replica's, whose generation would run to its end), or failed


def _past_body(receive: Callable) -> Callable:
    """receive() without the body's messages: what a replica sees of a request after the
    body the proxy put in its scope (the client's disconnect, for one)."""
    done = False

    async def rest() -> dict:
        nonlocal done
        while True:
            message = await receive()
            if done or message["type"] != "http.request":
                return message
            done = not message.get("more_body", False)

    return rest


async def _lifespan(receive: Callable, send: Callable) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


class _SlowBody(Exception):
    """A request's body did not arrive within the read timeout."""


async def _receive_body(receive: Callable, limit: int, timeout_s: float) -> list[dict]:
    """A request's messages to the end of its body, or until it passes limit bytes (the app
    answers 413 for those), or a message of another type (the client left); _SlowBody when
    they take more than timeout_s seconds.  Serve's proxy (uvicorn) waits for a client as long
    as it takes: a body that stalls halfway would hold its request here for good."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    messages: list[dict] = []
    size, more = 0, True
    while more and size <= limit:
        try:
            message = await asyncio.wait_for(receive(), max(end - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise _SlowBody from None
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    return messages


async def _read_body(receive: Callable, limit: int, timeout_s: float) -> bytes:
    """A request's body (see _receive_body), up to one byte past the limit."""
    messages = await _receive_body(receive, limit, timeout_s)
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")[: limit + 1]


# -- routing in Serve's proxies ----------------------------------------------------------------

#: Serve's proxies call the function this environment variable names when they start; set to
#: PROXY_CALLBACK (on every node: `ray start`, or before `ray.init` of a local instance), they
#: route by the body's model themselves and the replicas are Serve's ingress: one Ray call per
#: request instead of two (see application's proxy_routing).
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "realm.serve_ray:proxy_middlewares"
_MULTIPLEX_HEADER = b"serve_multiplexed_model_id"
#: The scope key under which ModelHeader hands a request's whole body (of at most
#: SCOPE_BODY_MAX_BYTES, well inside gRPC's default 4 MiB message) to the replica, inside the
#: request Serve sends it.  Read through receive(), the body comes by a second Ray call, from
#: the replica back to the proxy, which Serve makes after looking the proxy's actor up in
#: Ray's GCS: GET /v1/models through the proxy (one replica) took 4.4-8.3 ms that way and
#: 2.7-4.7 with the body in the scope; a trivial app that never reads its body, 2.2-3.2.
BODY_SCOPE_KEY = "realm.body"
SCOPE_BODY_MAX_BYTES = 1 << 20


#: Serve's proxies and handles reach replicas over gRPC instead of Ray actor calls (Ray 2.60, on
#: the 2-core machine of the README: GET /v1/models through the proxy took 4.5-5.2 ms instead
#: of 5.9-7.7).
GRPC_ENV = "RAY_SERVE_USE_GRPC_BY_DEFAULT"
#: ... whose replicas then take messages of at most this many bytes (4 MiB unless set): a
#: Router hands a request's whole body on in one.
GRPC_MESSAGE_ENV = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"


#: Settings of Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED that realm can use (that switch also turns on
#: direct ingress, whose replicas take requests on ports of their own, unrouted by model):
#: Serve's logs only to its files, access logs written 1000 lines at a time, and the handles'
#: routers on their callers' event loops.  Measured with benchmarks/scale_out.py's load rounds
#: (16 streaming clients) on one replica of 2 CPUs, 8 alternating pairs: 283 -> 300 tok/s
#: (medians), 6 pairs of 8 ahead.
THROUGHPUT_ENV = {"RAY_SERVE_LOG_TO_STDERR": "0", "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
                  "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def local_environment(max_body_bytes: int = MAX_BODY_BYTES) -> dict[str, str]:
    """The environment `realm serve --ray` gives a local Ray instance (and what each node of a
    cluster wants, set before `ray start`): routing in the proxies, gRPC to the replicas with
    room for a request's body, and THROUGHPUT_ENV."""
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK, GRPC_ENV: "1",
            GRPC_MESSAGE_ENV: str(max(4 << 20, max_body_bytes + (1 << 20))), **THROUGHPUT_ENV}


#: Seconds a request's headers may take to arrive in Serve's proxies, from its first byte, and
#: then the body of a request to realm's API (/v1/...), from its headers (a proxy's
#: environment, as PROXY_CALLBACK_ENV; default DEFAULT_READ_TIMEOUT_S).
READ_TIMEOUT_ENV = "REALM_READ_TIMEOUT_S"

#: The HTTP protocol of a proxy that called proxy_middlewares: uvicorn's httptools one with a
#: deadline for the headers (uvicorn imports a protocol by name, so it is kept here).
PROXY_PROTOCOL: type | None = None


def _env_read_timeout() -> float:
    text = os.environ.get(READ_TIMEOUT_ENV)
    if text is None:
        return DEFAULT_READ_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgumentError(f"{READ_TIMEOUT_ENV} must be a number of seconds, not {text!r}") from None
    return check_read_timeout(value)


def proxy_middlewares() -> list:
    """Serve's HTTP proxy callback, called as a proxy starts and before its HTTP server does: the
    middleware that routes completions by their model (and bounds the arrival of the bodies of
    requests to realm's API), and
    for the proxy's uvicorn its own httptools protocol with a deadline for the headers (as "auto"
    it waits for headers for good: a client sending a byte a minute holds a connection open) --
    each within REALM_READ_TIMEOUT_S, else 408 as from `realm serve`."""
    from starlette.middleware import Middleware
    from uvicorn.config import HTTP_PROTOCOLS

    global PROXY_PROTOCOL
    read_timeout_s = _env_read_timeout()
    PROXY_PROTOCOL = headers_deadline_protocol(read_timeout_s)
    HTTP_PROTOCOLS["auto"] = f"{__name__}:PROXY_PROTOCOL"
    return [Middleware(ModelHeader, read_timeout_s=read_timeout_s)]


class ModelHeader:
    """ASGI middleware in Serve's proxy: a completion request gets the header Serve routes by
    (serve_multiplexed_model_id) set to its body's `model`; the body is handed on as it came
    and, for the paths of realm's API (/v1/...) up to SCOPE_BODY_MAX_BYTES, also in the scope
    (BODY_SCOPE_KEY), which Serve sends the replica with the request.  A request naming a
    model otherwise than by its served name (GET /v1/models) still works, on whichever replica
    Serve picks.  A request the proxy drops without an answer (a replica died under it;
    uvicorn would send a bare 500) gets a 503 in OpenAI's shape with Retry-After, as from the
    Router.  The body of a request to realm's API must arrive within read_timeout_s of its
    headers, else the answer is 408 (`request_timeout`, as from `realm serve`)."""

    def __init__(self, app: Callable, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S):
        self.app, self.read_timeout_s = app, check_read_timeout(read_timeout_s)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: collections.deque = collections.deque()
        if scope.get("path", "").startswith(_API):
            try:
                held.extend(await _receive_body(receive, MAX_BODY_BYTES, self.read_timeout_s))
            except _SlowBody:
                return await request_timeout().response()(scope, receive, send)
        if held and not held[-1].get("more_body", False) and all(m["type"] == "http.request" for m in held):
            body = b"".join(m.get("body", b"") for m in held)
            extra: dict[str, Any] = {BODY_SCOPE_KEY: body} if len(body) <= SCOPE_BODY_MAX_BYTES else {}
            name = _body_model(body) if scope.get("method") == "POST" and scope.get("path") in _ROUTED else None
            # no header for a name no model has -- control characters, lone surrogates (which
            # would not encode), isprintable() is False for both: the replica Serve picks answers 404
            if isinstance(name, str) and 0 < len(name) <= 256 and name.isprintable():
                extra["headers"] = [*scope.get("headers", ()), (_MULTIPLEX_HEADER, name.encode())]
            scope = dict(scope, **extra)
        started = False

        async def replay() -> dict:
            return held.popleft() if held else await receive()

        async def sending(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, sending)
        except Exception:
            if started:
                raise
        if not started:  # the proxy gave up without an answer (uvicorn would send a bare 500)
            await _unavailable(None).response()(scope, replay, send)


def _unavailable(exc: BaseException | None) -> APIError:
    if exc is not None:
        log.warning("replica unavailable: %s: %s", type(exc).__name__, exc)
    return APIError(503, "the replica serving this request went away: try again", code="replica_unavailable",
                    retry_after=1)


# -- deploying ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RayOptions:
    """replicas: a count, or "auto" (Serve's autoscaling between min_replicas and max_replicas);
    cpus_per_replica: the CPUs Ray reserves per replica, and its Realm's threads;
    max_models_per_replica: models one replica keeps loaded (least recently used unloaded past it)."""

    replicas: int | str = 1
    min_replicas: int = 1
    max_replicas: int = 4
    cpus_per_replica: float = 1.0
    max_models_per_replica: int = 2

    def __post_init__(self) -> None:
        if self.replicas != "auto" and (isinstance(self.replicas, bool) or not isinstance(self.replicas, int)
                                        or self.replicas < 1):
            raise InvalidArgumentError(f"replicas must be a count >= 1 or 'auto', not {self.replicas!r}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise InvalidArgumentError("need 1 <= min_replicas <= max_replicas")
        if not self.cpus_per_replica > 0 or self.max_models_per_replica < 1:
            raise InvalidArgumentError("cpus_per_replica must be > 0 and max_models_per_replica >= 1")


def application(models: Sequence[str], *, options: RayOptions | None = None, limits: ServerLimits | None = None,
                api_keys: Sequence[str] = (), max_body_bytes: int = MAX_BODY_BYTES,
                shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S, proxy_routing: bool = False,
                batch: BatchSettings | None = None, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> Any:
    """The Serve application (for `serve.run(app, route_prefix="/")`): a Router in front of the
    RealmReplica deployment; with proxy_routing (Serve's proxies started with PROXY_CALLBACK_ENV
    = PROXY_CALLBACK), the replicas alone, Serve's ingress.  batch: each replica's batching
    settings (default BatchSettings()).  read_timeout_s: the seconds a request's body may take
    to reach the Router or a replica (the proxies' own: READ_TIMEOUT_ENV)."""
    read_timeout_s = check_read_timeout(read_timeout_s)
    options = options or RayOptions()
    limits = limits or ServerLimits()
    catalog = Catalog.of(models)
    # room for the app's own queue: its 503 answers a full replica, not a wait in Serve's queue
    ongoing = limits.max_concurrent + limits.max_queue + 8
    scaling: dict[str, Any] = {"num_replicas": options.replicas}
    if options.replicas == "auto":
        scaling["autoscaling_config"] = {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                                         "target_ongoing_requests": max(1, limits.max_concurrent // 2)}
    cls = serve.ingress()(RealmReplica) if proxy_routing else RealmReplica
    replica = serve.deployment(cls, name="RealmReplica").options(
        ray_actor_options={"num_cpus": options.cpus_per_replica}, max_ongoing_requests=ongoing,
        graceful_shutdown_timeout_s=shutdown_timeout_s, **scaling)
    replicas = replica.bind(catalog, max_models=options.max_models_per_replica, limits=limits,
                            api_keys=check_api_keys(api_keys), max_body_bytes=max_body_bytes, batch=batch,
                            read_timeout_s=read_timeout_s)
    if proxy_routing:
        return replicas
    router = serve.deployment(serve.ingress()(Router), name="Router").options(
        num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4 * ongoing)
    return router.bind(replicas, catalog, max_body_bytes=max_body_bytes, read_timeout_s=read_timeout_s)


def serve_on_ray(models: Sequence[str], *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                 options: RayOptions | None = None, limits: ServerLimits | None = None, api_keys: Sequence[str] = (),
                 shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S, max_body_bytes: int = MAX_BODY_BYTES,
                 proxy_routing: bool = False, ready: Callable[[], None] | None = None,
                 batch: BatchSettings | None = None, read_timeout_s: float | None = None) -> None:
    """`realm serve --ray`: join the Ray cluster at `address` ("auto", "ray://head:10001"), or
    start a local one without it, deploy, and serve until SIGINT/SIGTERM; then delete the
    application (and, on a local cluster, stop Serve and Ray).  A local instance routes in
    Serve's proxies (see PROXY_CALLBACK_ENV) unless that variable is set to something else; on
    a cluster, proxy_routing says its nodes were started with it.  read_timeout_s (default:
    READ_TIMEOUT_ENV's, else DEFAULT_READ_TIMEOUT_S) bounds the arrival of a request's body
    where realm reads it: the Router, the replicas and a local instance's proxies; the proxies
    of a cluster read theirs from READ_TIMEOUT_ENV on their nodes, so read_timeout_s does not
    go with an address and proxy_routing."""
    api_keys = check_api_keys(api_keys)
    if read_timeout_s is None:
        read_timeout_s = _env_read_timeout()
    else:
        read_timeout_s = check_read_timeout(read_timeout_s)
        if address is not None and proxy_routing:
            raise InvalidArgumentError(f"the proxies of a Ray cluster take their read timeout from {READ_TIMEOUT_ENV} "
                                       "on each node (set before `ray start`), not from realm")
    if check_port(port) == 0:  # checked before Ray starts: Serve checks no range
        raise InvalidArgumentError("give --ray a port: Serve's proxy on each node listens on it (with port 0 "
                                   "each would pick one of its own, which nothing reports)")
    stop = threading.Event()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    local = address is None
    if local:  # a cluster of this machine alone, without a dashboard
        for name, value in local_environment(max_body_bytes).items():
            os.environ.setdefault(name, value)  # inherited by Serve's proxy and replicas
        os.environ[READ_TIMEOUT_ENV] = repr(read_timeout_s)  # for the proxies
        proxy_routing = os.environ[PROXY_CALLBACK_ENV] == PROXY_CALLBACK
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    # after ray.init: its core worker installs a handler that aborts the driver on SIGTERM
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(models, options=options, limits=limits, api_keys=api_keys,
                              max_body_bytes=max_body_bytes, shutdown_timeout_s=shutdown_timeout_s,
                              proxy_routing=proxy_routing, batch=batch,
                              read_timeout_s=read_timeout_s),
                  name=APP_NAME, route_prefix="/", blocking=False)
        log.info("realm on Ray Serve: http://%s:%d (%s; routed by %s)", host, port,
                 ", ".join(Catalog.of(models).names), "Serve's proxies" if proxy_routing else "a router")
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            pass
        log.info("stopping")
    finally:
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
