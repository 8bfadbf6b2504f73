"""Typed keys for everything the application and each request hold; no module keeps state of its own.

The value types are imported for the type checker only, so at run time this module depends on
nothing of the gateway's and every layer may use it without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from proxy.http.limits import Limiter
    from proxy.relay.drain import Drain
    from proxy.relay.upstream import UpstreamClient
    from proxy.runtime import State
    from proxy.store import Store
    from proxy.store.usage_writer import UsageRecorder
    from proxy.telemetry.accesslog import AccessLog
    from proxy.telemetry.metrics import Metrics
    from proxy.types import RequestRecord
    from proxy.workspaces.auth import Authenticator
    from proxy.workspaces.byok import ByokVault
    from proxy.workspaces.shared_limits import SharedLimits

# Set in app.build_app and its cleanup contexts.
STATE: web.AppKey[State] = web.AppKey("state")  # the current Runtime, swapped on reload
DRAIN: web.AppKey[Drain] = web.AppKey("drain")  # the process phase and the streams a stop may cut
STORE: web.AppKey[Store] = web.AppKey("store")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
USAGE: web.AppKey[UsageRecorder] = web.AppKey("usage")
UPSTREAM: web.AppKey[UpstreamClient] = web.AppKey("upstream")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
BYOK: web.AppKey[ByokVault] = web.AppKey("byok")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
SHARED_LIMITS: web.AppKey[SharedLimits | None] = web.AppKey("shared_limits")  # None: one process, local limits

# Set by middleware.request_context on each proxied request.
RECORD: web.RequestKey[RequestRecord] = web.RequestKey("okm_record")
