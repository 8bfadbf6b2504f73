"""The admission middleware: the global in-flight cap for proxied requests and refusal of late
requests while the gateway stops; plus `Connection: close` on every answer during a drain.
The middleware sits inside `middleware.request_context`, which records whatever it refuses.
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from proxy import appkeys
from proxy.errors import OverloadedError
from proxy.http.limits import OVERLOAD_RETRY_AFTER_S
from proxy.http.middleware import Handler
from proxy.telemetry.outcome import End, record_end
from proxy.types import Phase, RequestRecord, ShedReason


@web.middleware
async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    record: RequestRecord | None = request.get(appkeys.RECORD)
    if record is None:  # health, metrics, admin, model list: never shed
        return await handler(request)
    limiter, drain = app[appkeys.LIMITER], app[appkeys.DRAIN]
    try:
        if drain.phase >= Phase.CLOSED:
            raise OverloadedError(ShedReason.DRAINING, "the gateway is shutting down; retry the request",
                                  OVERLOAD_RETRY_AFTER_S)
        limiter.enter(app[appkeys.STATE].runtime.config.limits.max_concurrent_requests)
    except OverloadedError as exc:
        app[appkeys.METRICS].shed.labels(exc.reason).inc()
        raise
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if drain.phase is Phase.CUTTING:  # cut by the stop, not by the client
            record_end(record, app[appkeys.METRICS], End.CUT)
        raise
    finally:
        limiter.leave()


async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: during a drain every answer (errors included) ends its connection,
    so the client's next request opens a new one, to a listener that is still open."""
    if request.config_dict[appkeys.DRAIN].phase >= Phase.DRAINING:  # config_dict: sub-apps (the console) too
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"
