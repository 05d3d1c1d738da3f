"""The deployment tests of tests/test_ray.py, run by it in a pytest process of their own
(test_deployment_tests_in_their_own_process): Ray's driver replaces the SIGILL/SIGSEGV/SIGFPE
handlers that Wasmtime traps through with crash handlers that do not chain to them, at ray.init
and again at ray.shutdown; realm then runs no guest (TrapHandlerError) until
realm.restore_trap_handlers() puts them back, which the fixture checks and does -- in a process
of its own all the same, since pytest's other tests would meet the replaced handlers too.  A
local Ray instance (2 CPUs, no dashboard, Serve's proxy on 127.0.0.1), 2 replicas of 1 CPU,
SmolLM2 and Gemma 3, driven with the official `openai` client; every load loop is bounded in
count and time, and the fixture checks that no Ray process is left."""

import os
import time
from pathlib import Path

import pytest

from conftest import require, run_threads
from test_ray import GEMMA, KEY, Deployment, READY_TIMEOUT_S, SMOL, _alive, _descendants, _free_port, _ray_pids, _wait_gone

openai = require("openai")
httpx = require("httpx")
ray = require("ray")

import realm  # noqa: E402

TRAP = b'(module (func (export "boom") unreachable))'


def _guests_refused_until_restored() -> None:
    """After ray.init or ray.shutdown: a guest is refused, not run, until Wasmtime's trap handlers
    are back; then its fault is a trap again (without realm's check it kills this process)."""
    store = realm.ModelStore()
    try:
        with pytest.raises(realm.TrapHandlerError, match="SIGSEGV, SIGILL"):
            realm.Tenant(store, TRAP)
        assert {"SIGSEGV", "SIGILL"} <= set(realm.restore_trap_handlers())
        with realm.Tenant(store, TRAP) as t, pytest.raises(realm.GuestTrapError, match="unreachable"):
            t.call("boom")
    finally:
        store.close()


@pytest.fixture(scope="module", params=["proxy-routing", "router"])
def deployment(request, smollm2_path, gemma3_path):
    """Routed by Serve's proxies (the replicas are the ingress), or by a router deployment with
    one model per replica (a replica that takes the other model evicts its own)."""
    from ray import serve

    from realm.serve_ray import APP_NAME, PROXY_CALLBACK_ENV, RayOptions, application, local_environment
    from realm.server import ServerLimits

    port = _free_port()
    proxy_routing = request.param == "proxy-routing"
    max_models = 2 if proxy_routing else 1
    # what `realm serve --ray` gives a local instance (Ray's processes inherit it: Serve's proxy
    # and replicas read it when they start), without the proxies' routing for the router
    env = local_environment()
    if not proxy_routing:
        del env[PROXY_CALLBACK_ENV]
    before = {name: os.environ.pop(name, None) for name in {*env, PROXY_CALLBACK_ENV}}
    os.environ.update(env)
    # Serve's HTTP proxy listens on 127.0.0.1; Ray's own services (GCS, raylet, workers) listen on
    # every interface whatever ray.init is told (it turns 127.0.0.1 into the node's address),
    # behind the token authentication Ray turns on by default
    realm.sandbox_engine()  # Wasmtime's handlers installed before Ray's driver replaces them
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, log_to_driver=False,
             configure_logging=False)
    _guests_refused_until_restored()
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
            _guests_refused_until_restored()
            for name, value in before.items():
                os.environ.pop(name, None)
                if value is not None:
                    os.environ[name] = value
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


def test_greedy_answers_equal_realm_and_each_model_keeps_its_replica(deployment, local):
    """Routed by the proxies, the first requests (this test runs first) come for both models at
    once: each replica loaded the model of its rank as it started, so they split by model from
    the start (without that, all went to the replica that took the first model, which then drew
    every request).  The Router's handle learns where the models are from its first calls: one
    at a time there."""
    seen: dict[str, set[str]] = {SMOL: set(), GEMMA: set()}
    if deployment.max_models == 1:  # the Router
        for model in (SMOL, GEMMA):
            seen[model].add(deployment.complete(model, "Hi", max_tokens=1)[1])
            time.sleep(1.0)
    prompts = ["The capital of France is", "Once upon a time", "1, 2, 3,", "Hello"]
    jobs = [lambda m=m, p=p: (m, p, *deployment.complete(m, p, max_tokens=8)) for p in prompts for m in (SMOL, GEMMA)]
    for model, prompt, c, replica in run_threads(jobs, timeout=180):
        mine = local.complete(prompt, _mine(local, model), max_tokens=8, **GREEDY)
        assert c.choices[0].text == mine.text and c.usage.completion_tokens == mine.usage.completion_tokens
        seen[model].add(replica)
    chat = deployment.client().chat.completions.with_raw_response.create(
        model=SMOL, messages=[{"role": "user", "content": "Name a color."}], max_tokens=8, temperature=0)
    mine = local.chat_complete([{"role": "user", "content": "Name a color."}], _mine(local, SMOL), max_tokens=8,
                               **GREEDY)
    assert chat.parse().choices[0].message.content == mine.text
    seen[SMOL].add(chat.headers["x-realm-replica"])
    assert len(seen[SMOL]) == 1 and len(seen[GEMMA]) == 1, seen
    assert seen[SMOL] != seen[GEMMA], seen  # two models, two replicas


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


def test_a_client_that_leaves_a_stream_stops_its_generation(deployment):
    """A client that closes its stream mid-way ends its generation on the replica at its next
    token, through Serve's proxy (with the body in the scope, the replica's receive() still
    brings the disconnect) and through the Router (which cancels its call to the replica: Serve
    does not pass the disconnect on): the replica's /health shows nothing running long before
    the 2000 tokens asked for could have been generated."""
    body = {"model": SMOL, "prompt": "Tell a long story.", "max_tokens": 2000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", deployment.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200
        replica, lines = r.headers["x-realm-replica"], r.iter_lines()
        assert any(next(lines).startswith("data: ") for _ in range(4))
        left = time.monotonic()
    health: dict = {}
    while time.monotonic() < left + 10:  # 2000 tokens take a replica of 1 CPU about 20 s here
        answer = httpx.get(deployment.url + "/health", timeout=60)
        if answer.headers["x-realm-replica"] == replica:
            health = answer.json()
            if health["running"] == 0 and health["kv_bytes"] == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"the replica still generates for the client that left: {health}")


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
