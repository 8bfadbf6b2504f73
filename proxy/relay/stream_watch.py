"""Bounds on a stream once it runs: a longest duration (`limits.max_stream_s`), the end of the
caller's right to it (key revoked, workspace disabled, BYOK turned off or its key removed),
checked by one sweep a second over every open stream, and the drain deadline. `StreamScope`
holds all three in one timer per stream. A cut stream ends with an in-band error. It decides
nothing else; the authenticator says who is still allowed, the drain when to cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from proxy.relay.drain import Drain, DrainDeadline
from proxy.types import Phase, Principal

SWEEP_EVERY_S = 1.0

Allowed = Callable[[Principal, "str | None"], "str | None"]  # reason the caller lost the right, or None


class StreamCut(Exception):
    """This stream was ended by the gateway: `code` and `message` go into its in-band error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StreamWatch:
    def __init__(self) -> None:
        self._streams: dict[asyncio.Timeout, StreamScope] = {}

    @property
    def streams(self) -> int:
        return len(self._streams)

    def sweep(self, allowed: Allowed) -> int:
        """Cut every stream whose caller lost the right to it; returns how many."""
        now = asyncio.get_running_loop().time()
        cut = 0
        for scope, watched in list(self._streams.items()):
            if watched.reason is None and watched.principal is not None and not scope.expired():
                reason = allowed(watched.principal, watched.byok_provider)
                if reason is not None:
                    watched.reason = reason
                    scope.reschedule(now)
                    cut += 1
        return cut


class StreamScope:
    """One relayed stream's bounds in one timeout scope (`async with StreamScope(...)`): the
    drain deadline (raises DrainDeadline) and, for a caller with a principal, `max_s` and the
    right to the stream (raise StreamCut). One slotted object and one timer per stream: no
    generator-based context managers, no second timeout scope nested for the drain."""

    __slots__ = ("_drain", "_max_s", "_scope", "_watch", "byok_provider", "principal", "reason")

    def __init__(self, drain: Drain, watch: StreamWatch | None, principal: Principal | None,
                 byok_provider: str | None, max_s: float) -> None:
        self._drain = drain
        self._watch = watch if principal is not None else None
        self._max_s = max_s
        self._scope: asyncio.Timeout | None = None
        self.principal = principal
        self.byok_provider = byok_provider
        self.reason: str | None = None  # set by StreamWatch.sweep: why the caller lost the right

    async def __aenter__(self) -> None:
        if self._drain.phase is Phase.CUTTING:
            when: float | None = 0.0  # started after the cut: cut at once
        else:
            when = asyncio.get_running_loop().time() + self._max_s if self._watch is not None else None
        scope = self._scope = asyncio.timeout_at(when)
        await scope.__aenter__()
        self._drain.enter(scope)
        if self._watch is not None:
            self._watch._streams[scope] = self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        scope = self._scope
        assert scope is not None, "StreamScope exited before it was entered"
        self._drain.leave(scope)
        if self._watch is not None:
            self._watch._streams.pop(scope, None)
        try:
            await scope.__aexit__(exc_type, exc, tb)
        except TimeoutError as err:
            if not scope.expired():
                raise
            if self.reason is not None:
                raise StreamCut("access_revoked", f"this stream was ended: {self.reason}") from err
            if self._drain.phase is Phase.CUTTING:
                raise DrainDeadline() from err
            raise StreamCut("stream_too_long", f"this stream reached the gateway's limit of {self._max_s:g}s; "
                                               "continue in a new request") from err


STREAM_WATCH: web.AppKey[StreamWatch] = web.AppKey("stream_watch", StreamWatch)
