"""`realm serve`: load the models, build the app, run it under uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Any, Sequence

import uvicorn

from ..batching import BatchSettings
from ..errors import ListenError, check_int
from ..limits import Limits
from ..runtime import Realm
from .admission import ServerLimits
from .app import DEFAULT_SHUTDOWN_TIMEOUT_S, MAX_BODY_BYTES, check_api_keys, create_app
from .protocol import DEFAULT_READ_TIMEOUT_S, check_read_timeout, protocol_with_read_timeout

log = logging.getLogger("realm.server")

MAX_PORT = 65535


def check_port(port: int) -> int:
    """A TCP port to listen on: 0 (one the OS picks) to 65535.  Checked here because uvicorn takes
    a larger number modulo 65536 and listens there (99999: port 34463)."""
    return check_int("port", port, 0, MAX_PORT)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and not yet listening, so that clients are refused until the
    server runs: IPv4 or IPv6 as the host resolves (IPv4 where a name has both, as "localhost"
    may).  ListenError where the address cannot be had: taken, not this machine's, or a name
    that does not resolve."""
    check_port(port)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = next((a for a in found if a[0] == socket.AF_INET), found[0])
    except socket.gaierror as exc:
        raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart at once
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def build_realm(models: Sequence[str], *, threads: int | None, limits: ServerLimits,
                batch: BatchSettings | None = None) -> Realm:
    """A Realm with every model loaded (pulled on first use); each request's guest gets the
    request deadline, and a tenant's requests share its KV bytes; batch: the batching
    settings (default BatchSettings())."""
    batch = batch or BatchSettings()
    realm = Realm(threads=threads, limits=Limits(deadline_s=limits.timeout_s, kv_bytes=limits.tenant_kv_bytes),
                  tenant_kv_bytes=limits.tenant_kv_bytes, max_batch_tokens=batch.max_batch_tokens,
                  prefix_cache_bytes=batch.prefix_cache_bytes)
    try:
        for name in models:
            realm.load_model(name)
    except BaseException:
        realm.close()
        raise
    return realm


def serve(models: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, threads: int | None = None,
          api_keys: Sequence[str] = (), limits: ServerLimits | None = None,
          shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S, max_body_bytes: int = MAX_BODY_BYTES,
          batch: BatchSettings | None = None, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> None:
    """Serve the models over HTTP until SIGINT/SIGTERM, then stop accepting, let the requests in
    flight finish (up to shutdown_timeout_s) and exit; a request must arrive whole (headers and
    body) within read_timeout_s (see realm/server/protocol.py).  An address it cannot listen on
    (see `bind`) is a ListenError, raised before the models load."""
    limits = limits or ServerLimits()
    read_timeout_s = check_read_timeout(read_timeout_s)
    api_keys = check_api_keys(api_keys)  # like the address, before the models load
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    with bind(host, port) as sock:  # a wrong address fails before the models load
        realm = build_realm(models, threads=threads, limits=limits, batch=batch)
        try:
            _run(realm, sock, api_keys, limits, shutdown_timeout_s, max_body_bytes, read_timeout_s)
        finally:
            realm.close()
    log.info("realm stopped")


def _run(realm: Realm, sock: socket.socket, api_keys: tuple[str, ...], limits: ServerLimits,
         shutdown_timeout_s: float, max_body_bytes: int, read_timeout_s: float) -> None:
    """The app of realm's models under uvicorn, on sock, until SIGINT/SIGTERM."""
    drain_s = int(max(1, shutdown_timeout_s))  # uvicorn takes whole seconds
    app = create_app(realm, limits=limits, api_keys=api_keys, max_body_bytes=max_body_bytes,
                     shutdown_grace_s=drain_s)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=drain_s,
                            lifespan="off", http=protocol_with_read_timeout(read_timeout_s))
    names = ", ".join(m.path.stem for m in realm.models)
    host, port = sock.getsockname()[:2]  # the port the OS picked, for port 0
    url = f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # generations still running half a second before uvicorn's deadline are stopped
            # and answered 503, rather than left running when uvicorn cancels their requests
            if not self.should_exit:
                app.drain(drain_s - 0.5)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            log.info("realm %s serving %s on %s (%s)", os.getpid(), names, url,
                     "API keys required" if api_keys else "no API keys")

    server = Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down: let that one end
    # the process normally (exit 0) rather than kill it
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
