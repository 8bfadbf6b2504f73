"""The admission middleware: the global in-flight cap for proxied requests, refusal of late
requests while the gateway stops, and `Connection: close` on every answer during a drain.
It sits inside `middleware.request_context`, which records whatever it refuses.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy import appkeys
from proxy.drain import DRAIN
from proxy.limits import LIMITER, Overloaded, ShedReason, release_workspace
from proxy.middleware import Handler
from proxy.pipeline import RECORD
from proxy.types import Outcome, RequestRecord


@web.middleware
async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    state = app[appkeys.STATE]
    record: RequestRecord | None = request.get(RECORD)
    if record is None:  # health, metrics, admin, model list: never shed
        return _closing(await handler(request), state.draining)
    limiter, drain = app[LIMITER], app[DRAIN]
    try:
        if drain.refusing:
            raise Overloaded(ShedReason.DRAINING, "the gateway is shutting down; retry the request")
        limiter.enter(state.runtime.config.limits.max_concurrent_requests)
    except Overloaded as exc:
        app[appkeys.METRICS].shed.labels(exc.reason).inc()
        raise
    try:
        return _closing(await handler(request), state.draining)
    except asyncio.CancelledError:
        if drain.cutting and record.outcome is Outcome.OK:
            record.outcome = Outcome.INTERRUPTED  # cut by the stop, not by the client
        raise
    finally:
        limiter.leave()
        release_workspace(request, limiter)


def _closing(response: web.StreamResponse, draining: bool) -> web.StreamResponse:
    if draining:
        response.force_close()  # the client reconnects, to an instance whose listener is open
    return response
