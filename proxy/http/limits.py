"""Admission control: a global cap on proxied requests in flight (refused at once with 503
`overloaded`, never queued), a per-workspace share of that cap, and per-workspace
requests-per-minute and concurrent-stream limits (429 `rate_limited`). It counts and refuses;
it does not route, authenticate or talk upstream.

Order (docs/robustness.md): the workspace share and the minute bucket apply right after
authentication, before the body is read or parsed, so a request still sending its body holds
its workspace's slot and a refused, slow or malformed request costs its own workspace.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from proxy import appkeys
from proxy.config import RateLimits
from proxy.errors import OverloadedError, WorkspaceLimitedError
from proxy.host_limits import workspace_cap
from proxy.types import Principal, ShedReason
from proxy.workspaces.auth import WorkspaceLimits

OVERLOAD_RETRY_AFTER_S = 1.0  # a shed request is cheap to retry; the cap frees up as streams end
STREAMS_RETRY_AFTER_S = 1.0  # nobody knows when a stream ends: ask for a prompt retry


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


@dataclass(slots=True)
class Ticket:
    """A workspace admission; a stream ticket holds one of the workspace's stream slots."""

    workspace_id: int
    stream: bool
    active: bool = False  # holds one of the workspace's in-flight slots
    lease: str | None = None  # its stream slot among all workers and hosts (SharedLimits)


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
        self._active: dict[int, int] = {}  # requests in flight per workspace, body phase included

    def enter(self, cap: int) -> None:
        if self.in_flight >= cap:
            raise OverloadedError(
                ShedReason.OVERLOADED,
                f"the gateway is at its limit of {cap} concurrent requests; retry in a moment",
                OVERLOAD_RETRY_AFTER_S,
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def streams(self, workspace_id: int) -> int:
        return self._streams.get(workspace_id, 0)

    def active(self, workspace_id: int) -> int:
        return self._active.get(workspace_id, 0)

    def admit(self, workspace_id: int, stream: bool, limits: EffectiveLimits) -> Ticket:
        """Take one request (and, for a stream, one stream slot) or raise WorkspaceLimitedError."""
        if stream:
            self._check_streams(workspace_id, limits)
        self.take_request(workspace_id, limits)
        ticket = Ticket(workspace_id, False)
        if stream:
            self.take_stream(ticket, limits)
        return ticket

    def enter_workspace(self, workspace_id: int, cap: int, limits: EffectiveLimits) -> Ticket:
        """Admit a request whose body is not read yet: one in-flight slot of the workspace's
        share, then one token of its minute bucket (a refusal takes neither)."""
        if self.active(workspace_id) >= cap:
            raise WorkspaceLimitedError(
                ShedReason.WORKSPACE_CONCURRENCY,
                f"this workspace already has {cap} requests in flight, its share of the gateway; "
                "retry when one has finished",
                STREAMS_RETRY_AFTER_S,
            )
        self.take_request(workspace_id, limits)
        self._active[workspace_id] = self.active(workspace_id) + 1
        return Ticket(workspace_id, False, active=True)

    def take_request(self, workspace_id: int, limits: EffectiveLimits) -> None:
        if limits.requests_per_minute is not None:
            self._take(workspace_id, limits.requests_per_minute)

    def take_stream(self, ticket: Ticket, limits: EffectiveLimits) -> None:
        """Turn an admitted request into a stream: one of the workspace's stream slots."""
        self._check_streams(ticket.workspace_id, limits)
        self._streams[ticket.workspace_id] = self.streams(ticket.workspace_id) + 1
        ticket.stream = True

    def _check_streams(self, workspace_id: int, limits: EffectiveLimits) -> None:
        cap = limits.concurrent_streams
        if cap is not None and self.streams(workspace_id) >= cap:
            raise WorkspaceLimitedError(
                ShedReason.WORKSPACE_STREAMS,
                f"this workspace already has {cap} streams open, its limit; retry when one has finished",
                STREAMS_RETRY_AFTER_S,
            )

    def release(self, ticket: Ticket) -> None:
        if ticket.active:
            ticket.active = False
            _decrement(self._active, ticket.workspace_id)
        if ticket.stream:
            ticket.stream = False
            _decrement(self._streams, ticket.workspace_id)

    def _take(self, workspace_id: int, rpm: int) -> None:
        now = self._clock()
        rate = rpm / 60.0
        bucket = self._buckets.setdefault(workspace_id, _Bucket(float(rpm), now))
        bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise WorkspaceLimitedError(
                ShedReason.WORKSPACE_RPM,
                f"this workspace is limited to {rpm} requests per minute; retry after the Retry-After delay",
                (1.0 - bucket.tokens) / rate,
            )
        bucket.tokens -= 1.0


def _decrement(counts: dict[int, int], workspace_id: int) -> None:
    left = counts.get(workspace_id, 0) - 1
    if left > 0:
        counts[workspace_id] = left
    else:
        counts.pop(workspace_id, None)


def workspace_admission(app: web.Application, principal: Principal) -> Ticket:
    """The workspace's share and minute bucket for an authenticated request whose body is not
    read yet (429 otherwise). The caller gives everything the ticket holds (its share slot, a
    stream slot from `admit_stream`) back with `release_workspace`, in a `finally`. (A plain call,
    not a context manager: a generator-based one cost ~2 us a request.)"""
    config = app[appkeys.STATE].runtime.config
    cap = workspace_cap(config.limits.max_concurrent_requests, config.limits.max_workspace_share)
    try:
        return app[appkeys.LIMITER].enter_workspace(principal.workspace_id, cap, _limits_of(app, principal.workspace_id))
    except WorkspaceLimitedError as exc:
        _count(app, exc)
        raise


def release_workspace(app: web.Application, ticket: Ticket) -> None:
    app[appkeys.LIMITER].release(ticket)


def admit_stream(app: web.Application, ticket: Ticket) -> None:
    """Once the body says it is a stream: take one of the workspace's stream slots; raises 429."""
    try:
        app[appkeys.LIMITER].take_stream(ticket, _limits_of(app, ticket.workspace_id))
    except WorkspaceLimitedError as exc:
        _count(app, exc)
        raise


async def shared_request(app: web.Application, ticket: Ticket) -> None:
    """With workers or PostgreSQL: the minute bucket every process shares (429 when empty)."""
    shared = app[appkeys.SHARED_LIMITS]
    if shared is None:  # one process with SQLite: the local bucket was the limit
        return
    rpm = _limits_of(app, ticket.workspace_id).requests_per_minute
    if rpm is None:
        return
    retry = await shared.take_request(ticket.workspace_id, rpm)
    if retry is not None:
        exc = WorkspaceLimitedError(
            ShedReason.WORKSPACE_RPM,
            f"this workspace is limited to {rpm} requests per minute; retry after the Retry-After delay",
            retry,
        )
        _count(app, exc)
        raise exc


async def shared_stream(app: web.Application, ticket: Ticket) -> None:
    """With workers or PostgreSQL: one of the workspace's stream slots among all processes."""
    shared = app[appkeys.SHARED_LIMITS]
    if shared is None:
        return
    cap = _limits_of(app, ticket.workspace_id).concurrent_streams
    if cap is None:
        return
    admitted, lease = await shared.take_stream(ticket.workspace_id, cap)
    if not admitted:
        exc = WorkspaceLimitedError(
            ShedReason.WORKSPACE_STREAMS,
            f"this workspace already has {cap} streams open, its limit; retry when one has finished",
            STREAMS_RETRY_AFTER_S,
        )
        _count(app, exc)
        raise exc
    ticket.lease = lease


def release_shared(app: web.Application, ticket: Ticket) -> None:
    shared, lease = app[appkeys.SHARED_LIMITS], ticket.lease
    if shared is not None and lease is not None:
        ticket.lease = None
        shared.release(lease)


def _limits_of(app: web.Application, workspace_id: int) -> EffectiveLimits:
    defaults = app[appkeys.STATE].runtime.config.rate_limits
    override = app[appkeys.AUTH].principal_limits(workspace_id)
    return _defaults_of(defaults) if override is None else effective_limits(defaults, override)


@functools.lru_cache(maxsize=8)  # one entry per config generation's rate_limits (a frozen dataclass)
def _defaults_of(defaults: RateLimits) -> EffectiveLimits:
    return effective_limits(defaults, None)


def _count(app: web.Application, exc: WorkspaceLimitedError) -> None:
    app[appkeys.METRICS].shed.labels(exc.reason).inc()
