"""The fake upstream's request-chosen answers (testkit.profiles) over raw asyncio, for the benchmark.

No framework on purpose: the benchmark must not measure aiohttp's cost inside the fake. It owns only
HTTP/1.1 framing (status line, Content-Length or chunked, one chunk per SSE event as a real upstream
sends them); what it answers is built by testkit.profiles and testkit.payloads. Each distinct answer
is framed once and then served from memory, so nothing costly happens per request.
`python -m testkit.upstream` starts it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from testkit import profiles

_REASONS = {200: b"OK", 429: b"Too Many Requests"}
_CACHE_LIMIT = 1024


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _head(answer: profiles.Answer, framing: bytes) -> bytes:
    """Status line, Content-Type, the framing header, then the other headers (the order real upstreams use)."""
    first, *rest = answer.headers
    lines = [b"HTTP/1.1 %d %s" % (answer.status, _REASONS.get(answer.status, b"Status")),
             f"{first[0]}: {first[1]}".encode(), framing, *(f"{k}: {v}".encode() for k, v in rest)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Framed:
    """An answer as wire bytes: `head` (with the whole body when not streaming), chunks, the tail and last chunk."""

    head: bytes
    events: tuple[bytes, ...] = ()
    gap_s: float = 0.0
    tail: bytes = b""
    stream: bool = False


def frame(answer: profiles.Answer) -> Framed:
    if answer.events is None:
        return Framed(_head(answer, b"Content-Length: %d" % len(answer.body)) + answer.body)
    return Framed(_head(answer, b"Transfer-Encoding: chunked"), tuple(_chunk(e) for e in answer.events),
                  answer.gap_s, b"".join(_chunk(t) for t in answer.tail) + b"0\r\n\r\n", stream=True)


class Answers:
    """Framed answers by (path, model, stream, include_usage): a handful per run."""

    def __init__(self) -> None:
        self._framed: dict[tuple[bytes, object, object, object], Framed] = {}

    def get(self, path: bytes, data: dict[str, object]) -> Framed:
        options = data.get("stream_options")
        usage = options.get("include_usage") if isinstance(options, dict) else None
        key = (path, data.get("model"), data.get("stream"), usage)
        framed = self._framed.get(key)
        if framed is None:
            if len(self._framed) >= _CACHE_LIMIT:
                self._framed.clear()
            framed = self._framed[key] = frame(profiles.by_request(path.decode(errors="replace"), data))
        return framed


class Stream:
    """Writes one stream's events on the loop's timer: no task per stream."""

    def __init__(self, conn: Upstream, framed: Framed) -> None:
        self.conn, self.events, self.tail, self.delay_s, self.i = conn, framed.events, framed.tail, framed.gap_s, 0

    def step(self) -> None:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        if self.delay_s <= 0:
            for event in self.events:
                transport.write(event)  # one send() per event: separate segments, like a real upstream
            self.i = len(self.events)
        elif self.i < len(self.events):
            transport.write(self.events[self.i])
            self.i += 1
        if self.i >= len(self.events):
            transport.write(self.tail)
            self.conn.busy = False
            self.conn.process()
        else:
            self.conn.timer = asyncio.get_running_loop().call_later(self.delay_s, self.step)


def _content_length(head: bytes) -> int:
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : stop if stop >= 0 else len(head)])


class Upstream(asyncio.Protocol):
    """One client connection: requests in order (no pipelining past a running stream)."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # reason: a TCP server hands a Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            length = _content_length(head.lower())
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4: end + 4 + length])
            del self.buf[: end + 4 + length]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        data = orjson.loads(body) if body else {}
        framed = self.answers.get(head.split(b" ", 2)[1], data if isinstance(data, dict) else {})
        self.transport.write(framed.head)
        if framed.stream:
            self.busy = True
            Stream(self, framed).step()


async def serve(port: int = 0) -> asyncio.Server:
    """Listen on 127.0.0.1:`port` (0: any free port)."""
    answers = Answers()
    return await asyncio.get_running_loop().create_server(lambda: Upstream(answers), "127.0.0.1", port, backlog=4096)
