"""Writing an SSE answer to the client: past `prepare()` there is no going back, so every failure
here becomes one in-band error event and the stream is closed without `[DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from proxy import appkeys
from proxy.relay.attempt import Answer
from proxy.relay.drain import DrainDeadline
from proxy.relay.events import ClientStalled, ClientWriter, StreamRelay, collect_usage, finish_tail, inband_error, pump
from proxy.relay.outgoing import GuardedStreamResponse
from proxy.relay.reply import StreamBroken
from proxy.relay.sse import EventTooLarge
from proxy.relay.stream_watch import STREAM_WATCH, StreamCut, StreamScope
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.outcome import End, record_end
from proxy.types import Outcome, RequestRecord

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_GONE = (ConnectionResetError, ConnectionError)
REQUEST_ID_HEADER = "X-Request-Id"  # the middleware sets it on unprepared answers; a stream must before prepare()
DRAIN_MESSAGE = "the gateway is restarting and this stream reached its drain deadline; retry the request"
# Commits the request's final usage row (charge and hold release) before its terminal event goes out.
Settle = Callable[[RequestRecord], Awaitable[None]]


async def start_stream(request: web.Request, headers: Mapping[str, str], record: RequestRecord) -> web.StreamResponse:
    app = request.app
    response = GuardedStreamResponse(app[appkeys.STATE].runtime.guard, app[appkeys.METRICS], status=200, headers=headers)
    # set one by one: the headers are case-insensitive, so these replace the upstream's own
    for name, value in {**SSE_HEADERS, REQUEST_ID_HEADER: record.request_id}.items():
        response.headers[name] = value
    await response.prepare(request)
    record.status = 200
    record.ttfb_s = time.monotonic() - record.t0
    return response


async def stream_answer(request: web.Request, answer: Answer, headers: Mapping[str, str], record: RequestRecord,
                        prompt_bytes: int, settle: Settle | None = None) -> web.StreamResponse:
    relay, reply, chunks = answer.relay, answer.reply, answer.chunks
    assert relay is not None and reply is not None and chunks is not None
    lane = record.route.lane if record.route else "none"
    metrics = request.app[appkeys.METRICS]
    active = metrics.child(metrics.active_streams, lane)
    active.inc()
    clean = False

    async def before_terminal() -> None:
        """The answer is complete and its usage known: the charge is durable before the client sees the end."""
        record_end(record, metrics, End.UPSTREAM_ERROR_EVENT if relay.error is not None else End.COMPLETE)
        record.usage = relay.final_usage(prompt_bytes)
        if settle is not None:
            await settle(record)

    try:
        response = await start_stream(request, headers, record)
        if answer.first_terminal_at >= 0:  # the whole answer came with its first event
            cut = answer.first_terminal_at
            if cut:
                await response.write(answer.first[:cut])
            await before_terminal()
            await response.write(answer.first[cut:])
        elif answer.first:
            await response.write(answer.first)
        try:
            stall_s = request.app[appkeys.STATE].runtime.config.limits.client_stall_timeout_s
            client = ClientWriter(response, request.transport, stall_s)
            async with _scope(request, record, answer):
                await pump(chunks, relay, client, before_terminal)
            if not relay.terminal and relay.error is None:  # an upstream in-band error already ended it
                raise StreamBroken("the upstream closed the stream before it was complete")
            clean = True
            record_end(record, metrics, End.UPSTREAM_ERROR_EVENT if relay.error is not None else End.COMPLETE)
            record.delivered = relay.terminal  # whatever the client does from now on
            if relay.terminal:
                await finish_tail(reply, chunks, relay, client)
        except (StreamBroken, EventTooLarge) as exc:
            await _upstream_broke(response, relay, record, exc, metrics)
        except StreamCut as exc:
            record_end(record, metrics, End(exc.code))  # the cut's code names its End
            await response.write(inband_error(exc.message, exc.code, responses=relay.responses,
                                              sequence_number=relay.data_events))
        except DrainDeadline:
            record_end(record, metrics, End.DRAIN_DEADLINE)
            error = inband_error(DRAIN_MESSAGE, "gateway_restarting", responses=relay.responses,
                                 sequence_number=relay.data_events)
            await response.write(error)
        await response.write_eof()
        return response
    except CLIENT_GONE:
        record_end(record, metrics, End.CLIENT_LEFT)
        return web.Response(status=499)  # never sent: the client is gone; keeps the handler contract
    except ClientStalled:
        record_end(record, metrics, End.CLIENT_STALLED)
        if request.transport is not None:
            request.transport.abort()  # it reads nothing: an in-band error could not reach it either
        return web.Response(status=499)
    except asyncio.CancelledError:
        record_end(record, metrics, End.CLIENT_LEFT)
        raise
    finally:
        active.dec()
        if relay.malformed:
            metrics.malformed_events.labels(lane).inc(relay.malformed)
        if not clean and relay.awaiting_usage and record.outcome is Outcome.CLIENT_CANCELLED:
            await collect_usage(reply, relay)  # the answer was complete: bill what the upstream produced
        if clean:
            reply.release()
        else:
            reply.close()  # a forced close: the upstream stops generating at once
        record.usage = relay.final_usage(prompt_bytes)


def _scope(request: web.Request, record: RequestRecord, answer: Answer) -> StreamScope:
    """The drain deadline, `limits.max_stream_s` and the caller's right to the stream, in one timer."""
    app = request.app
    return StreamScope(app[appkeys.DRAIN], app[STREAM_WATCH], record.principal, answer.target.byok_provider,
                       app[appkeys.STATE].runtime.config.limits.max_stream_s)


