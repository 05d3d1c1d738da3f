"""The HTTP/1.1 protocol `realm serve` runs under uvicorn: h11's, with a deadline for each request.

uvicorn waits for a request as long as its client takes: a connection that never sends a byte,
or sends its headers a byte a minute, or stops halfway through its body, stays open for good,
holding a file descriptor (and, once its headers are in, a request task). Enough of them starve
the server of both. Here each request must arrive whole -- from its first byte (or the
connection's opening) to the end of its body -- within `read_timeout_s`. Past it a request whose
headers never completed is answered 408 in OpenAI's error shape, and the connection closes; one
whose body stalled is disconnected (its handler, reading the body, sees the client leave).
Waiting between requests on a kept-alive connection is uvicorn's `timeout_keep_alive`.
Serve's proxies hold only the headers to such a deadline (`headers_deadline_protocol`: their
middleware bounds the body of a request to realm's API, see
`realm.serve_ray.proxy_middlewares`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ArgumentTypeError, InvalidArgumentError
from .errors import request_timeout

__all__ = ["DEFAULT_READ_TIMEOUT_S", "check_read_timeout", "protocol_with_read_timeout", "headers_deadline_protocol"]

#: Seconds a request may take to arrive whole, headers and body (`realm serve --read-timeout`).
DEFAULT_READ_TIMEOUT_S = 60.0

#: Client states in which a request is still arriving.
_READING = (h11.IDLE, h11.SEND_BODY)


def check_read_timeout(read_timeout_s: float) -> float:
    """read_timeout_s, checked: a positive, finite number of seconds."""
    if isinstance(read_timeout_s, bool) or not isinstance(read_timeout_s, (int, float)):
        raise ArgumentTypeError(f"read_timeout_s must be a number, not {type(read_timeout_s).__name__}")
    if not 0 < read_timeout_s < float("inf"):
        raise InvalidArgumentError(f"read_timeout_s must be a positive number of seconds, not {read_timeout_s}")
    return float(read_timeout_s)


def _timeout_response() -> bytes:
    body = json.dumps(request_timeout().body()).encode()
    head = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()
    return head + body


class _Deadline:
    """A read deadline's timer, for a uvicorn protocol class (which has `loop`) to mix in:
    `_arm` starts it unless it runs, `_disarm` stops it; it calls the protocol's `_expired`."""

    read_timeout_s = DEFAULT_READ_TIMEOUT_S
    _read_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._expired)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None


class _ReadDeadline(_Deadline, H11Protocol):
    """H11Protocol with a deadline for each request to arrive (`read_timeout_s`, set by
    `protocol_with_read_timeout`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # a request begins (a kept-alive connection's wait ends)
            self._arm()
        super().data_received(data)
        if self._read_timer is not None and self.conn.their_state not in _READING:  # it is all in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a pipelined request that arrived during the response is read now: its clock starts
        if not self.transport.is_closing() and (self.conn.their_state is h11.SEND_BODY or
                                                (self.conn.their_state is h11.IDLE and self.conn.trailing_data[0])):
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _expired(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self.conn.their_state not in _READING:
            return
        if self.conn.their_state is h11.IDLE:  # no request yet to answer through h11
            self.transport.write(_timeout_response())
        self.transport.close()


def protocol_with_read_timeout(read_timeout_s: float) -> type[Any]:
    """uvicorn's `http` protocol class for `realm serve`: h11's, with read_timeout_s seconds for
    each request to arrive whole."""
    return type("RealmHTTPProtocol", (_ReadDeadline,), {"read_timeout_s": float(read_timeout_s)})


def headers_deadline_protocol(read_timeout_s: float) -> type[Any]:
    """uvicorn's httptools protocol -- what Serve's proxies run ("auto"; httptools comes with
    ray[serve]'s uvicorn[standard]) -- with read_timeout_s seconds for each request's headers to
    arrive, from its first byte (or the connection's opening); past it the answer is 408 and the
    connection closes (only closes, where a response is still under way).  The body is left to
    the app."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    seconds = float(read_timeout_s)

    class HeadersDeadline(_Deadline, HttpToolsProtocol):
        read_timeout_s = seconds

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:  # a request's first byte (parsed)
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _expired(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # nothing else on the wire
                self.transport.write(_timeout_response())
            self.transport.close()

    return HeadersDeadline
