"""Incremental server-sent-events decoder (bytes in, events out) and the usage/terminal probes the relay needs.

Pure and sans-I/O: it never re-serializes an upstream event; callers forward `Event.raw` untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A

# Markers searched in raw bytes before any JSON parse. A JSON string cannot hold an unescaped quote,
# so `"usage"` followed by `:` can only be an object key, never text inside a string value.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_ERROR_VALUE = re.compile(rb'"error"\s*:\s*[{"]')
_TYPE_VALUE = re.compile(rb'"type"\s*:\s*"(response\.(?:completed|incomplete|failed)|error)"')

RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
RESPONSES_ERROR = "error"
RESPONSES_TERMINAL = RESPONSES_FINAL | {RESPONSES_ERROR}


class EventTooLarge(Exception):
    """A pending event grew past the decoder's cap; the stream cannot be resumed.

    `events` holds the complete events decoded earlier in the same `feed()` call, so they can
    still be forwarded before the stream is ended with an error.
    """

    def __init__(self, limit: int, events: list[Event] | None = None) -> None:
        super().__init__(f"server-sent event larger than {limit} bytes")
        self.limit = limit
        self.events = events or []
        self.forward = b""  # set by StreamRelay.feed: those events' bytes, as the client gets them


@dataclass(frozen=True, slots=True)
class Event:
    """One event block. `raw` is its exact bytes, up to and including the blank line that ends it.

    Every blank line ends a block, so blank lines between blocks (and the LF of a CRLF whose CR
    ended the previous block in an earlier chunk) come out as events whose fields are all None.
    Comment-only blocks (`: ping`) also have all fields None. Both are forwarded like any other.
    `id` is this block's own `id:` field, not the WHATWG last-event-ID carried across blocks.
    """

    raw: bytes
    event: str | None = None
    data: str | None = None
    id: str | None = None

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"


_STRAY_LF = Event(b"\n")


class Decoder:
    """Feed it chunks as they arrive; get back only complete events. Like httpx's LineDecoder."""

    __slots__ = ("_buf", "_data", "_event", "_id", "_line_start", "_max", "_search_from", "_skip_lf", "_started",
                 "max_bytes")

    def __init__(self, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self._max = self.max_bytes = max_event_bytes
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()  # bytes of the pending event, from its first byte
        self._line_start = 0  # offset in _buf of the first byte of the unfinished line
        self._search_from = 0  # offset in _buf where the next line-end search starts
        self._skip_lf = False  # the last chunk ended in CR: an LF up next belongs to that line end
        self._started = False  # BOM check done
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self._id: bytes | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._buf:
            self._buf += chunk
            data: bytes | bytearray = self._buf
        else:
            data = chunk
        events: list[Event] = []
        start = 0
        if not self._started:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._buf = bytearray(data)  # maybe a split BOM: wait for more bytes
                return events
            self._started = True
            if data.startswith(_BOM):
                self._line_start = self._search_from = len(_BOM)
        if self._skip_lf:
            self._skip_lf = False
            if data[self._line_start] == _LF:
                if self._line_start == 0:  # the CR ended a block that has already gone out
                    events.append(_STRAY_LF)
                    start = 1
                self._line_start += 1
                self._search_from = self._line_start
        start = self._scan(data, start, events)
        if len(data) - start > self._max:
            self._reset()
            raise EventTooLarge(self._max, events)
        if start == len(data):
            self._buf = bytearray()
        elif data is self._buf:
            del self._buf[:start]
        else:
            self._buf = bytearray(data[start:])
        self._line_start -= start
        self._search_from = len(self._buf)
        return events

    def _scan(self, data: bytes | bytearray, start: int, events: list[Event]) -> int:
        """Parse every complete line after `_search_from`; return the offset where the pending event starts."""
        n = len(data)
        pos = self._line_start
        cr = data.find(b"\r", self._search_from)
        lf = data.find(b"\n", self._search_from)
        while cr >= 0 or lf >= 0:
            if lf >= 0 and (cr < 0 or lf < cr):
                eol, nxt = lf, lf + 1
            elif cr + 1 < n:
                eol, nxt = cr, (cr + 2 if data[cr + 1] == _LF else cr + 1)
            else:
                eol, nxt = cr, cr + 1
                self._skip_lf = True
            if eol == pos:
                if nxt - start > self._max:
                    self._reset()
                    raise EventTooLarge(self._max, events)
                events.append(self._dispatch(bytes(data[start:nxt])))
                start = nxt
            else:
                self._field(bytes(data[pos:eol]))
            pos = nxt
            if 0 <= lf < pos:
                lf = data.find(b"\n", pos)
            if 0 <= cr < pos:
                cr = data.find(b"\r", pos)
        self._line_start = pos
        return start

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:
            return  # comment
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            skip = 2 if line[colon + 1 : colon + 2] == b" " else 1
            value = line[colon + skip :]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\0" not in value:
            self._id = value
        # `retry:` and unknown fields are ignored, as WHATWG says; they stay in raw.

    def _dispatch(self, raw: bytes) -> Event:
        event = Event(
            raw,
            None if self._event is None else self._event.decode("utf-8", "replace"),
            b"\n".join(self._data).decode("utf-8", "replace") if self._data else None,
            None if self._id is None else self._id.decode("utf-8", "replace"),
        )
        self._event = self._id = None
        self._data = []
        return event

    @property
    def idle(self) -> bool:
        """True between events: nothing buffered and no CR awaiting its LF."""
        return not self._buf and not self._skip_lf

    def skip_bom_check(self) -> None:
        """The caller consumed the stream's first bytes itself, and they were no BOM."""
        self._started = True

    def close(self) -> bytes:
        """At EOF: the bytes of an unterminated event (b"" if none), for diagnosis. Resets the decoder."""
        leftover = bytes(self._buf)
        self._reset()
        return leftover


def _json_object(event: Event) -> dict[str, Any] | None:
    if event.data is None:
        return None
    try:
        obj = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def chat_usage(event: Event) -> dict[str, Any] | None:
    """The raw "usage" object of a chat/completions or completions chunk (proxy.relay.metering reads it)."""
    if not _USAGE_OBJECT.search(event.raw):
        return None
    obj = _json_object(event)
    usage = None if obj is None else obj.get("usage")
    return usage if isinstance(usage, dict) else None


def is_usage_only_chunk(event: Event) -> bool:
    """The extra chunk `stream_options.include_usage` adds: `"choices": []` and a usage object."""
    if not (_EMPTY_CHOICES.search(event.raw) and _USAGE_OBJECT.search(event.raw)):
        return False
    obj = _json_object(event)
    return obj is not None and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


def responses_event_type(event: Event) -> str | None:
    """The Responses event type: the `event:` field, else (for upstreams that omit it) a terminal `type`."""
    if event.event is not None:
        return event.event
    if not _TYPE_VALUE.search(event.raw):
        return None
    obj = _json_object(event)
    kind = None if obj is None else obj.get("type")
    return kind if isinstance(kind, str) else None


def responses_usage(event: Event) -> dict[str, Any] | None:
    """The raw `response.usage` of response.completed / response.incomplete / response.failed."""
    if not _USAGE_OBJECT.search(event.raw) or responses_event_type(event) not in RESPONSES_FINAL:
        return None
    obj = _json_object(event)
    response = None if obj is None else obj.get("response")
    if not isinstance(response, dict):
        return None
    usage = response.get("usage")
    return usage if isinstance(usage, dict) else None


def typed_event_type(event: Event) -> str | None:
    """The type of an event in a typed stream (images, audio): the `event:` field, else the JSON `type`."""
    if event.event is not None:
        return event.event
    obj = _json_object(event)
    kind = None if obj is None else obj.get("type")
    return kind if isinstance(kind, str) else None


def typed_usage(event: Event) -> dict[str, Any] | None:
    """The raw "usage" of a typed stream's event (`image_generation.completed`, `transcript.text.done`, ...)."""
    if not _USAGE_OBJECT.search(event.raw):
        return None
    obj = _json_object(event)
    usage = None if obj is None else obj.get("usage")
    return usage if isinstance(usage, dict) else None


def error_payload(event: Event) -> dict[str, Any] | None:
    """The whole parsed payload of an in-band error: a chat-style `{"error": …}` or a Responses `event: error`."""
    if responses_event_type(event) == RESPONSES_ERROR:
        return _json_object(event)
    if not _ERROR_VALUE.search(event.raw):
        return None
    obj = _json_object(event)
    return obj if obj is not None and obj.get("error") is not None else None


def is_terminal(event: Event, responses: bool) -> bool:
    """Chat-style streams end with `[DONE]`; Responses streams with a final lifecycle event or `error`."""
    if not responses:
        return event.is_done
    return responses_event_type(event) in RESPONSES_TERMINAL


def format_event(data: bytes, event: str | None = None) -> bytes:
    """Our own event bytes (in-band errors, synthesized streams); `data` is one line of JSON."""
    assert b"\n" not in data and b"\r" not in data, "SSE data must be a single line"
    if event is None:
        return b"data: " + data + b"\n\n"
    assert "\n" not in event and "\r" not in event, "SSE event name must be a single line"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
