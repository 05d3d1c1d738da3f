"""`realm serve`: a real server process on 127.0.0.1 with the PyPI models, driven by the official
`openai` client and by raw HTTP, started and stopped by the tests.  Every loop that sends load
is bounded in count and time."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require, run_threads

openai = require("openai")
httpx = require("httpx")
require("fastapi")

import realm  # noqa: E402

KEYS = ("alpha-key", "beta-key")
START_TIMEOUT_S = 120


class Server:
    """`python -m realm serve --port 0 ...` in a child process: the OS picks the port, which the
    server's "serving ... on URL" line (logged once it listens) says."""

    def __init__(self, models, *extra: str):
        args = [sys.executable, "-m", "realm", "serve", "--port", "0", "--threads", "2"]
        for m in models:
            args += ["--model", str(m)]
        fd, log = tempfile.mkstemp(prefix="realm-serve-", suffix=".log")
        self.log = Path(log)
        with os.fdopen(fd, "wb") as err:
            self.proc = subprocess.Popen(args + list(extra), stdout=subprocess.DEVNULL, stderr=err)
        end = time.monotonic() + START_TIMEOUT_S
        while (m := re.search(r" serving .* on (http://127\.0\.0\.1:(\d+)) ", self.log.read_text())) is None:
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                pytest.fail(f"realm serve did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.url, self.port = m.group(1), int(m.group(2))
        assert httpx.get(self.url + "/health", timeout=10).status_code == 200  # listening when it says so

    def client(self, key: str | None = KEYS[0]) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=120)

    def post(self, path: str, body, key: str | None = KEYS[0], **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if not isinstance(body, (dict, list)):  # bytes, or an iterator of them (sent chunked)
            return httpx.post(self.url + path, content=body, headers=headers, timeout=120, **kw)
        return httpx.post(self.url + path, json=body, headers=headers, timeout=120, **kw)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(smollm2_path, gemma3_path):
    s = Server([smollm2_path, gemma3_path], "--api-key", KEYS[0], "--api-key", KEYS[1],
               "--tenant-concurrent", "16", "--max-concurrent", "16")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def local(smollm2_path, gemma3_path):
    """realm used directly, for the answers the server must give."""
    with realm.Realm(threads=2) as r:
        r.load_model(smollm2_path)
        r.load_model(gemma3_path)
        yield r


SMOL = "SmolLM2-135M-Instruct.Q4_1"
GEMMA = "gemma-3-270m-q4_k_m"


# -- endpoints ------------------------------------------------------------------------------------

def test_models_health_and_metrics(server):
    assert sorted(m.id for m in server.client().models.list().data) == sorted([SMOL, GEMMA])
    health = server.health()
    assert health["status"] == "ok" and set(health["models"]) == {SMOL, GEMMA}
    server.client().completions.create(model=SMOL, prompt="Hi", max_tokens=2)
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for name in ("realm_requests_total", "realm_prompt_tokens_total", "realm_completion_tokens_total",
                 "realm_time_to_first_token_seconds", "realm_tokens_per_second", "realm_queue_depth",
                 "realm_active_tenants", "realm_batch_size", "realm_prefix_cache_hits_total", "realm_tenant_kv_bytes"):
        assert name in text, name


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_completions_equal_realm_and_stream_equals_whole(server, local, model):
    prompt = "The capital of France is"
    c = server.client().completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
    mine = local.complete(prompt, _path(local, model), max_tokens=12, temperature=0, top_k=0, top_p=1.0, min_p=0.0)
    assert c.choices[0].text == mine.text
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (mine.usage.prompt_tokens,
                                                                  mine.usage.completion_tokens)
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    assert c.choices[0].finish_reason == "length"
    chunks = list(server.client().completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == mine.text
    assert chunks[-1].usage.completion_tokens == mine.usage.completion_tokens


def _path(local, model_stem):
    return next(m for m in local.models if m.path.stem == model_stem)


def test_chat_stream_and_whole_agree_with_realm(server, local):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]
    whole = server.client().chat.completions.create(model=SMOL, messages=messages, max_tokens=16, temperature=0)
    stream = server.client().chat.completions.create(model=SMOL, messages=messages, max_tokens=16, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    mine = local.chat(messages, _path(local, SMOL), max_tokens=16, temperature=0, top_k=0, top_p=1.0, min_p=0.0,
                      stream=True)
    assert mine.text == text
    assert chunks[-1].usage.prompt_tokens == mine.completion.usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == len(mine.completion.tokens)


def test_logprobs_equal_realms_own(server, local):
    messages = [{"role": "user", "content": "Count to three."}]
    r = server.client().chat.completions.create(model=SMOL, messages=messages, max_tokens=8, temperature=0,
                                                logprobs=True, top_logprobs=3)
    mine = local.chat(messages, _path(local, SMOL), max_tokens=8, temperature=0, top_k=0, top_p=1.0, min_p=0.0,
                      logprobs=3, stream=True)
    mine.text
    got = r.choices[0].logprobs.content
    want = mine.completion.logprobs
    assert len(got) == len(want) == r.usage.completion_tokens
    for g, w in zip(got, want):
        assert g.logprob == w.logprob
        assert [t.logprob for t in g.top_logprobs] == [lp for _, lp in w.top]
        assert bytes(g.bytes) == local.token_bytes([w.token], _path(local, SMOL))[0]
    # the legacy endpoint's shape
    c = server.client().completions.create(model=SMOL, prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == c.choices[0].text


# -- errors ---------------------------------------------------------------------------------------

def _error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code
    return err


def test_error_statuses(server):
    chat = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    _error(server.post("/v1/chat/completions", b"{not json"), 400, "invalid_json")
    _error(server.post("/v1/chat/completions", b"[1, 2]"), 400, "invalid_json")
    _error(server.post("/v1/completions", b"[" * 1000 + b"]" * 1000), 400, "invalid_json")  # Python's JSON recursion
    _error(server.post("/v1/completions", b'{"prompt": "hi", "seed": 1' + b"0" * 5000 + b"}"), 400, "invalid_json")
    assert _error(server.post("/v1/chat/completions", {**chat, "max_tokens": "two"}), 400)["param"] == "max_tokens"
    assert _error(server.post("/v1/chat/completions", {**chat, "temperature": 9}), 400)["param"] == "temperature"
    _error(server.post("/v1/chat/completions", {**chat, "n": 2}), 400)
    _error(server.post("/v1/chat/completions", {**chat, "messages": []}), 400)
    _error(server.post("/v1/completions", {"model": SMOL, "prompt": "hi", "max_tokens": 5000}), 400,
           "context_length_exceeded")
    _error(server.post("/v1/completions", {"model": SMOL, "prompt": "hi", "max_tokens": 5000, "stream": True}), 400,
           "context_length_exceeded")
    _error(server.post("/v1/chat/completions", {**chat, "model": GEMMA}), 400, "chat_template")  # it has none
    _error(server.post("/v1/chat/completions", chat, key=None), 401, "invalid_api_key")
    _error(server.post("/v1/chat/completions", chat, key="wrong"), 401, "invalid_api_key")
    _error(server.post("/v1/chat/completions", {**chat, "model": "nope"}), 404, "model_not_found")
    _error(server.post("/v1/completions", b"x" * (9 << 20)), 413)
    chunked = (b"x" * (1 << 20) for _ in range(9))  # no Content-Length: counted as it arrives
    _error(server.post("/v1/completions", chunked), 413)
    surrogate = {**chat, "messages": [{"role": "user", "content": "x\ud800"}]}  # sent as the escape \ud800: no UTF-8
    _error(server.post("/v1/chat/completions", json.dumps(surrogate).encode()), 400, "invalid_value")
    surrogate = {"model": SMOL, "prompt": "hi", "max_tokens": 1, "stop": ["\udfff"]}
    _error(server.post("/v1/completions", json.dumps(surrogate).encode()), 400)
    # OpenAI's fields realm does not implement: refused, unless their value changes nothing
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for path, extra, param in (("/v1/completions", {"logit_bias": {"42": 5}}, "logit_bias"),
                               ("/v1/completions", {"best_of": 2}, "best_of"),
                               ("/v1/completions", {"suffix": "end"}, "suffix"),
                               ("/v1/chat/completions", {"tools": tools}, "tools"),
                               ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format")):
        body = {**(chat if "chat" in path else {"model": SMOL, "prompt": "hi", "max_tokens": 2}), **extra}
        assert _error(server.post(path, body), 400, "invalid_value")["param"] == param
    inert = {"logit_bias": {}, "tool_choice": "none", "response_format": {"type": "text"}, "temperature": None,
             "top_p": None, "stop": None, "seed": None, "stream": None, "n": None}  # null: the default
    assert server.post("/v1/chat/completions", {**chat, **inert}).status_code == 200
    assert "/v1/nothing" in _error(server.post("/v1/nothing", chat), 404)["message"]  # the router's own answers
    r = httpx.delete(server.url + "/v1/completions", timeout=10)
    assert "POST" in _error(r, 405)["message"] and r.headers["Allow"] == "POST"
    r = httpx.head(server.url + "/health", timeout=10)  # load balancers' probes
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="nope", prompt="x", max_tokens=1)
    assert server.health()["status"] == "ok"  # the process survived every one


def test_a_bug_still_answers_in_openais_shape(local, monkeypatch):
    """An exception no handler expects (a bug) is a 500 in OpenAI's shape, not a text/plain one."""
    from starlette.testclient import TestClient

    from realm.server import create_app

    def broken() -> dict:
        raise RuntimeError("a bug")

    monkeypatch.setattr(local, "in_flight", broken)
    with TestClient(create_app(local), raise_server_exceptions=False) as client:
        _error(client.get("/health"), 500, "internal_error")


# -- many clients ------------------------------------------------------------------------------------

def test_sixteen_streaming_clients_get_their_solo_answers(server):
    prompts = [f"Write a list of {i + 2} fruits:" for i in range(16)]

    def ask(i):
        stream = server.client(KEYS[i % 2]).completions.create(model=SMOL, prompt=prompts[i], max_tokens=16,
                                                               temperature=0, stream=True)
        return "".join(ch.choices[0].text for ch in stream if ch.choices)

    solo = [ask(i) for i in range(16)]
    assert run_threads([lambda i=i: ask(i) for i in range(16)]) == solo


def test_a_client_that_disconnects_frees_its_generation(server):
    body = {"model": SMOL, "prompt": "Tell a long story.", "max_tokens": 400, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEYS[0]}"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any(line.startswith("data: ") for line in got)
    h = _idle(server)
    assert h["running"] == 0 and h["kv_bytes"] == 0


def _idle(server, timeout=60):
    """/health once nothing runs (bounded): a closed connection's generation stops at its next token."""
    end = time.monotonic() + timeout
    while True:
        h = server.health()
        if (h["running"] == 0 and h["kv_bytes"] == 0) or time.monotonic() > end:
            return h
        time.sleep(0.1)


# -- limits: a small server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(smollm2_path):
    s = Server([smollm2_path], "--api-key", KEYS[0], "--api-key", KEYS[1], "--max-concurrent", "1",
               "--max-queue", "0", "--tenant-concurrent", "1", "--timeout", "4", "--prefix-cache-mib", "0",
               "--max-batch-tokens", "16")
    s.client().completions.create(model=SMOL, prompt="warm", max_tokens=1)  # the guest module compiled
    yield s
    assert s.stop() == 0


def _long(server, key):
    body = {"model": SMOL, "prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    return httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60,
                        headers={"Authorization": f"Bearer {key}"})


def test_the_prefix_cache_flag(server, small):
    """A prompt sent twice: its second run reuses the first's KV rows on a default server, and
    none on one started with --prefix-cache-mib 0."""
    prompt = "A prompt sent twice, its rows kept from the first time for the second, " * 2
    for srv, reused in ((server, True), (small, False)):
        client = srv.client()
        for _ in range(2):
            r = client.completions.create(model=SMOL, prompt=prompt, max_tokens=1, temperature=0)
        assert (r.usage.prompt_tokens_details.cached_tokens > 0) == reused


def test_build_realm_takes_the_batching_settings():
    from realm.batching import BatchSettings, _registry
    from realm.server import ServerLimits
    from realm.server.run import build_realm

    settings = BatchSettings(max_batch_tokens=16, prefix_cache_bytes=0)
    realm = build_realm((), threads=1, limits=ServerLimits(), batch=settings)
    try:
        assert _registry(realm.store).settings == settings
    finally:
        realm.close()


@pytest.mark.parametrize("args, message", [
    (["--port", "99999"], "port must be 0..65535, not 99999"),  # uvicorn would listen on 34463
    (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1:8000"),  # TEST-NET-1: no host's address
    (["--port", "TAKEN"], "cannot listen on 127.0.0.1:TAKEN"),
])
def test_an_address_it_cannot_listen_on_fails_at_once(tmp_path, args, message):
    """One line and exit status 1, before any model loads (the model named does not exist)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = [a.replace("TAKEN", port) for a in args]
        r = subprocess.run([sys.executable, "-m", "realm", "serve", "--model", str(tmp_path / "absent.gguf"), *args],
                           capture_output=True, text=True, timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("realm: error: "), r.stderr
    assert message.replace("TAKEN", port) in lines[0]


def test_server_arguments_are_checked():
    from realm.server import ServerLimits, serve

    with pytest.raises(realm.ArgumentTypeError):
        serve([], port="8000")
    with pytest.raises(realm.InvalidArgumentError):
        serve([], port=-1)
    for keys in (["a key"], [""], ["\udcff"], ["caf\u00e9"]):  # what no Authorization header carries as such
        with pytest.raises(realm.InvalidArgumentError, match="API key"):
            serve([], api_keys=keys)
    with pytest.raises(realm.ArgumentTypeError, match="api_keys"):
        serve([], api_keys="one-key")  # a str is not a list of keys
    with pytest.raises(realm.ArgumentTypeError):
        ServerLimits(max_concurrent="16")
    with pytest.raises(realm.InvalidArgumentError, match="max_queue"):
        ServerLimits(max_queue=-1)
    with pytest.raises(realm.InvalidArgumentError, match="timeout_s"):
        ServerLimits(timeout_s=float("nan"))
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(realm.InvalidArgumentError, match="read_timeout_s"):
            serve([], read_timeout_s=bad)
    with pytest.raises(realm.ArgumentTypeError, match="read_timeout_s"):
        serve([], read_timeout_s="60")


def test_a_bad_read_timeout_is_refused_before_anything_starts(capsys):
    from realm.cli import main

    assert main(["serve", "--read-timeout", "0"]) == 1  # before any model loads
    assert "read_timeout_s must be a positive number" in capsys.readouterr().err


def test_a_full_server_answers_at_once(small):
    with _long(small, KEYS[0]) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        assert sum(next(lines).startswith("data: ") for _ in range(4)) >= 2  # it is generating
        r = small.post("/v1/completions", {"model": SMOL, "prompt": "x", "max_tokens": 1}, key=KEYS[0])
        _error(r, 429, "tenant_concurrency")
        assert r.headers["Retry-After"]
        r = small.post("/v1/completions", {"model": SMOL, "prompt": "x", "max_tokens": 1}, key=KEYS[1])
        _error(r, 503, "server_full")
        assert r.headers["Retry-After"]


def test_a_request_past_its_deadline(small):
    _idle(small)
    r = small.post("/v1/completions", {"model": SMOL, "prompt": "Once", "max_tokens": 2000, "ignore_eos": True,
                                       "temperature": 0}, key=KEYS[1])
    _error(r, 408, "timeout")
    assert small.health()["status"] == "ok"


def _until_closed(conn: socket.socket, limit_s: float = 15) -> tuple[bytes, float]:
    """What the server sends on conn until it closes it, and when it did (seconds from now)."""
    t0, data = time.monotonic(), b""
    conn.settimeout(limit_s)
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        conn.close()
    return data, time.monotonic() - t0


def test_a_request_that_does_not_arrive_in_time(smollm2_path):
    """--read-timeout: a connection silent from the start, one sending its headers a byte at a
    time, one whose second pipelined request never ends and one whose body stops halfway are
    cut off once the request has taken that long (408 in OpenAI's shape where the headers never
    completed; the stalled body's connection is closed), while the server goes on answering
    others."""
    s = Server([smollm2_path], "--read-timeout", "1")
    try:
        addr = ("127.0.0.1", s.port)
        silent = socket.create_connection(addr)
        partial = socket.create_connection(addr)
        partial.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        stalled = socket.create_connection(addr)
        stalled.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"model\": ")
        pipelined = socket.create_connection(addr)  # a whole request, then the start of another
        pipelined.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n")
        trickle = socket.create_connection(addr)
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n":  # 40 bytes, 0.1 s apart: 4 s
            try:
                trickle.sendall(bytes([byte]))
            except OSError:  # closed under it
                break
            time.sleep(0.1)
        assert s.health()["status"] == "ok"  # a whole request in time is answered meanwhile
        for conn in (silent, partial, trickle):
            data, _ = _until_closed(conn)
            assert data.startswith(b"HTTP/1.1 408 "), data[:200]
            assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        data, _ = _until_closed(pipelined)
        assert data.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in data
        data, seconds = _until_closed(stalled)
        assert seconds < 5 and b"200 OK" not in data
        assert s.health()["status"] == "ok"
    finally:
        assert s.stop() == 0


def test_a_headers_deadline_leaves_the_body_to_the_app():
    """headers_deadline_protocol (Serve's proxies, whose middleware bounds a body itself):
    headers that stall are answered 408, also those of a request pipelined behind an answered
    one; a body that stalls past the deadline is still read whole, and answered."""
    import uvicorn

    from realm.server.protocol import headers_deadline_protocol

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
        await send({"type": "http.response.body", "body": b"%d" % len(body)})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning",
                                           http=headers_deadline_protocol(0.5)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < end:
            time.sleep(0.01)
        assert server.started, "the test's uvicorn server did not start"
        addr = sock.getsockname()
        partial = socket.create_connection(addr)
        partial.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        pipelined = socket.create_connection(addr)  # a whole request, then the start of another
        pipelined.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n")
        slow_body = socket.create_connection(addr)
        slow_body.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab")
        time.sleep(1.5)  # three deadlines
        slow_body.sendall(b"cd")
        data, _ = _until_closed(slow_body)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n4"), data
        data, seconds = _until_closed(partial)
        assert data.startswith(b"HTTP/1.1 408 ") and seconds < 5, data[:200]
        data, _ = _until_closed(pipelined)
        assert data.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\n0HTTP/1.1 408 " in data, data
    finally:
        server.should_exit = True
        thread.join(10)


def test_graceful_shutdown_finishes_requests_in_flight(smollm2_path):
    """A stream in flight at SIGTERM runs to its end (sse-starlette would cut it at the signal:
    the stream is long enough to outlive its 0.5 s poll; the drain's timeout is long enough for a
    loaded machine)."""
    s = Server([smollm2_path], "--shutdown-timeout", "300")
    body = {"model": SMOL, "prompt": "Count: 1, 2,", "max_tokens": 100, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        s.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    pieces = [json.loads(line[6:]) for line in rest[:-1]]
    assert pieces[-1]["choices"][0]["finish_reason"] == "length"
    assert s.proc.wait(120) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health", timeout=2)


def test_drain_timeout_stops_the_generations_left(smollm2_path):
    """Requests that outlive the drain's timeout, streaming or not, are answered 503 (a stream:
    an error event, then [DONE]) half a second before it, their generations stopped, and the
    process exits cleanly: no request cancelled by uvicorn, no generation left writing to the
    closed event loop."""
    s = Server([smollm2_path], "--shutdown-timeout", "2")
    body = {"model": SMOL, "prompt": "Count: 1, 2,", "max_tokens": 4000, "temperature": 0, "ignore_eos": True}
    plain: dict = {}

    def post() -> None:
        plain["response"] = s.post("/v1/completions", body)

    with httpx.stream("POST", s.url + "/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        waiter = threading.Thread(target=post)
        waiter.start()
        deadline = time.monotonic() + 60
        while s.health()["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
        waiter.join(120)
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["error"]["code"] == "server_shutting_down"
    _error(plain["response"], 503, "server_shutting_down")
    assert s.proc.wait(120) == 0
    log = s.log.read_text()
    assert "Traceback" not in log and "Cancel" not in log and "Event loop is closed" not in log, log[-3000:]


# -- hostile clients --------------------------------------------------------------------------------

_json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                            | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
_fields = st.sampled_from(["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
                           "top_p", "top_k", "min_p", "stop", "seed", "n", "stream", "stream_options", "logprobs",
                           "top_logprobs", "presence_penalty", "frequency_penalty", "repeat_penalty", "ignore_eos",
                           "user", "echo"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       body=st.dictionaries(_fields, _json_values, max_size=8) | _json_values,
       base=st.sampled_from([{}, {"prompt": "Hi", "max_tokens": 1},
                             {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}]))
def test_any_json_body_gets_an_answer(server, path, body, base):
    """Whatever JSON a client sends, the server answers with a status and, for an error, OpenAI's
    shape -- and keeps serving."""
    if isinstance(body, dict):
        body = {**base, **body}
        # bound the work a drawn body may ask for: at most 2 tokens
        if not isinstance(body.get("max_tokens"), int) or isinstance(body["max_tokens"], bool):
            body.setdefault("max_tokens", 1)
        else:
            body["max_tokens"] = min(body["max_tokens"], 2)
        body.pop("max_completion_tokens", None)
    r = server.post(path, json.dumps(body).encode())
    assert r.status_code in (200, 400, 404, 408, 413, 429), r.text
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert server.health()["status"] == "ok"
