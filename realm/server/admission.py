"""Who may start a generation now: a bounded queue in front of the server's generation slots,
and each tenant's share of them.  Never blocks without bound: a full queue answers at once."""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from ..errors import ArgumentTypeError, InvalidArgumentError, check_int
from .errors import APIError


@dataclass(frozen=True)
class ServerLimits:
    """max_concurrent: generations running at once, all tenants together (they share batched
    passes); max_queue: requests waiting for one of those slots (more: 503); tenant_concurrent:
    requests of one tenant queued or running (more: 429); tenant_kv_bytes: KV cache bytes a
    tenant's running requests hold together, one counter for all of them (one request may use
    it all; a KV cache past it is refused with 429);
    timeout_s: a request's deadline, from its start to its last token (408 past it)."""

    max_concurrent: int = 16
    max_queue: int = 64
    tenant_concurrent: int = 8
    tenant_kv_bytes: int = 1 << 30
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name, low in (("max_concurrent", 1), ("max_queue", 0), ("tenant_concurrent", 1), ("tenant_kv_bytes", 1)):
            check_int(name, getattr(self, name), low)
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)):
            raise ArgumentTypeError(f"timeout_s must be a number, not {type(self.timeout_s).__name__}")
        if not self.timeout_s > 0:
            raise InvalidArgumentError(f"timeout_s must be > 0, not {self.timeout_s}")


class Admission:
    """Slots for generations (used from the event loop only)."""

    def __init__(self, limits: ServerLimits):
        self.limits = limits
        self.running = 0
        self.waiting = 0
        self.tenants: collections.Counter[str] = collections.Counter()  # requests queued or running
        self._free = asyncio.Condition()

    def figures(self) -> tuple[int, int, int]:
        """(waiting, running, active tenants)."""
        return self.waiting, self.running, len(self.tenants)

    async def enter(self, tenant: str) -> None:
        """Take a slot for the tenant, waiting in the queue if need be; APIError 429 (the tenant's
        share is taken) or 503 (the queue is full) at once otherwise."""
        if self.tenants[tenant] >= self.limits.tenant_concurrent:
            raise APIError(429, f"too many requests of this tenant at once (at most {self.limits.tenant_concurrent})",
                           code="tenant_concurrency", retry_after=1)
        if self.running >= self.limits.max_concurrent and self.waiting >= self.limits.max_queue:
            raise APIError(503, "the server is full: try again shortly", code="server_full", retry_after=1)
        self.tenants[tenant] += 1
        self.waiting += 1
        try:
            async with self._free:
                await self._free.wait_for(lambda: self.running < self.limits.max_concurrent)
                self.running += 1
        except BaseException:  # cancelled while queued (the client went away)
            self._forget(tenant)
            raise
        finally:
            self.waiting -= 1

    async def leave(self, tenant: str) -> None:
        self.running -= 1
        self._forget(tenant)
        async with self._free:
            self._free.notify()

    def _forget(self, tenant: str) -> None:
        self.tenants[tenant] -= 1
        if self.tenants[tenant] <= 0:
            del self.tenants[tenant]
