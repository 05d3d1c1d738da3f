"""`realm serve`: load the models, build the app, run it under uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, Sequence

import uvicorn

from ..batching import BatchSettings
from ..limits import Limits
from ..runtime import Realm
from .admission import ServerLimits
from .app import DEFAULT_SHUTDOWN_TIMEOUT_S, MAX_BODY_BYTES, create_app

log = logging.getLogger("realm.server")



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
          batch: BatchSettings | None = None) -> None:
    """Serve the models over HTTP until SIGINT/SIGTERM, then stop accepting, let the requests in
    flight finish (up to shutdown_timeout_s) and exit."""
    limits = limits or ServerLimits()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    realm = build_realm(models, threads=threads, limits=limits, batch=batch)
    try:
        drain_s = int(max(1, shutdown_timeout_s))  # uvicorn takes whole seconds
        app = create_app(realm, limits=limits, api_keys=tuple(api_keys), max_body_bytes=max_body_bytes,
                         shutdown_grace_s=drain_s)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=drain_s, lifespan="off")

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                # generations still running half a second before uvicorn's deadline are stopped
                # and answered 503, rather than left running when uvicorn cancels their requests
                if not self.should_exit:
                    app.drain(drain_s - 0.5)
                super().handle_exit(sig, frame)

        server = Server(config)
        # uvicorn re-raises the signal that stopped it once it has shut down: let that one end
        # the process normally (exit 0) rather than kill it
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        names = ", ".join(m.path.stem for m in realm.models)
        log.info("realm %s serving %s on http://%s:%d (%s)", os.getpid(), names, host, port,
                 "API keys required" if api_keys else "no API keys")
        server.run()
    finally:
        realm.close()
    log.info("realm stopped")
