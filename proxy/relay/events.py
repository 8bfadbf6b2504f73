"""Relays an upstream SSE stream to the client event by event, as the upstream's own bytes.

`StreamRelay` is sans-I/O (chunks in, bytes to forward out, usage and terminal state kept);
`pump` is the only loop that touches sockets. Nothing here decides routing or retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.lanes import scrub
from proxy.relay import metering, sse
from proxy.relay.reply import Reply, StreamBroken
from proxy.types import Endpoint, Usage

TAIL_GRACE_S = 0.05  # how long the end of the body may trail the terminal event
USAGE_GRACE_S = 1.0  # how long a finished answer's usage chunk is awaited after the client left
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')  # a chat choice that has finished (not null)
# A usage object needs the per-event path (so do errors and CR line ends; see _first_special).
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')  # starts with a literal: re scans for it fast
_RESPONSES_ERROR_FIELDS = ("type", "code", "message", "param", "sequence_number")


class StreamRelay:
    __slots__ = ("_plain", "_replacement", "data_bytes", "data_events", "decoder", "end_types", "error", "finished",
                 "first_event_bytes", "hide_usage_chunk", "malformed", "mask", "responses", "terminal", "terminal_at",
                 "usage")

    def __init__(self, max_event_bytes: int, *, responses: bool, hide_usage_chunk: bool,
                 mask: tuple[str, ...] | None = None, end_types: frozenset[str] = frozenset()) -> None:
        self.decoder = sse.Decoder(max_event_bytes)
        self.responses = responses
        self.end_types = end_types  # typed streams (images, audio): the event types that end them
        self.hide_usage_chunk = hide_usage_chunk
        self.mask = mask  # operator lanes: account identifiers to mask in upstream error events
        self.malformed = 0  # data events whose payload is neither a JSON object nor [DONE]
        self._replacement: bytes | None = None  # a masked error event, sent instead of the upstream's bytes
        self.usage: dict[str, Any] | None = None  # the upstream's raw usage object, once one came
        self.finished = False  # a chat choice reported its finish_reason: only the usage chunk may follow
        self.data_bytes = 0  # bytes read from the upstream, for the estimate when no usage comes
        self.first_event_bytes = 0  # size of the first event: the envelope every event carries
        self.terminal = False
        self.terminal_at = -1  # where the terminal event starts in the bytes the last feed() returned, if there
        self.error: dict[str, Any] | None = None  # an upstream in-band error event, if one came
        self.data_events = 0
        self._plain = not responses and not end_types  # chat streams: plain chunks may skip the event path

    def feed(self, chunk: bytes) -> bytes:
        """Return the bytes of every event completed by `chunk` that the client should get.

        On an over-size event, raises EventTooLarge with `.forward` set to the bytes of the
        complete events that preceded it in this chunk (they are still owed to the client).
        When this chunk completes the terminal event, `terminal_at` is its offset in the result
        (the writer commits the request's charge before sending it); else -1.
        """
        self.terminal_at = -1
        self.data_bytes += len(chunk)
        if not self.first_event_bytes:
            self.first_event_bytes = chunk.find(b"\n\n") + 2 if b"\n\n" in chunk else 0
        if not self.finished and b'"finish_reason"' in chunk:
            self.finished = _FINISH.search(chunk) is not None
        if self._plain and self.decoder.idle and chunk.startswith(b"data: "):
            cut = self._plain_prefix(chunk)
            if cut == len(chunk):
                return chunk
            if cut:
                return chunk[:cut] + self._decode(chunk[cut:], cut)
        return self._decode(chunk)

    def _decode(self, chunk: bytes, base: int = 0) -> bytes:
        try:
            events = self.decoder.feed(chunk)
        except sse.EventTooLarge as exc:
            exc.forward = self._select(exc.events, base)
            raise
        return self._select(events, base) if events else b""

    def _plain_prefix(self, chunk: bytes) -> int:
        """Length of the leading run of plain chat events in `chunk`, forwarded as they are.

        Plain: whole `data: {...}` (or `data: [DONE]`) events, LF-only, with nothing to read in
        them but [DONE]. The bookkeeping is what the event path would do. Everything after the
        first usage object, error, CR or odd line (comments, event:/id:, multi-line data) and any
        unfinished event take the event path. Chat streams only; the caller checked that the
        decoder is between events.
        """
        special = _first_special(chunk)
        if special < 0 and chunk.endswith(b"}\n\n") and chunk.find(b"\n") == len(chunk) - 2 \
                and chunk.startswith(b"data: {") and len(chunk) <= self.decoder.max_bytes:
            # the common chunk: exactly one `data: {…}` event (one line, then the blank line)
            self.decoder.skip_bom_check()
            self.data_events += 1
            return len(chunk)
        end = chunk.rfind(b"\n\n", 0, len(chunk) if special < 0 else special) + 2
        if end < 2 or end > self.decoder.max_bytes:
            return 0
        prefix = chunk if end == len(chunk) else chunk[:end]
        events = prefix.count(b"\n\n")
        if prefix.count(b"\n") != 2 * events:  # one line per event
            return 0
        # Every line starts at the chunk's start or after a blank line: it is `data: {…}` or [DONE].
        objects = prefix.count(b"\n\ndata: {") + prefix.startswith(b"data: {")
        done = prefix.count(b"\n\ndata: [DONE]\n") + prefix.startswith(b"data: [DONE]\n")
        if objects + done != events or prefix.count(b"}\n\n") + done != events:
            return 0
        self.decoder.skip_bom_check()  # the chunk starts with "data: ", so it carries no BOM
        self.data_events += events
        if done and not self.terminal:
            self.terminal = True
            self.terminal_at = 0 if prefix.startswith(b"data: [DONE]\n") else prefix.find(b"\n\ndata: [DONE]\n") + 2
        return end

    def _select(self, events: list[sse.Event], base: int = 0) -> bytes:
        out: list[bytes] = []
        for event in events:
            raw = event.raw
            if event.data is not None:
                was_terminal = self.terminal
                if not self._inspect(event):
                    continue
                if self.terminal and not was_terminal:
                    self.terminal_at = base + sum(len(b) for b in out)
                if self._replacement is not None:
                    raw, self._replacement = self._replacement, None
            out.append(raw)
        return out[0] if len(out) == 1 else b"".join(out)

    def _inspect(self, event: sse.Event) -> bool:
        """Track usage, errors and the end of the stream; False drops the event."""
        self.data_events += 1
        if _malformed(event.data or ""):
            self.malformed += 1
        if sse.is_terminal(event, self.responses):
            self.terminal = True
        if self.end_types:
            usage = sse.typed_usage(event)
            if sse.typed_event_type(event) in self.end_types:
                self.terminal = True
        elif self.responses:
            usage = sse.responses_usage(event)
        else:
            usage = sse.chat_usage(event)
            if usage is not None and self.hide_usage_chunk and sse.is_usage_only_chunk(event):
                self.usage = usage
                return False
        if usage is not None:
            self.usage = usage
        error = sse.error_payload(event)
        if error is not None:
            self.error = error
            if self.mask is not None:
                self._replacement = _masked_error(event, error, self.mask)
        return True

    @property
    def awaiting_usage(self) -> bool:
        """The answer is complete but the usage that follows it has not come yet."""
        return not self.terminal and self.usage is None and self.finished

    def final_usage(self, prompt_bytes: int) -> Usage:
        """The metered usage: the upstream's own, else (e.g. the client left) an estimate, flagged.
        A typed stream (images, audio) without token counts has no token usage: its per-request price applies."""
        if self.end_types and not (self.usage and ("input_tokens" in self.usage or "output_tokens" in self.usage)):
            return Usage()
        endpoint = Endpoint.RESPONSES if self.responses else Endpoint.CHAT
        return metering.meter(self.usage, endpoint, lambda: metering.estimate(prompt_bytes, metering.stream_output_estimate(
            self.data_events, self.data_bytes, self.first_event_bytes)))


def _malformed(data: str) -> bool:
    """A cheap shape check, no JSON decode: every payload should be an object, or [DONE]."""
    if (data.startswith("{") and data.endswith("}")) or data == "[DONE]":
        return False
    data = data.strip()
    return not (data.startswith("{") and data.endswith("}")) and data != "[DONE]"


def _masked_error(event: sse.Event, payload: dict[str, Any], mask: tuple[str, ...]) -> bytes | None:
    """An upstream error event with account identifiers masked and unknown fields dropped, as
    before the first byte; None when that changes nothing (the upstream's bytes then go out)."""
    if "error" in payload:
        masked = scrub.mask_error_body(payload, mask)
    else:  # a Responses `event: error`
        masked = {k: scrub.mask_identifiers(v, mask) if isinstance(v, str) else v
                  for k, v in payload.items() if k in _RESPONSES_ERROR_FIELDS}
    return None if masked == payload else sse.format_event(orjson.dumps(masked), event=event.event)


def inband_error(message: str, code: str, *, responses: bool, sequence_number: int = 0) -> bytes:
    """The last event of a stream that failed after its first byte (no [DONE] follows)."""
    if responses:
        payload = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": sequence_number}
        return sse.format_event(orjson.dumps(payload), event="error")
    error = {"message": message, "type": "api_error", "param": None, "code": code}
    return sse.format_event(orjson.dumps({"error": error}))


def _first_special(chunk: bytes) -> int:
    """Offset of the first thing only the per-event path handles (a CR, an error, a usage
    object), or -1. Separate literal scans (one regex alternation of them is ~6x slower); the
    usage regex runs only from a `"usage"` key on (`"usage":null` is no usage object)."""
    first = chunk.find(b"\r")
    error = chunk.find(b'"error"')
    if error >= 0 and (first < 0 or error < first):
        first = error
    usage = chunk.find(b'"usage"')
    if usage >= 0 and (first < 0 or usage < first):
        found = _USAGE_OBJECT.search(chunk, usage, first if first >= 0 else len(chunk))
        if found is not None:
            first = found.start()
    return first


class ClientStalled(Exception):
    """The client stopped reading: a write waited longer than the stall limit."""


class ClientWriter:
    """Writes to the client with a bound on how long a write may wait for the client to read.

    Only a write that would fill the socket's send buffer (so aiohttp waits for the client to
    drain it) gets a timer; ordinary writes cost one size check.
    """

    __slots__ = ("_high", "_response", "_timeout_s", "_transport")

    def __init__(self, response: web.StreamResponse, transport: asyncio.Transport | None, timeout_s: float) -> None:
        self._response = response
        self._transport = transport
        self._high = transport.get_write_buffer_limits()[1] if transport is not None else 0
        self._timeout_s = timeout_s

    def write(self, data: bytes) -> Awaitable[None]:
        """The response's own write when it cannot fill the send buffer (no extra coroutine), else
        the same write under the stall bound."""
        transport = self._transport
        if transport is None or transport.get_write_buffer_size() + len(data) <= self._high:
            return self._response.write(data)
        return self._bounded(data)

    async def _bounded(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._response.write(data)
        except TimeoutError as exc:
            raise ClientStalled(f"the client read nothing for {self._timeout_s:g}s") from exc


async def pump(chunks: AsyncIterator[bytes], relay: StreamRelay, client: ClientWriter,
               before_terminal: Callable[[], Awaitable[None]] | None = None) -> None:
    """Forward every complete event as soon as it is complete; raises on upstream failure.

    Stops at the terminal event ([DONE], a final Responses event): an upstream that keeps the
    connection open after it must not hold the client's stream open (or time it out). The
    events before it go out first, then `before_terminal` runs (the request's final usage row
    is committed), then the terminal event's own bytes.
    """
    if relay.terminal:
        return
    async for chunk in chunks:
        data = relay.feed(chunk)
        if before_terminal is not None and relay.terminal_at >= 0:
            cut = relay.terminal_at
            if cut:
                await client.write(data[:cut])
            await before_terminal()
            data = data[cut:]
        if data:
            await client.write(data)
        if relay.terminal:
            return


async def finish_tail(reply: Reply, chunks: AsyncIterator[bytes], relay: StreamRelay, client: ClientWriter) -> None:
    """After the terminal event: give the end of the upstream body TAIL_GRACE_S to arrive, so the
    connection can be reused (releasing a reply whose body has not ended closes it). Anything that trails (e.g. the LF of a CRLF whose CR
    ended the last event) still goes to the client while it is there.

    The client may leave meanwhile (Codex closes at `response.completed`): that neither cuts the
    wait short nor fails the stream. Its cancellation is held until the wait is over, then
    re-raised. The read runs in its own task so that a cancellation does not end the iterator.
    When the body has already arrived whole (the usual case: the upstream sends its end with the
    terminal event), what is left is read at once, without that task or a timer.
    """
    if reply.ended:
        writing = True
        with contextlib.suppress(StreamBroken, sse.EventTooLarge):
            async for chunk in chunks:  # nothing here waits for the upstream
                data = relay.feed(chunk)
                if data and writing:
                    try:
                        await client.write(data)
                    except (ConnectionError, ClientStalled):
                        writing = False
        return
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    end = loop.time() + TAIL_GRACE_S
    cancelled, writing = False, True
    reader: asyncio.Future[bytes | None] = asyncio.ensure_future(anext(chunks, None))
    try:
        while True:
            try:
                done, _ = await asyncio.wait((reader,), timeout=max(0.0, end - loop.time()))
            except asyncio.CancelledError:
                cancelled, writing = True, False
                if task is not None:
                    task.uncancel()
                continue
            if not done:
                return
            try:
                got = reader.result()
            except (StreamBroken, sse.EventTooLarge):
                return
            if got is None:
                return
            data = relay.feed(got)
            if data and writing:
                try:
                    await client.write(data)
                except (ConnectionError, ClientStalled):
                    writing = False
            reader = asyncio.ensure_future(anext(chunks, None))
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, StreamBroken, sse.EventTooLarge):
                await reader
        if cancelled:
            raise asyncio.CancelledError


async def collect_usage(reply: Reply, relay: StreamRelay, grace_s: float = USAGE_GRACE_S) -> None:
    """The client left after the answer's last choice finished: read (never forward) the rest
    briefly, for the usage chunk the upstream is about to send. The upstream has nothing more
    to generate, so waiting for it costs nothing but this bounded moment. A fresh chunk iterator:
    the relay's own was closed by the cancellation that ended it."""
    with contextlib.suppress(TimeoutError, StreamBroken, sse.EventTooLarge):
        async with asyncio.timeout(grace_s):
            async for chunk in reply.chunks():
                relay.feed(chunk)
                if relay.usage is not None or relay.terminal:
                    return
