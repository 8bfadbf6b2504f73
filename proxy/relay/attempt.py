"""One upstream attempt, settled before anything reaches the client, and failover across attempts.

An attempt ends either in an `Answer` the client may get (a complete JSON body, or a stream whose
first event has arrived) or in a classified failure. Retries stay inside the lane's own targets.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy import errors
from proxy.lanes import replay, scrub
from proxy.relay.events import StreamRelay
from proxy.relay.multipart import FormBody
from proxy.relay.reply import Reply, StreamBroken
from proxy.relay.sse import EventTooLarge
from proxy.relay.upstream import UpstreamClient, UpstreamFailure
from proxy.types import BYTES_ENDPOINTS, AttemptResult, Endpoint, UpstreamTarget

MAX_JSON_ANSWER_BYTES = 64 * 1024 * 1024
MAX_ERROR_BODY_BYTES = 256 * 1024
# Fields only valid with "stream": true; a non-stream upstream call that kept them would be refused
# ("The 'stream_options' parameter is only allowed when 'stream' is enabled").
STREAM_ONLY_FIELDS = ("stream_options",)
JSON_CONTENT_TYPE = "application/json"
# Typed streams (no [DONE]): the event types that end them.
STREAM_END_TYPES = {
    Endpoint.IMAGES_GENERATIONS: frozenset({"image_generation.completed"}),
    Endpoint.IMAGES_EDITS: frozenset({"image_edit.completed"}),
    Endpoint.AUDIO_TRANSCRIPTIONS: frozenset({"transcript.text.done"}),
    Endpoint.AUDIO_SPEECH: frozenset({"speech.audio.done"}),
}


@dataclass(slots=True)
class Answer:
    target: UpstreamTarget
    status: int
    headers: Mapping[str, str]
    body: bytes | None = None  # JSON answers: the whole body ...
    parsed: dict[str, Any] | None = None  # ... and that body parsed (read for usage)
    reply: Reply | None = None  # streams: the open reply ...
    chunks: AsyncIterator[bytes] | None = None  # ... its chunk iterator, already advanced
    first: bytes = b""  # ... and the events read before committing
    first_terminal_at: int = -1  # where the terminal event starts in `first`, if it is already there
    relay: StreamRelay | None = None
    raw: bool = False  # a non-JSON answer (audio, text transcripts): `reply` is relayed byte for byte


class AttemptFailed(Exception):
    def __init__(self, result: AttemptResult, error: errors.ProxyError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.result = result
        self.error = error
        self.retry_after = retry_after


@dataclass(slots=True)
class AttemptSpec:
    """What every attempt of one request shares."""

    endpoint: Endpoint
    data: dict[str, Any]  # the (scrubbed) client body; `model` is rewritten per target
    headers: dict[str, str]
    client_stream: bool
    first_byte_timeout_s: float
    max_event_bytes: int
    mask: tuple[str, ...] | None  # None: pass upstream errors unmasked (the tenant's own provider)
    form: FormBody | None = None  # multipart endpoints: the (scrubbed) form instead of `data`


def upstream_body(spec: AttemptSpec, target: UpstreamTarget) -> tuple[bytes, bool, bool]:
    """The body for one target, whether the upstream call streams, and whether to hide the usage chunk."""
    stream = spec.client_stream
    if spec.form is not None:
        return spec.form.encode(target.model), stream, False
    data = dict(spec.data)
    data["model"] = target.model
    hide_usage = False
    if stream and spec.endpoint is Endpoint.RESPONSES and not target.responses_stream:
        data["stream"] = False
        stream = False
        for field in STREAM_ONLY_FIELDS:
            data.pop(field, None)
    elif stream and spec.endpoint is Endpoint.CHAT:
        options = dict(data.get("stream_options") or {})
        if not options.get("include_usage"):
            options["include_usage"] = True
            data["stream_options"] = options
            hide_usage = True
    return orjson.dumps(data), stream, hide_usage


async def attempt(client: UpstreamClient, spec: AttemptSpec, target: UpstreamTarget,
                  request_deadline: float = float("inf")) -> Answer:
    body, stream, hide_usage = upstream_body(spec, target)
    # One first-byte budget for the attempt (headers and, for streams, the first event), never
    # past the request's own deadline.
    deadline = min(asyncio.get_running_loop().time() + spec.first_byte_timeout_s, request_deadline)
    content_type = spec.form.content_type if spec.form is not None else JSON_CONTENT_TYPE
    try:
        reply = await client.send(target, spec.endpoint, body, spec.headers, stream, deadline, content_type)
    except UpstreamFailure as exc:
        cls = errors.UpstreamTimeoutError if exc.result is AttemptResult.TIMEOUT else errors.UpstreamError
        raise AttemptFailed(exc.result, cls(f"upstream attempt failed: {exc.message}")) from exc
    try:
        if reply.status >= 300 or reply.status < 200:  # a redirect (and its Location) is never relayed
            raise await _failure(reply, target, spec)
        if stream and reply.content_type == "text/event-stream":
            return await _first_events(reply, target, spec, hide_usage, deadline)
        if stream:
            raise await _failure(reply, target, spec)  # a JSON (error) answer to a stream request
        if spec.endpoint in BYTES_ENDPOINTS and reply.content_type != JSON_CONTENT_TYPE:
            return Answer(target, reply.status, reply.headers, reply=reply, raw=True)  # relayed as it arrives
        raw = await reply.read(MAX_JSON_ANSWER_BYTES)
    except StreamBroken as exc:
        reply.close()
        result = AttemptResult.TIMEOUT if exc.timeout else AttemptResult.SERVER_ERROR
        cls = errors.UpstreamTimeoutError if exc.timeout else errors.UpstreamError
        raise AttemptFailed(result, cls(f"upstream answer broke off: {exc.message}")) from exc
    except BaseException:
        reply.close()
        raise
    reply.release()
    parsed = json_object(raw)
    if parsed is None:  # e.g. a web page from a misconfigured base URL: never relay it as a 200
        error = errors.UpstreamError(f"the upstream answered HTTP {reply.status} with a body that is not a JSON object")
        raise AttemptFailed(AttemptResult.SERVER_ERROR, error)
    return Answer(target, reply.status, reply.headers, body=raw, parsed=parsed)


async def _first_events(reply: Reply, target: UpstreamTarget, spec: AttemptSpec, hide_usage: bool,
                        deadline: float) -> Answer:
    relay = StreamRelay(spec.max_event_bytes, responses=spec.endpoint is Endpoint.RESPONSES, hide_usage_chunk=hide_usage,
                        mask=spec.mask, end_types=STREAM_END_TYPES.get(spec.endpoint, frozenset()))
    chunks = reply.chunks().__aiter__()
    first: list[bytes] = []
    try:
        async with asyncio.timeout_at(deadline):
            while relay.data_events == 0:
                first.append(relay.feed(await anext(chunks)))
    except StopAsyncIteration as exc:
        raise AttemptFailed(AttemptResult.SERVER_ERROR, errors.UpstreamError("upstream closed the stream before any event")) from exc
    except TimeoutError as exc:
        raise AttemptFailed(
            AttemptResult.TIMEOUT, errors.UpstreamTimeoutError(f"no stream event within {spec.first_byte_timeout_s:g}s")
        ) from exc
    except EventTooLarge as exc:
        raise AttemptFailed(AttemptResult.SERVER_ERROR, errors.UpstreamError("upstream stream event is too large")) from exc
    if relay.error is not None and relay.data_events == 1:
        raise AttemptFailed(AttemptResult.SERVER_ERROR, _status_error(502, _inband_error_body(relay.error), spec, None))
    joined = b"".join(first)
    # The loop ends with the feed that completed the first event: a terminal event can only be in that one.
    terminal_at = len(joined) - len(first[-1]) + relay.terminal_at if relay.terminal_at >= 0 else -1
    return Answer(target, reply.status, reply.headers, reply=reply, chunks=chunks, first=joined, relay=relay,
                  first_terminal_at=terminal_at)


def _inband_error_body(payload: dict[str, Any]) -> dict[str, Any]:
    """An upstream's in-band error event as an OpenAI error body: chat-style `{"error": {...}}` as
    it is; a bare string or a Responses-style `{"type": "error", "message": ...}` event wrapped."""
    inner = payload.get("error")
    if isinstance(inner, dict):
        return payload
    source = {"message": inner} if isinstance(inner, str) else payload
    message = source.get("message")
    return {"error": {"message": message if isinstance(message, str) and message else "upstream error",
                      "type": "api_error", "param": source.get("param"), "code": source.get("code")}}


async def _failure(reply: Reply, target: UpstreamTarget, spec: AttemptSpec) -> AttemptFailed:
    """Classify an error answer (read and released here) into a retry decision and a client error."""
    status = reply.status
    retry_after = parse_retry_after(reply.headers.get("Retry-After"))
    try:
        raw = await reply.read(MAX_ERROR_BODY_BYTES)
    except StreamBroken:
        raw = b""
    reply.close()
    body = json_object(raw)
    if status == 429:
        result = AttemptResult.RATE_LIMITED
    elif status == 403 and content_refusal(body):
        result = AttemptResult.CLIENT_ERROR  # depends on this request's content, not on the account
    elif status in (401, 403):
        result = AttemptResult.AUTH_ERROR
    elif status >= 500 or status == 408 or status < 400:
        result = AttemptResult.SERVER_ERROR
    else:
        result = AttemptResult.CLIENT_ERROR
    if result is AttemptResult.AUTH_ERROR and target.byok_provider:
        error: errors.ProxyError = errors.ByokUpstreamAuthError(
            f"your {target.byok_provider} key was rejected by the provider (HTTP {status}); "
            f"store a valid key with `byok set` or the admin API"
        )
        return AttemptFailed(result, error)
    if result is AttemptResult.AUTH_ERROR:
        error = errors.UpstreamError("the upstream refused the gateway's operator credentials")
        return AttemptFailed(result, error)
    if body is None or not isinstance(body.get("error"), dict):
        what = "a stream request with JSON" if status < 400 else f"HTTP {status} with a body that is not an OpenAI error"
        return AttemptFailed(result, errors.UpstreamError(f"the upstream answered {what}"), retry_after)
    if status == 404 and target.scrub and spec.endpoint is Endpoint.RESPONSES and replay.is_item_not_found(
            str(body["error"].get("message"))):
        return AttemptFailed(result, replay.item_not_found_error())  # never the pool's 404 about an item
    passed = scrub.error_response_headers(reply.headers, own_account=target.byok_provider is not None)
    error = _status_error(status if status >= 400 else 502, body, spec, retry_after, passed)
    return AttemptFailed(result, error, retry_after)


def _status_error(status: int, body: dict[str, Any], spec: AttemptSpec, retry_after: float | None,
                  passed_headers: dict[str, str] | None = None) -> errors.ProxyError:
    if spec.mask is not None:
        body = scrub.mask_error_body(body, spec.mask)
    return errors.UpstreamStatusError(status, body, retry_after, passed_headers)


# A 403 about the request's content (a moderation or safety refusal) rather than the account.
_CONTENT_REFUSAL = re.compile(
    r"moderation|content[ _-]?(?:policy|filter|management)|flagged|safety[ _-]?(?:system|filter|policy)"
    r"|violat\w*\W+(?:our|the)\W+(?:usage\W+)?polic|harmful|unsafe[ _-]content",
    re.IGNORECASE,
)


def content_refusal(body: dict[str, Any] | None) -> bool:
    """An upstream 403 whose error says the content was refused: it must not count against the
    account's health (one request could otherwise take accounts out), and goes to the client."""
    error = body.get("error") if body is not None else None
    if not isinstance(error, dict):
        return False
    text = " ".join(str(error.get(k) or "") for k in ("code", "type", "message"))[:4096]
    return bool(_CONTENT_REFUSAL.search(text))


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: rare from LLM APIs; the lane's default cool-down applies
    return seconds if 0 <= seconds < 86400 else None

