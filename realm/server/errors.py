"""OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, and the status each
realm error gets."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from ..errors import (ArgumentTypeError, DeadlineExceeded, InvalidArgumentError, LimitExceeded, ModelNotFoundError,
                      RealmError)
from ..chat import ChatTemplateError
from ..runtime import ContextWindowError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An answer other than 200, in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def request_timeout() -> APIError:
    """A request that did not arrive whole (headers and body) within the read timeout."""
    return APIError(408, "the request did not arrive in time", code="request_timeout")


def from_realm(exc: RealmError) -> APIError:
    """The API error of a realm error raised while serving a request."""
    if isinstance(exc, ContextWindowError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, DeadlineExceeded):
        return APIError(408, f"the request ran past its deadline: {exc}", code="timeout")
    if isinstance(exc, LimitExceeded):
        return APIError(429, str(exc), code="tenant_limit", retry_after=1)
    if isinstance(exc, ChatTemplateError):
        return APIError(400, str(exc), param="messages", code="chat_template")
    if isinstance(exc, (InvalidArgumentError, ArgumentTypeError)):
        return APIError(400, str(exc), code="invalid_value")
    return APIError(500, f"{type(exc).__name__}: {exc}", code="internal_error")
