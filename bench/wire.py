"""Client-side HTTP/1.1 for the load generator: the request bytes every target gets, and a small
incremental response parser (Content-Length or chunked) on a raw asyncio connection.

Cheap on purpose (it shares a core with the fake upstream); it is not a general HTTP client.
"""

from __future__ import annotations

import asyncio
import time
from enum import Enum

import orjson

SYSTEM = "You are a helpful assistant. Answer briefly and precisely; cite sources when you can. " * 3
TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the capital of France, and why did it become the capital?"},
    {"role": "assistant", "content": "Paris. It grew as the seat of the Capetian kings from the 10th century on."},
    {"role": "user", "content": "Summarise that in one sentence for a ten-year-old."},
]


def chat_body(model: str, stream: bool) -> bytes:
    """A realistic ~1 KB chat request (four messages, sampling options)."""
    return orjson.dumps({"model": model, "messages": TURNS, "stream": stream, "temperature": 0.7,
                         "max_tokens": 256, "top_p": 1})


def request_bytes(host: str, port: int, path: str, body: bytes, key: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nAccept: */*\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class _State(Enum):
    HEAD = 1
    BODY = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5
    TRAILER = 6
    RAW_CHUNKED = 7


_LAST_CHUNK = b"\r\n0\r\n\r\n"


class ResponseParser:
    """Feed bytes; get body fragments and whether the response is complete (no pipelining).

    With `raw_chunked`, a chunked body is passed through with its framing and only its end is
    detected (`\\r\\n0\\r\\n\\r\\n`): one cheap check per read instead of a parse per chunk. That
    is exact for SSE bodies, which never contain a CR, and counting `data: {` still works.
    """

    def __init__(self, raw_chunked: bool = False) -> None:
        self.buf = bytearray()
        self.status = 0
        self.raw_chunked = raw_chunked
        self._reset()

    def _reset(self) -> None:
        self.state = _State.HEAD
        self.remaining = 0
        self.tail = b""

    def _raw(self, data: bytes) -> tuple[list[bytes], bool]:
        if not data:
            return [], False
        self.tail = (self.tail + data)[-len(_LAST_CHUNK):]
        if self.tail == _LAST_CHUNK:
            self._reset()
            return [data], True
        return [data], False

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        if self.state is _State.RAW_CHUNKED:
            return self._raw(data)
        self.buf += data
        out: list[bytes] = []
        while True:
            state = self.state
            if state is _State.HEAD:
                if not self._head():
                    return out, False
                if self.state is _State.CHUNK_SIZE and self.raw_chunked:
                    self.state = _State.RAW_CHUNKED
                    rest = bytes(self.buf)
                    self.buf.clear()
                    return self._raw(rest)
                if self.state is _State.BODY and self.remaining == 0:
                    return self._done(out)
            elif state is _State.BODY or state is _State.CHUNK_DATA:
                take = min(self.remaining, len(self.buf))
                if take:
                    out.append(bytes(self.buf[:take]))
                    del self.buf[:take]
                    self.remaining -= take
                if self.remaining:
                    return out, False
                if state is _State.BODY:
                    return self._done(out)
                self.state = _State.CHUNK_END
            elif state is _State.CHUNK_END:
                if len(self.buf) < 2:
                    return out, False
                del self.buf[:2]
                self.state = _State.CHUNK_SIZE
            else:
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    return out, False
                line = bytes(self.buf[:eol])
                del self.buf[: eol + 2]
                if state is _State.TRAILER:
                    if not line:
                        return self._done(out)
                    continue
                self.remaining = int(line.split(b";", 1)[0], 16)
                self.state = _State.CHUNK_DATA if self.remaining else _State.TRAILER

    def _head(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end]).lower()
        del self.buf[: end + 4]
        self.status = int(head[9:12])
        if b"\r\ntransfer-encoding: chunked" in head:
            self.state = _State.CHUNK_SIZE
            return True
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ValueError("response without Content-Length or chunked encoding")
        stop = head.find(b"\r\n", at + 2)
        self.remaining = int(head[at + 17 : stop if stop >= 0 else len(head)])
        self.state = _State.BODY
        return True

    def _done(self, out: list[bytes]) -> tuple[list[bytes], bool]:
        self._reset()  # keeps `status` for the caller; the next response overwrites it
        return out, True


class Exchange:
    """One request's timings and body, filled in by the connection."""

    __slots__ = ("future", "parts", "status", "t_done", "t_first", "t_sent")

    def __init__(self, future: asyncio.Future[Exchange]) -> None:
        self.t_sent = time.monotonic()
        self.t_first = 0.0
        self.t_done = 0.0
        self.status = 0
        self.parts: list[bytes] = []
        self.future = future

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, raw_chunked: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(raw_chunked)
        self.current: Exchange | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, raw_chunked: bool = False) -> Connection:
        _, conn = await asyncio.get_running_loop().create_connection(lambda: cls(raw_chunked), host, port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # reason: TCP hands a Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.current is not None and not self.current.future.done():
            self.current.future.set_exception(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        ex = self.current
        if ex is None:
            return
        try:
            parts, done = self.parser.feed(data)
        except ValueError as exc:
            ex.future.set_exception(exc)
            return
        if parts:
            if not ex.t_first:
                ex.t_first = time.monotonic()
            ex.parts.extend(parts)
        if done:
            ex.t_done = time.monotonic()
            ex.status = self.parser.status
            self.current = None
            ex.future.set_result(ex)

    def send(self, raw: bytes) -> asyncio.Future[Exchange]:
        if self.closed or self.transport is None:
            raise ConnectionError("connection is closed")
        future: asyncio.Future[Exchange] = asyncio.get_running_loop().create_future()
        self.current = Exchange(future)
        self.transport.write(raw)
        return future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
