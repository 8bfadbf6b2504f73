"""Admission: the global in-flight cap for proxied requests and refusal of late requests while
the gateway stops (called by `middleware.request_context`, which records whatever it refuses);
plus `Connection: close` on every answer during a drain.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from proxy import appkeys
from proxy.errors import OverloadedError
from proxy.http.limits import OVERLOAD_RETRY_AFTER_S, Limiter
from proxy.relay.drain import Drain
from proxy.types import Phase, ShedReason


def admit(app: web.Application) -> Limiter:
    """Take one of the global in-flight slots (the caller gives it back with `leave()`), or raise
    OverloadedError (counted in okm_requests_shed_total) while stopping or at the cap."""
    limiter = app[appkeys.LIMITER]
    try:
        if app[appkeys.DRAIN].phase >= Phase.CLOSED:
            raise OverloadedError(ShedReason.DRAINING, "the gateway is shutting down; retry the request",
                                  OVERLOAD_RETRY_AFTER_S)
        limiter.enter(app[appkeys.STATE].runtime.config.limits.max_concurrent_requests)
    except OverloadedError as exc:
        app[appkeys.METRICS].shed.labels(exc.reason).inc()
        raise
    return limiter


def close_when_draining(drain: Drain, response: web.StreamResponse) -> None:
    """Part of the app's on_response_prepare hook (app.before_answer): during a drain every answer (errors included) ends its connection,
    so the client's next request opens a new one, to a listener that is still open."""
    if drain.phase >= Phase.DRAINING:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"
