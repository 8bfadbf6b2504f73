"""Bounds on a stream once it runs: a longest duration (`limits.max_stream_s`), and the end of
the caller's right to it (key revoked, workspace disabled, BYOK turned off or its key removed),
checked by one sweep a second over every open stream. A cut stream ends with an in-band error.
It decides nothing else; the authenticator says who is still allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from proxy.types import Principal

SWEEP_EVERY_S = 1.0

Allowed = Callable[[Principal, "str | None"], "str | None"]  # reason the caller lost the right, or None


class StreamCut(Exception):
    """This stream was ended by the gateway: `code` and `message` go into its in-band error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Watched:
    principal: Principal
    byok_provider: str | None
    reason: str | None = None


class StreamWatch:
    def __init__(self) -> None:
        self._streams: dict[asyncio.Timeout, _Watched] = {}

    @property
    def streams(self) -> int:
        return len(self._streams)

    @contextlib.asynccontextmanager
    async def watch(self, principal: Principal, byok_provider: str | None, max_s: float) -> AsyncIterator[None]:
        """Run a stream's relay for at most `max_s`; raises StreamCut when it is ended early."""
        scope = asyncio.timeout(max_s)
        watched = _Watched(principal, byok_provider)
        try:
            async with scope:
                self._streams[scope] = watched
                try:
                    yield
                finally:
                    self._streams.pop(scope, None)
        except TimeoutError as exc:
            if not scope.expired():
                raise
            if watched.reason is not None:
                raise StreamCut("access_revoked", f"this stream was ended: {watched.reason}") from exc
            raise StreamCut("stream_too_long", f"this stream reached the gateway's limit of {max_s:g}s; "
                                               "continue in a new request") from exc

    def sweep(self, allowed: Allowed) -> int:
        """Cut every stream whose caller lost the right to it; returns how many."""
        now = asyncio.get_running_loop().time()
        cut = 0
        for scope, watched in list(self._streams.items()):
            if watched.reason is None and not scope.expired():
                reason = allowed(watched.principal, watched.byok_provider)
                if reason is not None:
                    watched.reason = reason
                    scope.reschedule(now)
                    cut += 1
        return cut


STREAM_WATCH: web.AppKey[StreamWatch] = web.AppKey("stream_watch", StreamWatch)
