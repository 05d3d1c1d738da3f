"""realm on Ray Serve (realm.serve_ray): its pieces, `realm serve --ray` started and stopped as a
process, and tests/ray_deployment.py (a deployment on a local Ray instance driven with the official
`openai` client) run in a pytest process of their own.  No test here starts Ray in this process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require

openai = require("openai")
httpx = require("httpx")
require("fastapi")
ray = require("ray")

import realm  # noqa: E402

SMOL = "SmolLM2-135M-Instruct.Q4_1"
GEMMA = "gemma-3-270m-q4_k_m"
KEY = "ray-key"
READY_TIMEOUT_S = 120


def test_core_and_server_never_import_ray():
    code = "import sys, realm, realm.server; sys.exit('ray' in sys.modules)"
    root = str(Path(realm.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


def test_catalog_routes_by_the_body_model(smollm2_path, gemma3_path):
    from realm.serve_ray import Catalog

    c = Catalog.of([str(smollm2_path), str(gemma3_path)])
    assert c.names == (SMOL, GEMMA)
    assert c.route(b'{"model": "%s"}' % GEMMA.encode()) == GEMMA
    assert c.route(b'{"model": "%s.gguf", "prompt": "x"}' % SMOL.encode()) == SMOL
    assert c.route(b'{"prompt": "x"}') == SMOL  # the default, as `realm serve`
    for body in (b"not json", b"[1]", b'{"model": 3}', b'{"model": "nope"}', b"\xff"):
        assert c.route(body) == ""  # any replica answers with the app's own 400/404


@pytest.mark.parametrize("body, header", [
    (b'{"model": "SmolLM2", "prompt": "x"}', b"SmolLM2"),
    (b'{"model": "\\ud800", "prompt": "x"}', None),  # a lone surrogate: no UTF-8 to route by
    (b'{"model": "a\\r\\nb", "prompt": "x"}', None),
    (b'{"prompt": "x"}', None),
    (b"not json", None),
    (b"[" * 100000 + b"]" * 100000, None),  # past Python's JSON recursion
])
def test_proxy_middleware_routes_by_a_model_name_only(body, header):
    """Serve's proxy sets the header it routes by from the body's model where that is a name;
    otherwise the request goes on without it (a replica answers it), and the body goes on whole."""
    import asyncio

    from realm.serve_ray import ModelHeader

    seen = {}

    async def app(scope, receive, send):
        seen["headers"] = dict(scope["headers"])
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [(b"host", b"x")]}
    asyncio.run(ModelHeader(app)(scope, receive, send))
    assert seen["headers"].get(b"serve_multiplexed_model_id") == header and seen["body"] == body


@pytest.mark.parametrize("method, path, body, in_scope", [
    ("POST", "/v1/completions", b'{"model": "m", "prompt": "x"}', True),
    ("GET", "/v1/models", b"", True),
    ("POST", "/v1/completions", b'{"prompt": "' + b"x" * (1 << 20) + b'"}', False),  # past SCOPE_BODY_MAX_BYTES
    ("POST", "/other/app", b'{"model": "m"}', False),  # not realm's API: not read in the proxy
])
def test_proxy_middleware_hands_the_body_to_the_replica_in_the_scope(method, path, body, in_scope):
    """The body the proxy read rides in the scope Serve sends the replica (a body read through
    receive() there costs a second Ray call back to the proxy); large ones do not, and every
    body still goes on through receive() as it came."""
    import asyncio

    from realm.serve_ray import BODY_SCOPE_KEY, ModelHeader

    seen = {}
    chunks = [body[:7], body[7:]]

    async def app(scope, receive, send):
        seen["scope"] = scope.get(BODY_SCOPE_KEY)
        got = b""
        while True:
            message = await receive()
            got += message["body"]
            if not message["more_body"]:
                break
        seen["body"] = got
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        pass

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"host", b"x")]}
    asyncio.run(ModelHeader(app)(scope, receive, send))
    assert seen["body"] == body and seen["scope"] == (body if in_scope else None)


def test_a_replica_takes_the_body_from_the_scope_and_then_the_disconnect():
    """A replica's ingress with the body in its scope runs the app at once (no receive() for
    the body), and the app's later receive() gets the client's disconnect, not the copy of the
    body that Serve's receive() brings from the proxy as well."""
    import asyncio

    from realm.serve_ray import BODY_SCOPE_KEY, RealmReplica

    body, calls, seen = b'{"stream": true}', [], []
    from_proxy = [{"type": "http.request", "body": body[:5], "more_body": True},
                  {"type": "http.request", "body": body[5:], "more_body": False},
                  {"type": "http.disconnect"}]

    async def receive():
        calls.append(True)
        return from_proxy.pop(0)

    async def inner(scope, receive, send):
        seen.append((await receive(), len(calls)))
        seen.append(((await receive())["type"], len(calls)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        pass

    replica = RealmReplica.__new__(RealmReplica)  # its ingress alone: no Serve, no Realm
    replica.max_body_bytes, replica.read_timeout_s, replica.realm_app, replica.replica = 1 << 20, 5.0, inner, b"r"
    scope = {"type": "http", "method": "POST", "path": "/v1/models", "headers": [], BODY_SCOPE_KEY: body}
    asyncio.run(asyncio.wait_for(RealmReplica.__serve_build_asgi_app__(replica)(scope, receive, send), 30))
    assert seen[0] == ({"type": "http.request", "body": body, "more_body": False}, 0)
    assert seen[1] == ("http.disconnect", 3)


def _slow_body_answer(app_of) -> tuple[dict, bool, float]:
    """Drive an ASGI app (made by app_of(inner app)) with a completion whose body stops halfway:
    (its answer's start and body, whether the inner app ran, the seconds it took)."""
    import asyncio
    import json

    ran, sent = [], []

    async def inner(scope, receive, send):
        ran.append(True)

    async def receive():
        if not sent:
            sent.append(None)
            return {"type": "http.request", "body": b'{"model": ', "more_body": True}
        await asyncio.sleep(3600)  # the client stalls

    answer: dict = {}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] = answer.get("body", b"") + message.get("body", b"")

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [(b"host", b"x")]}
    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(app_of(inner)(scope, receive, send), 30))
    answer["body"] = json.loads(answer["body"])
    return answer, bool(ran), time.monotonic() - t0