async def _upstream_broke(response: web.StreamResponse, relay: StreamRelay, record: RequestRecord,
                          exc: StreamBroken | EventTooLarge, metrics: Metrics) -> None:
    """The upstream failed mid-stream: what it owed still goes out, then one in-band error."""
    timeout = isinstance(exc, StreamBroken) and exc.timeout
    end = End.IDLE_TIMEOUT if timeout else (End.EVENT_TOO_LARGE if isinstance(exc, EventTooLarge) else End.UPSTREAM_BROKE)
    record_end(record, metrics, end)
    if isinstance(exc, EventTooLarge) and exc.forward:
        await response.write(exc.forward)
    message = exc.message if isinstance(exc, StreamBroken) else "an upstream stream event exceeded the size limit"
    code = "upstream_timeout" if timeout else "upstream_error"
    await response.write(inband_error(message, code, responses=relay.responses, sequence_number=relay.data_events))


async def synthesized_stream(request: web.Request, events: list[bytes], headers: Mapping[str, str],
                             record: RequestRecord, settle: Settle | None = None) -> web.StreamResponse:
    """A Responses stream built from a final object (for upstreams that cannot stream it); the
    final event goes out once the request's charge is committed."""
    response = await start_stream(request, headers, record)
    await response.write(b"".join(events[:-1]))
    if settle is not None:
        await settle(record)
    await response.write(events[-1])
    record.delivered = True  # the terminal event is out: a client leaving now ends nothing early
    try:
        await response.write_eof()
    except CLIENT_GONE:
        pass
    return response


async def relay_bytes(request: web.Request, answer: Answer, headers: Mapping[str, str],
                      record: RequestRecord) -> web.StreamResponse:
    """A non-JSON answer (speech audio, a transcript as text) relayed chunk by chunk as it arrives.

    Bytes have no in-band error: an upstream that breaks off mid-body (or the drain deadline,
    `limits.max_stream_s`, revoked access) gets the client's connection aborted, so the truncation shows (no chunked-encoding end), never a
    short "complete" file.
    """
    reply = answer.reply
    assert reply is not None
    metrics = request.app[appkeys.METRICS]
    response = GuardedStreamResponse(request.app[appkeys.STATE].runtime.guard, metrics, status=answer.status,
                                     headers=headers)
    response.headers[REQUEST_ID_HEADER] = record.request_id
    clean = False
    try:
        await response.prepare(request)
        record.status = answer.status
        record.ttfb_s = time.monotonic() - record.t0
        stall_s = request.app[appkeys.STATE].runtime.config.limits.client_stall_timeout_s
        client = ClientWriter(response, request.transport, stall_s)
        try:
            async with _scope(request, record, answer):
                async for chunk in reply.chunks():
                    await client.write(chunk)
        except (StreamBroken, DrainDeadline, StreamCut) as exc:
            if not isinstance(exc, StreamBroken):  # the drain, the stream limit or revoked access cut it
                end = End.CUT
            else:
                end = End.UPSTREAM_TIMED_OUT if exc.timeout else End.UPSTREAM_FAILED
            record_end(record, metrics, end)  # no in-band error exists for bytes: nothing more is counted
            if request.transport is not None:
                request.transport.abort()
            return response
        clean = True
        record.delivered = True
        await response.write_eof()
        return response
    except (*CLIENT_GONE, ClientStalled):
        record_end(record, metrics, End.CLIENT_LEFT)
        return web.Response(status=499)
    except asyncio.CancelledError:
        record_end(record, metrics, End.CLIENT_LEFT)
        raise
    finally:
        if clean:
            reply.release()
        else:
            reply.close()
