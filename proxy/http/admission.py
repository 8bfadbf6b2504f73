"""The admission middleware: the global in-flight cap for proxied requests and refusal of late
requests while the gateway stops; plus `Connection: close` on every answer during a drain.
The middleware sits inside `middleware.request_context`, which records whatever it refuses.
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from proxy import appkeys
from proxy.http.limits import LIMITER, Overloaded, ShedReason, release_workspace
from proxy.http.middleware import Handler
from proxy.http.pipeline import RECORD
from proxy.relay.drain import DRAIN
from proxy.types import Outcome, RequestRecord


@web.middleware
async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    state = app[appkeys.STATE]
    record: RequestRecord | None = request.get(RECORD)
    if record is None:  # health, metrics, admin, model list: never shed
        return await handler(request)
    limiter, drain = app[LIMITER], app[DRAIN]
    try:
        if drain.refusing:
            raise Overloaded(ShedReason.DRAINING, "the gateway is shutting down; retry the request")
        limiter.enter(state.runtime.config.limits.max_concurrent_requests)
    except Overloaded as exc:
        app[appkeys.METRICS].shed.labels(exc.reason).inc()
        raise
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if drain.cutting and record.outcome is Outcome.OK:
            record.outcome = Outcome.INTERRUPTED  # cut by the stop, not by the client
        raise
    finally:
        limiter.leave()
        release_workspace(request, limiter)


async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: during a drain every answer (errors included) ends its connection,
    so the client's next request opens a new one, to a listener that is still open."""
    if request.config_dict[appkeys.STATE].draining:  # config_dict: sub-apps (the console) too
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"