@pytest.mark.parametrize("where", ["proxy", "router", "replica"])
def test_a_body_that_stalls_gets_408_where_realm_reads_it(where):
    """Serve's proxy (uvicorn) waits for a client's body as long as it takes; where realm reads a
    request's body -- the proxy's middleware, the Router, a replica's ingress -- the body must
    arrive within the read timeout, else the answer is `realm serve`'s 408 and nothing runs."""
    from realm.serve_ray import Catalog, ModelHeader, RealmReplica, Router

    def app_of(inner):
        if where == "proxy":
            return ModelHeader(inner, read_timeout_s=0.5)
        if where == "router":
            return Router.__serve_build_asgi_app__(Router(None, Catalog.of(["a.gguf"]), max_body_bytes=1 << 20,
                                                          read_timeout_s=0.5))
        replica = RealmReplica.__new__(RealmReplica)  # its ingress alone: no Serve, no Realm
        replica.max_body_bytes, replica.read_timeout_s, replica.realm_app = 1 << 20, 0.5, inner
        return RealmReplica.__serve_build_asgi_app__(replica)

    answer, ran, seconds = _slow_body_answer(app_of)
    assert answer["status"] == 408 and answer["body"]["error"]["code"] == "request_timeout", answer
    assert not ran and 0.5 <= seconds < 10


