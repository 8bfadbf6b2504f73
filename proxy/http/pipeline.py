"""One proxied request: authenticate, parse, route, try the lane's upstreams, answer.

Everything up to the upstream's first event is settled before the client's response starts;
after that, failures are in-band events. The middleware owns the request record's fate.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from aiohttp import web

from proxy import appkeys, errors
from proxy.billing.holds import take_hold
from proxy.http.client_request import read_client_request, upstream_request
from proxy.http.limits import (
    Ticket,
    admit_stream,
    release_shared,
    release_workspace,
    shared_request,
    shared_stream,
    workspace_admission,
)
from proxy.http.middleware import settle
from proxy.lanes import scrub
from proxy.lanes.lane import SealedLane
from proxy.lanes.routing import resolve_route
from proxy.relay import metering
from proxy.relay.attempt import Answer, AttemptFailed, AttemptSpec, attempt
from proxy.relay.responses_stream import synthesize_response_events
from proxy.relay.streaming import relay_bytes, stream_answer, synthesized_stream
from proxy.runtime import Runtime
from proxy.types import MEDIA_ENDPOINTS, AttemptResult, Endpoint, Lane, RequestRecord, Route, Secret, Usage


async def proxy_request(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    app = request.app
    record = request[appkeys.RECORD]
    record.principal = principal = await app[appkeys.AUTH].authenticate(request)
    # 429 before the body is read: slow, big and bad bodies cost their workspace
    ticket = workspace_admission(app, principal)
    try:
        await shared_request(app, ticket)
        return await _admitted(request, endpoint, ticket)
    finally:
        release_shared(app, ticket)
        release_workspace(app, ticket)


async def _admitted(request: web.Request, endpoint: Endpoint, ticket: Ticket) -> web.StreamResponse:
    """Parse and route an admitted request, then serve it from its lane."""
    app, record = request.app, request[appkeys.RECORD]
    runtime: Runtime = app[appkeys.STATE].runtime  # one config generation for the whole request
    limits = runtime.config.limits
    body = await read_client_request(request, endpoint, limits)
    record.stream = body.stream
    forbidden = scrub.find_forbidden_field(body.data, keys=body.keys)
    if forbidden is not None:
        raise errors.InvalidRequestError(
            f"'{forbidden}' is not allowed: upstream endpoints and keys come only from the gateway's config",
            param=forbidden,
        )
    record.route = route = resolve_route(body.model, runtime.table)
    lane = runtime.lanes.for_route(route)
    if body.stream:
        admit_stream(app, ticket)  # the stream flag is known now; still before any upstream call
        await shared_stream(app, ticket)
    key = None
    if route.lane is Lane.BYOK:
        assert record.principal is not None
        key = await app[appkeys.BYOK].key_for(runtime.master_keys, record.principal, route.provider or "")
    if runtime.config.billing.enabled:  # a 402 here: nothing has gone upstream
        await take_hold(app, runtime.config.billing, record, body.data, endpoint, body.prompt_bytes)
    data, form = upstream_request(body, endpoint, strict=lane.scrub, model=route.model)
    spec = AttemptSpec(
        endpoint=endpoint,
        data=data,
        form=form,
        headers=scrub.upstream_request_headers(request.headers, strict=lane.scrub),
        client_stream=body.stream,
        first_byte_timeout_s=limits.first_byte_timeout_s,
        max_event_bytes=limits.max_event_bytes,
        mask=runtime.mask_for(route.lane),
    )
    return await _serve(request, runtime, lane, spec, key, body.prompt_bytes)


async def _serve(request: web.Request, runtime: Runtime, lane: SealedLane, spec: AttemptSpec, key: Secret | None,
                 prompt_bytes: int) -> web.StreamResponse:
    """Admit the usage row, fail over to an answer, then give it to the client."""
    app, record = request.app, request[appkeys.RECORD]
    assert record.route is not None
    admission = app[appkeys.USAGE].admit(record)
    try:
        answer = await failover(app, runtime, lane, record.route, spec, key, record)
    except asyncio.CancelledError:
        if record.attempts:  # the client left while waiting, but the prompt went upstream: bill an estimate
            record.usage = metering.estimate(prompt_bytes)
        raise
    try:
        try:
            await admission  # the usage row is durable before the client sees a byte
        except BaseException:
            if answer.reply is not None:
                answer.reply.close()  # the client left before the stream reached it: stop the upstream now
            raise
        return await answer_client(request, answer, spec, record, prompt_bytes)
    finally:
        lane.end(answer.target)


async def failover(app: web.Application, runtime: Runtime, lane: SealedLane, route: Route, spec: AttemptSpec,
                   key: Secret | None, record: RequestRecord) -> Answer:
    """Try the lane's targets in order, before the first byte only; raise the client's error."""
    metrics = app[appkeys.METRICS]
    failures: list[AttemptFailed] = []
    loop = asyncio.get_running_loop()
    # One deadline bounds all attempts; each attempt's own timer is capped by it (no second timer).
    deadline = loop.time() + runtime.config.limits.request_deadline_s
    for target in lane.targets(route, key):
        if loop.time() >= deadline:
            raise errors.UpstreamTimeoutError(f"no upstream answered {route.public_model} in time")
        if failures:
            metrics.fallbacks.labels(route.lane).inc()
        record.attempts += 1
        record.upstream = target.name
        lane.begin(target)
        try:
            answer = await attempt(app[appkeys.UPSTREAM], spec, target, deadline)
        except AttemptFailed as failed:
            lane.end(target)
            lane.report(target, failed.result, failed.retry_after)
            metrics.attempts.labels(route.lane, target.name, failed.result).inc()
            if failed.result is AttemptResult.CLIENT_ERROR or target.byok_provider:
                raise failed.error from None
            failures.append(failed)
            continue
        except BaseException:
            lane.end(target)
            raise
        lane.report(target, AttemptResult.SUCCESS, None)
        metrics.add(metrics.attempts, route.lane, target.name, AttemptResult.SUCCESS)
        return answer
    if failures and loop.time() >= deadline:
        raise errors.UpstreamTimeoutError(f"no upstream answered {route.public_model} in time")
    raise lane.exhausted(route, failures)


async def answer_client(request: web.Request, answer: Answer, spec: AttemptSpec, record: RequestRecord,
                        prompt_bytes: int) -> web.StreamResponse:
    headers = scrub.client_response_headers(answer.headers, strict=answer.target.scrub,
                                            own_account=answer.target.byok_provider is not None)
    if answer.relay is not None:
        return await stream_answer(request, answer, headers, record, prompt_bytes, functools.partial(settle, request.app))
    if answer.raw:
        return await relay_bytes(request, answer, headers, record)
    assert answer.body is not None
    parsed = answer.parsed
    if spec.client_stream and spec.endpoint is Endpoint.RESPONSES:
        try:
            events = synthesize_response_events(parsed or {})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # any odd shape is the upstream's, not a 500
            raise errors.UpstreamError("the upstream's Responses answer is not a valid response object") from exc
        record.usage = _metered(parsed or {}, spec.endpoint, prompt_bytes)
        return await synthesized_stream(request, events, headers, record, functools.partial(settle, request.app))
    record.usage = _metered(parsed, spec.endpoint, prompt_bytes)
    record.status = answer.status
    record.ttfb_s = time.monotonic() - record.t0
    return web.Response(body=answer.body, status=answer.status, headers=headers)


def _metered(answer: dict[str, Any] | None, endpoint: Endpoint, prompt_bytes: int) -> Usage:
    """A JSON answer's usage; one without (or with unbelievable) usage is estimated and flagged.

    The media endpoints (moderations, images, audio, input-token counts) are the exception: an
    answer without token counts there (a moderation, a count, whisper's duration) is no token
    usage at all, so it costs only the per-request price, never an estimate."""
    usage = (answer or {}).get("usage")
    if endpoint in MEDIA_ENDPOINTS and not (isinstance(usage, dict) and
                                            ("input_tokens" in usage or "output_tokens" in usage)):
        return Usage()
    return metering.meter(usage, endpoint,
                          lambda: metering.estimate(prompt_bytes, metering.answer_output_estimate(answer, endpoint)))
