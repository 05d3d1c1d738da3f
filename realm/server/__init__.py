"""realm's OpenAI-compatible server (`pip install "realm[server]"`, `realm serve`).

    from realm.server import create_app, serve, ServerLimits
    serve(["smollm2"], port=8000, api_keys=["secret"])          # blocks until SIGINT/SIGTERM
    app = create_app(realm.Realm(...), limits=ServerLimits())   # an ASGI app for your own server
"""

import importlib.util

_MISSING = [m for m in ("fastapi", "uvicorn", "sse_starlette", "prometheus_client", "pydantic")
            if importlib.util.find_spec(m) is None]
if _MISSING:
    raise ImportError(f'realm.server needs the server extra: pip install "realm[server]" (missing {", ".join(_MISSING)})')

from .admission import ServerLimits
from .app import RealmApp, create_app
from .errors import APIError
from .run import serve

__all__ = ["create_app", "RealmApp", "serve", "ServerLimits", "APIError"]
