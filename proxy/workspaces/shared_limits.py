"""Per-workspace limits shared by every worker and host on one store (workers > 1 or PostgreSQL).

Requests per minute: a token bucket row per workspace, spent in one store transaction per
request. Concurrent streams: a lease row per open stream, renewed every LEASE_RENEW_S while the
stream runs, so the streams of a process that dies free themselves within LEASE_TTL_S. Ended
leases are dropped by this object's own task (a request's `finally` may be cancelled when its
client leaves; the drop must still happen), at once and in batches. The
process-local limiter still runs first (it can only be stricter within one process). When the
store cannot be reached the shared check is skipped (fail open on the local limits) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from proxy.background import BackgroundTask
from proxy.store import Store
from proxy.store.rows import StoreUnavailable

log = logging.getLogger("okm.limits")

LEASE_TTL_S = 30.0
LEASE_RENEW_S = 5.0


class SharedLimits:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._leases: set[str] = set()
        self._ended: list[str] = []
        self._wakeup = asyncio.Event()
        self._task = BackgroundTask("stream-lease-renewal")
        self.unavailable = 0  # shared checks skipped because the store could not be reached

    def start(self) -> None:
        self._task.start(self._renew())

    async def stop(self) -> None:
        await self._task.stop()
        with contextlib.suppress(StoreUnavailable):
            await self._store.drop_stream_leases(sorted(self._leases) + self._ended)
        self._leases.clear()
        self._ended.clear()

    async def take_request(self, workspace_id: int, rpm: int) -> float | None:
        """None when admitted; else the Retry-After seconds for a refusal."""
        try:
            return await self._store.take_rate_token(workspace_id, rpm, time.time())
        except StoreUnavailable as exc:
            self._skipped(exc)
            return None

    async def take_stream(self, workspace_id: int, cap: int) -> tuple[bool, str | None]:
        """(admitted, lease id): the lease is None when the store could not be asked (then the
        stream is admitted on the local limit alone)."""
        lease = secrets.token_hex(12)
        try:
            taken = await self._store.take_stream_lease(lease, workspace_id, cap, time.time(), LEASE_TTL_S)
        except StoreUnavailable as exc:
            self._skipped(exc)
            return True, None
        if not taken:
            return False, None
        self._leases.add(lease)
        return True, lease

    def release(self, lease: str) -> None:
        """The stream ended: its lease is dropped by the owner task within milliseconds."""
        self._leases.discard(lease)
        self._ended.append(lease)
        self._wakeup.set()

    def _skipped(self, exc: StoreUnavailable) -> None:
        self.unavailable += 1
        log.warning("shared limits skipped (local limits still apply): %s", exc)

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        next_renewal = loop.time() + LEASE_RENEW_S
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_renewal - loop.time())):
                    await self._wakeup.wait()
            self._wakeup.clear()
            ended, self._ended = self._ended, []
            try:
                if ended:  # on failure they expire on their own within LEASE_TTL_S
                    await self._store.drop_stream_leases(ended)
                if loop.time() >= next_renewal:
                    next_renewal = loop.time() + LEASE_RENEW_S
                    await self._store.renew_stream_leases(sorted(self._leases), time.time() + LEASE_TTL_S)
            except StoreUnavailable as exc:
                self._skipped(exc)