def test_the_proxies_read_timeout_comes_from_their_environment(monkeypatch):
    import realm.serve_ray
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from realm.serve_ray import READ_TIMEOUT_ENV, proxy_middlewares

    # the callback sets the (proxy) process's uvicorn protocol: this process gets its own back
    monkeypatch.setitem(HTTP_PROTOCOLS, "auto", HTTP_PROTOCOLS["auto"])
    monkeypatch.setattr(realm.serve_ray, "PROXY_PROTOCOL", None)
    monkeypatch.setenv(READ_TIMEOUT_ENV, "2.5")
    assert proxy_middlewares()[0].kwargs == {"read_timeout_s": 2.5}
    assert import_from_string(HTTP_PROTOCOLS["auto"]).read_timeout_s == 2.5  # headers too, as uvicorn loads it
    monkeypatch.delenv(READ_TIMEOUT_ENV)
    assert proxy_middlewares()[0].kwargs == {"read_timeout_s": 60.0}
    assert import_from_string(HTTP_PROTOCOLS["auto"]).read_timeout_s == 60.0
    for bad in ("soon", "0", "-1", "nan", "inf"):
        monkeypatch.setenv(READ_TIMEOUT_ENV, bad)
        with pytest.raises(realm.InvalidArgumentError, match="REALM_READ_TIMEOUT_S|read_timeout_s"):
            proxy_middlewares()


def test_a_bad_read_timeout_on_ray_is_refused_before_ray_starts(capsys):
    from realm.cli import main

    assert main(["serve", "--ray", "--read-timeout", "0"]) == 1
    assert "read_timeout_s must be a positive number" in capsys.readouterr().err
    assert main(["serve", "--ray", "--address", "auto", "--proxy-routing", "--read-timeout", "5"]) == 1
    assert "REALM_READ_TIMEOUT_S on each node" in capsys.readouterr().err


def test_evicted_model_unloads_when_its_last_request_ends(smollm2_path, gemma3_path):
    from realm.serve_ray import Catalog, _Models

    with realm.Realm(threads=1) as r:
        models = _Models(r, Catalog.of([str(smollm2_path), str(gemma3_path)]))
        models.load(SMOL)
        models.load(GEMMA)
        models.enter(SMOL)
        models.evict(SMOL)  # in use: stays until the request leaves
        models.evict(GEMMA)
        assert [m.path.stem for m in r.models] == [SMOL]
        assert models.leave(SMOL)  # the last request: now unload it
        models.unload(SMOL)
        assert r.models == []
        models.load(GEMMA)
        models.enter(GEMMA)
        models.evict(GEMMA)
        models.load(GEMMA)  # loaded again while its last request runs: no longer evicted
        assert not models.leave(GEMMA)
        models.unload(GEMMA)  # a stale unload does nothing
        assert [m.path.stem for m in r.models] == [GEMMA]
        models.evict(GEMMA)
        assert r.models == []
        models.load(SMOL)  # loaded again after an eviction
        assert [m.path.stem for m in r.models] == [SMOL]


@pytest.mark.parametrize("port, error", [(0, realm.InvalidArgumentError), (65536, realm.InvalidArgumentError),
                                         ("8000", realm.ArgumentTypeError)])
def test_serve_on_ray_refuses_a_port_before_ray_starts(port, error):
    """Serve's proxies take no port 0 (each would pick its own) nor a number past 65535 (their
    uvicorn would listen on it modulo 65536)."""
    from realm.serve_ray import serve_on_ray

    with pytest.raises(error, match="port"):
        serve_on_ray(["smollm2"], port=port)
    assert not ray.is_initialized()


def test_replicas_autoscale_and_take_their_threads_from_their_cpus(smollm2_path):
    from realm.errors import InvalidArgumentError
    from realm.serve_ray import RayOptions, application

    app = application([str(smollm2_path)], options=RayOptions(replicas="auto", max_replicas=3, cpus_per_replica=2),
                      proxy_routing=True)
    d = app._bound_deployment  # what serve.run deploys (no public accessor)
    scaling = d._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 3)
    assert d.ray_actor_options["num_cpus"] == 2  # the replica's Realm runs as many threads
    assert d.max_ongoing_requests == 16 + 64 + 8  # the app's own queue answers 503, not Serve's
    for bad in (dict(replicas=0), dict(replicas="many"), dict(min_replicas=3, max_replicas=2),
                dict(cpus_per_replica=0), dict(max_models_per_replica=0)):
        with pytest.raises(InvalidArgumentError):
            RayOptions(**bad)


