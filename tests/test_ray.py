"""realm on Ray Serve (realm.serve_ray): a local Ray instance started here (2 CPUs, no dashboard,
Serve's proxy on 127.0.0.1), 2 replicas of 1 CPU, SmolLM2 and Gemma 3, driven with the official `openai` client
through Serve's HTTP proxy.  Every load loop is bounded in count and time; the module's fixture
stops Serve and Ray and checks that no Ray process is left."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require, run_threads

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


def _ray_pids(session: str = "") -> set[int]:
    """Ray's processes (workers titled `ray::...`, its binaries and agents under .../ray/), those of
    one session when `session` (its directory's name) is given."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
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


def test_cli_serves_on_a_local_ray_and_stops_on_sigterm(smollm2_path):
    port = _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"realm-serve-ray-{port}.log"
    args = [sys.executable, "-m", "realm", "serve", "--ray", "--port", str(port), "--model", str(smollm2_path),
            "--api-key", KEY, "--replicas", "1", "--cpus-per-replica", "1"]
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
        ours = {p for p in _descendants(proc.pid) if p in _ray_pids()}
        assert ours, "found no Ray process under `realm serve --ray`"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
        assert not _wait_gone(ours), f"Ray processes left after `realm serve --ray` stopped: {sorted(ours)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


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


@pytest.fixture(scope="module", params=["proxy-routing", "router"])
def deployment(request, smollm2_path, gemma3_path):
    """Routed by Serve's proxies (the replicas are the ingress), or by a router deployment with
    one model per replica (a replica that takes the other model evicts its own)."""
    from ray import serve

    from realm.serve_ray import APP_NAME, PROXY_CALLBACK, PROXY_CALLBACK_ENV, RayOptions, application
    from realm.server import ServerLimits

    port = _free_port()
    proxy_routing = request.param == "proxy-routing"
    max_models = 2 if proxy_routing else 1
    before = os.environ.get(PROXY_CALLBACK_ENV)
    if proxy_routing:  # Ray's processes inherit it: Serve's proxy reads it when it starts
        os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK
    else:
        os.environ.pop(PROXY_CALLBACK_ENV, None)
    # Serve's HTTP proxy listens on 127.0.0.1; Ray's own services (GCS, raylet, workers) listen on
    # every interface whatever ray.init is told (it turns 127.0.0.1 into the node's address),
    # behind the token authentication Ray turns on by default
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, log_to_driver=False,
             configure_logging=False)
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = application([str(smollm2_path), str(gemma3_path)], api_keys=[KEY],
                          options=RayOptions(replicas=2, cpus_per_replica=1, max_models_per_replica=max_models),
                          limits=ServerLimits(max_concurrent=8, tenant_concurrent=16), proxy_routing=proxy_routing)
        serve.run(app, name=APP_NAME, route_prefix="/")
        yield Deployment(f"http://127.0.0.1:{port}", max_models)
        ours = _ray_pids(session) | {p for p in _descendants(os.getpid()) if p in _ray_pids()}
        assert ours, "found no process of this Ray session"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            os.environ.pop(PROXY_CALLBACK_ENV, None)
            if before is not None:
                os.environ[PROXY_CALLBACK_ENV] = before
    assert not _wait_gone(ours), f"Ray processes left after shutdown: {sorted(_alive(ours))}"


@pytest.fixture(scope="module")
def local(smollm2_path, gemma3_path):
    with realm.Realm(threads=1) as r:
        r.load_model(smollm2_path)
        r.load_model(gemma3_path)
        yield r


def _mine(local, model: str):
    return next(m for m in local.models if m.path.stem == model)


GREEDY = dict(temperature=0, top_k=0, top_p=1.0, min_p=0.0)


