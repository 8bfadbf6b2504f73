"""Admission control: a global cap on proxied requests in flight (refused at once with 503
`overloaded`, never queued) and per-workspace requests-per-minute and concurrent-stream limits
(429 `rate_limited`). It counts and refuses; it does not route, authenticate or talk upstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from proxy import appkeys
from proxy.config import RateLimits
from proxy.errors import OverloadedError, RateLimitedError
from proxy.types import RequestRecord
from proxy.workspaces.auth import WorkspaceLimits

OVERLOAD_RETRY_AFTER_S = 1.0  # a shed request is cheap to retry; the cap frees up as streams end
STREAMS_RETRY_AFTER_S = 1.0  # nobody knows when a stream ends: ask for a prompt retry


class ShedReason(StrEnum):
    """Why a request was refused before any upstream call (label of okm_requests_shed_total)."""

    OVERLOADED = "overloaded"  # limits.max_concurrent_requests reached
    DRAINING = "draining"  # the listener is closed for a stop; the request came on a kept-alive connection
    WORKSPACE_RPM = "workspace_rpm"
    WORKSPACE_STREAMS = "workspace_streams"


class Overloaded(OverloadedError):
    def __init__(self, reason: ShedReason, message: str) -> None:
        super().__init__(message, retry_after=OVERLOAD_RETRY_AFTER_S)
        self.reason = reason


class WorkspaceLimited(RateLimitedError):
    def __init__(self, reason: ShedReason, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    requests_per_minute: int | None  # None: unlimited
    concurrent_streams: int | None


def effective_limits(defaults: RateLimits, override: WorkspaceLimits | None) -> EffectiveLimits:
    """The workspace's own limits where the store sets them, else the config's `rate_limits`."""
    rpm, streams = defaults.requests_per_minute, defaults.concurrent_streams
    if override is not None:
        rpm = override.rpm_limit if override.rpm_limit is not None else rpm
        streams = override.stream_limit if override.stream_limit is not None else streams
    return EffectiveLimits(rpm, streams)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class Ticket:
    """A workspace admission; a stream ticket holds one of the workspace's stream slots."""

    workspace_id: int
    stream: bool


class Limiter:
    """In-flight count and per-workspace buckets for one process.

    Requests per minute is a token bucket per workspace: it holds up to N requests and refills
    at N per minute, so a workspace may burst N at once and sustains N a minute. Retry-After is
    the time until the next token. Refused requests take no token.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.in_flight = 0
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._streams: dict[int, int] = {}

    def enter(self, cap: int) -> None:
        if self.in_flight >= cap:
            raise Overloaded(
                ShedReason.OVERLOADED,
                f"the gateway is at its limit of {cap} concurrent requests; retry in a moment",
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def streams(self, workspace_id: int) -> int:
        return self._streams.get(workspace_id, 0)

    def admit(self, workspace_id: int, stream: bool, limits: EffectiveLimits) -> Ticket:
        """Take one request (and, for a stream, one stream slot) or raise WorkspaceLimited."""
        cap = limits.concurrent_streams
        if stream and cap is not None and self.streams(workspace_id) >= cap:
            raise WorkspaceLimited(
                ShedReason.WORKSPACE_STREAMS,
                f"this workspace already has {cap} streams open, its limit; retry when one has finished",
                STREAMS_RETRY_AFTER_S,
            )
        if limits.requests_per_minute is not None:
            self._take(workspace_id, limits.requests_per_minute)
        if stream:
            self._streams[workspace_id] = self.streams(workspace_id) + 1
        return Ticket(workspace_id, stream)

    def release(self, ticket: Ticket) -> None:
        if not ticket.stream:
            return
        left = self.streams(ticket.workspace_id) - 1
        if left > 0:
            self._streams[ticket.workspace_id] = left
        else:
            self._streams.pop(ticket.workspace_id, None)

    def _take(self, workspace_id: int, rpm: int) -> None:
        now = self._clock()
        rate = rpm / 60.0
        bucket = self._buckets.setdefault(workspace_id, _Bucket(float(rpm), now))
        bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise WorkspaceLimited(
                ShedReason.WORKSPACE_RPM,
                f"this workspace is limited to {rpm} requests per minute; retry after the Retry-After delay",
                (1.0 - bucket.tokens) / rate,
            )
        bucket.tokens -= 1.0


LIMITER: web.AppKey[Limiter] = web.AppKey("limiter", Limiter)
_TICKET: web.RequestKey[Ticket] = web.RequestKey("okm_workspace_ticket", Ticket)


def admit_workspace(request: web.Request, record: RequestRecord) -> None:
    """Apply the caller's workspace limits to an authenticated, parsed request; raises 429.

    Called by the pipeline once the principal and the stream flag are known, before any
    upstream call; the admission middleware gives the stream slot back when the request ends.
    """
    app = request.app
    principal = record.principal
    assert principal is not None, "admit_workspace runs after authentication"
    defaults = app[appkeys.STATE].runtime.config.rate_limits
    limits = effective_limits(defaults, app[appkeys.AUTH].principal_limits(principal.workspace_id))
    try:
        request[_TICKET] = app[LIMITER].admit(principal.workspace_id, record.stream, limits)
    except WorkspaceLimited as exc:
        app[appkeys.METRICS].shed.labels(exc.reason).inc()
        raise


def release_workspace(request: web.Request, limiter: Limiter) -> None:
    """Give back the stream slot `admit_workspace` took, if any (once per request)."""
    ticket = request.pop(_TICKET, None)
    if ticket is not None:
        limiter.release(ticket)