# -- a deployment on a local Ray instance ------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ray_pids(session: str = "") -> set[int]:
    """Ray's processes (workers titled `ray::...`, its binaries and agents under .../ray/), those of
    one session when `session` (its directory's name) is given."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmd = _cmdline(int(entry.name)).replace(b"\0", b" ").decode(errors="replace")
        if ("ray::" in cmd or "/ray/" in cmd) and session in cmd:
            pids.add(int(entry.name))
    return pids


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pids: set[int]) -> set[int]:
    left = set()
    for p in pids:
        try:
            if ") Z" not in Path(f"/proc/{p}/stat").read_text()[:300]:  # zombies are gone, bar the reaping
                left.add(p)
        except OSError:
            pass
    return left


def _wait_gone(pids: set[int], timeout: float = 60) -> set[int]:
    end = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < end:
        time.sleep(0.5)
    return _alive(pids)


class Deployment:
    def __init__(self, url: str, max_models: int = 2):
        self.url, self.max_models = url, max_models

    def client(self, retries: int = 0) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=retries, timeout=120)

    def complete(self, model: str, prompt: str, retries: int = 0, **kw):
        """The completion and the replica that answered it."""
        raw = self.client(retries).completions.with_raw_response.create(model=model, prompt=prompt, temperature=0,
                                                                          **kw)
        return raw.parse(), raw.headers["x-realm-replica"]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if b"=" in item)


def _answer_to_stalled(port: int, sent: bytes) -> tuple[bytes, float]:
    """The head of the answer to a request that stops after `sent`, and the seconds it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(sent)
        t0, data = time.monotonic(), b""
        while b"\r\n\r\n" not in data and (chunk := stalled.recv(65536)):
            data += chunk
        return data, time.monotonic() - t0


def test_cli_serves_on_a_local_ray_and_stops_on_sigterm(smollm2_path):
    port = _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"realm-serve-ray-{port}.log"
    args = [sys.executable, "-m", "realm", "serve", "--ray", "--port", str(port), "--model", str(smollm2_path),
            "--api-key", KEY, "--replicas", "1", "--cpus-per-replica", "1", "--read-timeout", "2"]
    env = dict(os.environ, RAY_DISABLE_USAGE_STATS="1")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
    try:
        end, ok = time.monotonic() + READY_TIMEOUT_S, False
        while not ok and proc.poll() is None and time.monotonic() < end:
            try:
                ok = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ok, log.read_text()[-3000:]
        c = Deployment(f"http://127.0.0.1:{port}").complete(SMOL, "Hello", max_tokens=4)[0]
        assert c.usage.completion_tokens == 4
        # --read-timeout reached the proxy: a body that stalls is answered 408 there, and so are
        # headers that stall (uvicorn's own protocol would wait for them for good)
        for sent in (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\": ", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty"):
            data, seconds = _answer_to_stalled(port, sent)
            assert data.startswith(b"HTTP/1.1 408 ") and 1.5 < seconds < 20, (sent, data[:300])
        ours = {p for p in _descendants(proc.pid) if p in _ray_pids()}
        assert ours, "found no Ray process under `realm serve --ray`"
        # the local instance's environment reached Serve's processes: routing in the proxy, gRPC
        from realm.serve_ray import local_environment
        environs = [_environ(p) for p in _descendants(proc.pid) if b"ServeReplica" in _cmdline(p)]
        assert environs and all(e.get(k) == v for e in environs for k, v in local_environment().items()), environs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
        assert not _wait_gone(ours), f"Ray processes left after `realm serve --ray` stopped: {sorted(ours)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_deployment_tests_in_their_own_process():
    """tests/ray_deployment.py (a deployment on a local Ray: answers, routing, a killed replica)
    in a pytest of its own: see its docstring for why this process must not start Ray."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(here.parent), str(here), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           str(here / "ray_deployment.py")], cwd=here.parent, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
