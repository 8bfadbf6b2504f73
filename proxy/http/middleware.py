"""The gateway's one middleware, for every route: request id, the request record, admission
(the global in-flight cap and refusal while stopping, http/admission), the one mapping of errors
to OpenAI-shaped JSON, and the single place a request's fate is recorded (metrics, usage row,
access log). Valid only before a response has started.

One function instead of a chain: each middleware layer was a coroutine frame, a `partial` call
and a try/finally per request (docs/benchmarks.md, issue 14).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy import appkeys, errors
from proxy.billing.cost import request_cost
from proxy.http.admission import admit
from proxy.telemetry.accesslog import access_line
from proxy.telemetry.outcome import End, end_of_error, record_end
from proxy.types import Endpoint, Phase, RequestRecord

log = logging.getLogger("okm.middleware")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Request-Id"
SETTLE_WAIT_S = 2.0  # how long a stream's terminal event waits for its final row's commit


class _RequestIds:
    """Request ids unique across processes and restarts without a syscall per request: 64 random
    bits drawn once per process, then a counter (`os.urandom` per request measured ~4 % of the
    gateway's CPU under load). An id names a request; it grants nothing, so it need not be secret."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)  # a forked child must not repeat its parent's ids

    def _renew(self) -> None:
        self.prefix = "req_" + os.urandom(8).hex()
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_IDS = _RequestIds()


def error_response(exc: errors.ProxyError, request_id: str) -> web.Response:
    """The one mapping of an error to its OpenAI-shaped JSON answer (proxied, admin and every other route)."""
    headers = {REQUEST_ID_HEADER: request_id, **exc.headers()}
    return web.Response(status=exc.status, body=exc.body_bytes(), content_type="application/json", headers=headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _IDS.next()
    endpoint = _route_endpoint(request)
    if endpoint is None:  # health, metrics, admin: no usage record
        try:
            response = await handler(request)
        except errors.ProxyError as exc:
            _count_auth_failure(request, exc)  # e.g. /v1/models with a bad key
            return error_response(exc, request_id)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:  # no such route: still an OpenAI error
            return error_response(_route_error(request, exc), request_id)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    app = request.app
    record = RequestRecord(request_id, time.time(), time.monotonic(), endpoint)
    request[appkeys.RECORD] = record
    answer: web.StreamResponse | None = None
    try:
        limiter = admit(app)  # 503 overloaded / shutting down: refused before anything else
        try:
            answer = await handler(request)
        except asyncio.CancelledError:
            if app[appkeys.DRAIN].phase is Phase.CUTTING:  # cut by the stop, not by the client
                record_end(record, app[appkeys.METRICS], End.CUT)
            raise
        finally:
            limiter.leave()
        if not answer.prepared:
            answer.headers[REQUEST_ID_HEADER] = request_id
            record.status = answer.status
        return answer
    except errors.ProxyError as exc:
        record.status = exc.status
        record_end(record, app[appkeys.METRICS], end_of_error(exc, record))
        _count_auth_failure(request, exc)
        return error_response(exc, request_id)
    except asyncio.CancelledError:
        record_end(record, app[appkeys.METRICS], End.CLIENT_LEFT)
        raise
    except Exception:  # a bug of ours: the client still gets an OpenAI error, never a traceback
        if record.status:  # a stream had started: nothing more can be said on it
            raise
        log.exception("unexpected error in request %s", request_id)
        record.status = 500
        record_end(record, app[appkeys.METRICS], End.INTERNAL_ERROR)
        return error_response(errors.ProxyError(f"internal gateway error (request {request_id})"), request_id)
    finally:
        committed = _finish(request, record)
        if committed is not None and answer is not None and not answer.prepared:
            await committed  # a held request's answer goes out once its charge is durable


def _route_error(request: web.Request, exc: web.HTTPException) -> errors.ProxyError:
    where = "".join(c if c.isprintable() else "?" for c in f"{request.method} {request.raw_path}"[:200])
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return errors.MethodNotAllowedError(
            f"{where} is not supported; allowed: {', '.join(sorted(exc.allowed_methods))}", exc.headers.get("Allow", "")
        )
    return errors.NotFoundError(f"Invalid URL ({where}); the API lives under /v1/", code="unknown_url")


def _route_endpoint(request: web.Request) -> Endpoint | None:
    info = request.match_info.route
    endpoint = getattr(info.handler, "okm_endpoint", None)
    return endpoint if isinstance(endpoint, Endpoint) else None


def _count_auth_failure(request: web.Request, exc: errors.ProxyError) -> None:
    reason = errors.auth_failure(exc)
    if reason is not None:
        request.app[appkeys.METRICS].auth_failures.labels(reason).inc()


async def settle(app: web.Application, record: RequestRecord) -> None:
    """A stream's final usage row (its charge and hold release, one transaction) committed before
    its terminal event is written, so a delivered stream is charged even if the process dies the
    moment after. Bounded: a store that does not commit within SETTLE_WAIT_S (PostgreSQL out of
    reach, SQLite locked) does not hold the stream; its end goes out and the queued row is written
    when the store allows (a write that failed is counted, as for any final row). `_finish` queues
    the row again only if something changed since."""
    if record.principal is None:
        return
    record.duration_s = time.monotonic() - record.t0
    if record.price is not None:
        record.cost_micros = request_cost(record)
    committed = app[appkeys.USAGE].finish(record, wait=True)
    assert committed is not None  # reason: wait=True always returns the future
    record.settled = _settled(record)  # queued once: kept for a retry or dropped and counted like any final row
    done, _ = await asyncio.wait((committed,), timeout=SETTLE_WAIT_S)
    if not (done and committed.result()):
        log.warning("usage row of %s not committed before its stream's end (the store is slow or unavailable)",
                    record.request_id)


def _settled(record: RequestRecord) -> tuple[object, ...]:
    return record.outcome, record.status, record.cost_micros, record.usage, record.hold_micros


def _finish(request: web.Request, record: RequestRecord) -> asyncio.Future[bool] | None:
    """Record the request once, whatever happened: cost, metrics, usage row (which releases its
    billing hold), access log. For a held request, returns the future of the row's commit."""
    record.duration_s = time.monotonic() - record.t0
    if record.status == 0:
        record.status = 499  # the client left before any status was sent (nginx's convention)
    if record.price is not None:
        record.cost_micros = request_cost(record)
    app = request.app
    app[appkeys.METRICS].observe_request(record)
    committed = None
    if record.principal is not None and (record.settled is None or record.settled != _settled(record)):
        committed = app[appkeys.USAGE].finish(record, wait=record.hold_micros > 0)
    if app[appkeys.STATE].runtime.config.log.access_log:
        app[appkeys.ACCESS_LOG].write(access_line(record))
    return committed