def test_models_listed_and_errors_as_realm_serve(deployment):
    assert sorted(m.id for m in deployment.client().models.list().data) == sorted([SMOL, GEMMA])
    bad = httpx.post(deployment.url + "/v1/completions", json={"model": "nope", "prompt": "x"},
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"
    assert "x-realm-replica" in bad.headers
    anon = httpx.post(deployment.url + "/v1/completions", json={"model": SMOL, "prompt": "x"}, timeout=60)
    assert anon.status_code == 401 and anon.json()["error"]["code"] == "invalid_api_key"
    big = httpx.post(deployment.url + "/v1/completions", content=b"x" * ((8 << 20) + 1),
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert big.status_code == 413
    metrics = httpx.get(deployment.url + "/metrics", timeout=60)
    assert "realm_requests_total" in metrics.text and metrics.headers["x-realm-replica"]


def test_greedy_answers_equal_realm_and_each_model_keeps_its_replica(deployment, local):
    seen: dict[str, set[str]] = {SMOL: set(), GEMMA: set()}
    for model in (SMOL, GEMMA):  # one at a time: Serve learns where each model was loaded
        c, replica = deployment.complete(model, "The capital of France is", max_tokens=12)
        mine = local.complete("The capital of France is", _mine(local, model), max_tokens=12, **GREEDY)
        assert c.choices[0].text == mine.text and c.usage.completion_tokens == mine.usage.completion_tokens
        seen[model].add(replica)
        time.sleep(1.0)
    prompts = ["Once upon a time", "1, 2, 3,", "Hello"]
    jobs = [lambda m=m, p=p: (m, p, *deployment.complete(m, p, max_tokens=8)) for m in (SMOL, GEMMA) for p in prompts]
    for model, prompt, c, replica in run_threads(jobs, timeout=180):
        assert c.choices[0].text == local.complete(prompt, _mine(local, model), max_tokens=8, **GREEDY).text
        seen[model].add(replica)
    chat = deployment.client().chat.completions.with_raw_response.create(
        model=SMOL, messages=[{"role": "user", "content": "Name a color."}], max_tokens=8, temperature=0)
    mine = local.chat_complete([{"role": "user", "content": "Name a color."}], _mine(local, SMOL), max_tokens=8,
                               **GREEDY)
    assert chat.parse().choices[0].message.content == mine.text
    seen[SMOL].add(chat.headers["x-realm-replica"])
    assert len(seen[SMOL]) == 1 and len(seen[GEMMA]) == 1, seen
    assert seen[SMOL] != seen[GEMMA], seen  # two models, two replicas


def test_a_killed_replica_loses_no_retried_request_and_is_replaced(deployment, local):
    from ray import serve

    from realm.serve_ray import APP_NAME

    prompt, n = "The quick brown fox", 128  # long enough to be running when the replica dies
    want = local.complete(prompt, _mine(local, SMOL), max_tokens=n, ignore_eos=True, **GREEDY).text
    _, victim = deployment.complete(SMOL, prompt, max_tokens=1)
    _, survivor = deployment.complete(GEMMA, prompt, max_tokens=1)
    killed = []

    def kill_soon() -> None:
        time.sleep(0.7)  # the requests below are generating on the victim
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed.append(time.monotonic())

    statuses = []

    def request():
        http = httpx.Client(timeout=120, event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
        client = openai.OpenAI(base_url=deployment.url + "/v1", api_key=KEY, max_retries=6, http_client=http)
        raw = client.completions.with_raw_response.create(model=SMOL, prompt=prompt, max_tokens=n, temperature=0,
                                                          extra_body={"ignore_eos": True})
        return raw.parse(), raw.retries_taken, raw.headers["x-realm-replica"]

    results = run_threads([request] * 6 + [kill_soon], timeout=240)
    assert killed
    for c, _, _ in results[:-1]:
        assert c.choices[0].text == want
    assert any(retries for _, retries, _ in results[:-1]), "no request was cut by the kill"
    # retried before the replacement was up, they went to the other replica, which loaded SMOL
    assert survivor in {replica for _, _, replica in results[:-1]}
    assert set(statuses) == {200, 503}, statuses  # the cut ones: 503 with Retry-After, in either routing
    end = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < end:
        states = serve.status().applications[APP_NAME].deployments["RealmReplica"].replica_states
        if states.get("RUNNING") == 2:
            break
        time.sleep(1.0)
    assert states.get("RUNNING") == 2, states
    replicas, loaded = set(), {}
    for i in range(8):  # both replicas answer again, neither of them the killed one
        model = GEMMA if i % 2 else SMOL
        c, replica = deployment.complete(model, "The capital of France is", max_tokens=6, retries=3)
        mine = local.complete("The capital of France is", _mine(local, model), max_tokens=6, **GREEDY)
        assert c.choices[0].text == mine.text
        replicas.add(replica)
        health = httpx.get(deployment.url + "/health", timeout=60)
        loaded[health.headers["x-realm-replica"]] = health.json()["models"]
    assert victim not in replicas
    # the survivor took both models' requests: past max_models_per_replica it unloaded one
    assert all(len(models) <= deployment.max_models for models in loaded.values()), loaded
