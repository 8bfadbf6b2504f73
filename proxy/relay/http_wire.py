"""One upstream HTTP/1.1 connection: the answer's status line and headers parsed, its body de-framed
(Content-Length, chunked, or until close) and buffered for one reader, with back-pressure.

Strict where framing is concerned: a head we cannot parse unambiguously, conflicting lengths or a
bad chunk ends the exchange with ProtocolError and the connection is never reused. Anything left
over after a complete answer also marks the connection as not reusable.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable
from typing import cast

from multidict import CIMultiDict

MAX_HEAD_BYTES = 64 * 1024  # status line and headers together
MAX_HEADERS = 128
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, or one trailer line
HIGH_WATER = 256 * 1024  # buffered body bytes that pause reading from the socket ...
LOW_WATER = 64 * 1024  # ... until the reader has taken it down to this

# Body framing of the answer being read.
UNTIL_CLOSE, LENGTH, CHUNKED, EMPTY = range(4)
# Parser states: waiting for a head, reading a body, done with the answer, between exchanges.
HEAD, BODY, DONE, IDLE = range(4)
# Chunked sub-states.
C_SIZE, C_DATA, C_CRLF, C_TRAILER = range(4)


class ProtocolError(Exception):
    """The upstream's answer is not valid HTTP/1.1 framing."""


class ConnectionBroken(Exception):
    """The connection closed or failed before the answer was complete."""


class Connection(asyncio.Protocol):
    """An asyncio protocol for one keep-alive connection, serving one exchange at a time."""

    __slots__ = (
        "_chunk_left", "_cstate", "_exc", "_framing", "_head", "_head_waiter", "_left", "_loop", "_on_lost",
        "_partial", "_paused", "_waiter", "buffered", "chunks", "closed", "complete", "headers", "idle_since",
        "key", "reusable", "state", "status", "total_bytes", "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int],
                 on_lost: Callable[[Connection], None]) -> None:
        self._loop = loop
        self.key = key
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        self.closed = False
        self.idle_since = loop.time()
        self._reset()

    def _reset(self) -> None:
        self._head = bytearray()
        self._head_waiter: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self._framing = EMPTY
        self._left = 0
        self._cstate = C_SIZE
        self._chunk_left = 0
        self._partial = b""
        self._paused = False
        self.status = 0
        self.headers: CIMultiDict[str] = _NO_HEADERS
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.total_bytes = 0
        self.complete = False
        self.reusable = False

    # --- one exchange ----------------------------------------------------------------------------

    def begin(self, request: bytes | list[bytes]) -> asyncio.Future[None]:
        """Write a request; the future resolves once the answer's head is parsed (or fails)."""
        assert self.transport is not None and self.state == IDLE
        self._reset()
        self.state = HEAD
        self._head_waiter = waiter = self._loop.create_future()
        if isinstance(request, bytes):
            self.transport.write(request)
        else:
            self.transport.writelines(request)
        return waiter

    def set_exception(self, exc: BaseException) -> None:
        """Fail the reader (the idle watchdog); the connection is not reused."""
        self.reusable = False
        if self._exc is None:
            self._exc = exc
        self._wake()

    def take_all(self) -> bytes:
        """What is buffered now, raising the exchange's failure once nothing is left."""
        chunks = self.chunks
        if not chunks:
            if self._exc is not None:
                raise self._exc
            return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def readany(self) -> bytes:
        """The next part of the body as it arrives (everything buffered at once); b"" at its end."""
        while not self.chunks and not self.complete and self._exc is None:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take_all()

    def abort(self) -> None:
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # not an isinstance check: uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            if self.state == BODY:
                self._feed_body(data)
            elif self.state == HEAD:
                self._feed_head(data)
            else:  # bytes nobody asked for: the connection cannot be trusted for the next exchange
                self.reusable = False
                if self.state == IDLE:
                    self.abort()
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.state == BODY and self._framing == UNTIL_CLOSE and exc is None:
            self._finish()
        elif self.state in (HEAD, BODY):
            why = f"upstream closed the connection ({type(exc).__name__})" if exc else "upstream closed the connection"
            self._fail(ConnectionBroken(why))
        self._on_lost(self)

    def pause_writing(self) -> None:
        pass  # requests are written whole; the transport buffers what the socket does not take

    def resume_writing(self) -> None:
        pass

    # --- parsing ---------------------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> None:
        head = self._head
        start = max(0, len(head) - 3)
        head += data
        end = head.find(b"\r\n\r\n", start)
        if end < 0:
            if len(head) > MAX_HEAD_BYTES:
                raise ProtocolError(f"the answer's headers are larger than {MAX_HEAD_BYTES} bytes")
            return
        if end > MAX_HEAD_BYTES:
            raise ProtocolError(f"the answer's headers are larger than {MAX_HEAD_BYTES} bytes")
        rest = bytes(head[end + 4:])
        status, headers, version_11 = parse_head(bytes(head[:end]))
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            if status == 101:
                raise ProtocolError("the upstream switched protocols")
            self._head = bytearray()
            if rest:
                self._feed_head(rest)
            return
        self._head = bytearray()
        self.status = status
        self.headers = headers
        self._framing, self._left, self.reusable = body_framing(status, headers, version_11)
        self.state = BODY
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(None)
        if self._framing == EMPTY or (self._framing == LENGTH and self._left == 0):
            self._finish()
            if rest:
                self.reusable = False
        elif rest:
            self._feed_body(rest)

    def _feed_body(self, data: bytes) -> None:
        framing = self._framing
        if framing == LENGTH:
            left = self._left
            if len(data) >= left:
                if len(data) > left:
                    self.reusable = False  # more than the answer: the next exchange would read garbage
                    data = data[:left]
                self._left = 0
                self._push(data)
                self._finish()
            else:
                self._left = left - len(data)
                self._push(data)
        elif framing == CHUNKED:
            self._feed_chunked(data)
        else:
            self._push(data)

    def _feed_chunked(self, data: bytes) -> None:
        """De-chunk what arrived. The common case, whole chunks (an SSE event each), takes one
        regex match and one slice per chunk, and the pieces are buffered as one."""
        if self._partial:
            data = self._partial + data
            self._partial = b""
        pos, size = 0, len(data)
        parts: list[bytes] = []
        find, match = data.find, _CHUNK_LINE.fullmatch
        try:
            while pos < size:
                state = self._cstate
                if state == C_SIZE:
                    end = find(b"\r\n", pos)
                    if end < 0:
                        if size - pos > MAX_CHUNK_LINE:
                            raise ProtocolError("a chunk-size line of the answer is too long")
                        break
                    found = match(data, pos, end)
                    if found is None:
                        raise ProtocolError(f"the answer has a malformed chunk size: {data[pos:min(end, pos + 20)]!r}")
                    length = int(found.group(1), 16)
                    pos = end + 2
                    if not length:
                        self._cstate = C_TRAILER
                        continue
                    stop = pos + length
                    if stop + 2 <= size:  # the whole chunk and its CRLF are here
                        if data[stop:stop + 2] != b"\r\n":
                            raise ProtocolError("a chunk of the answer is not followed by CRLF")
                        parts.append(data[pos:stop])
                        pos = stop + 2
                        continue
                    self._chunk_left = length
                    self._cstate = C_DATA
                elif state == C_DATA:
                    take = min(self._chunk_left, size - pos)
                    parts.append(data[pos:pos + take])
                    pos += take
                    self._chunk_left -= take
                    if not self._chunk_left:
                        self._cstate = C_CRLF
                elif state == C_CRLF:
                    if size - pos < 2:
                        break
                    if data[pos:pos + 2] != b"\r\n":
                        raise ProtocolError("a chunk of the answer is not followed by CRLF")
                    pos += 2
                    self._cstate = C_SIZE
                else:  # trailers, up to the empty line that completes the answer
                    end = find(b"\r\n", pos)
                    if end < 0:
                        if size - pos > MAX_CHUNK_LINE:
                            raise ProtocolError("a trailer line of the answer is too long")
                        break
                    if end == pos:
                        if end + 2 < size:
                            self.reusable = False
                        self._push_parts(parts)
                        self._finish()
                        return
                    pos = end + 2
        except ProtocolError:
            self._push_parts(parts)  # what was whole before the error still reaches the reader
            raise
        if pos < size:
            self._partial = data[pos:]
        self._push_parts(parts)

    def _push_parts(self, parts: list[bytes]) -> None:
        if parts:
            self._push(parts[0] if len(parts) == 1 else b"".join(parts))

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self.chunks.append(data)
        self.buffered += len(data)
        self.total_bytes += len(data)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.state = DONE
        self.complete = True
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(exc)
            self._head_waiter.exception()  # retrieved here: a caller that left must not log it
        elif self._exc is None and not self.complete:
            self._exc = exc
        self.state = DONE
        self._wake()
        if not self.closed:
            self.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_NO_HEADERS: CIMultiDict[str] = CIMultiDict()
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch  # a header name (RFC 9110 token)
# A chunk-size line: hex digits, optional whitespace and extensions (ignored).
_CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?")


def parse_head(raw: bytes) -> tuple[int, CIMultiDict[str], bool]:
    """The status, headers and whether the answer is HTTP/1.1, from the head without its blank line."""
    lines = raw.split(b"\r\n")
    status_line = lines[0]
    if not (status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) and len(status_line) >= 12
            and status_line[9:12].isdigit() and (len(status_line) == 12 or status_line[12:13] == b" ")):
        raise ProtocolError(f"the answer's status line is not HTTP/1.x: {status_line[:40]!r}")
    if len(lines) > MAX_HEADERS + 1:
        raise ProtocolError(f"the answer has more than {MAX_HEADERS} headers")
    breaks = len(lines) - 1  # every CR and LF must be part of a line's CRLF: no bare one, no NUL
    if raw.count(b"\r") != breaks or raw.count(b"\n") != breaks or b"\x00" in raw:
        raise ProtocolError("the answer's head has a bare CR, LF or NUL")
    pairs = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN(name) is None:  # no folded lines, no space before the colon
            raise ProtocolError(f"the answer has a malformed header line: {line[:40]!r}")
        pairs.append((name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "surrogateescape")))
    return int(status_line[9:12]), CIMultiDict(pairs), status_line[7:8] == b"1"


def body_framing(status: int, headers: CIMultiDict[str], version_11: bool) -> tuple[int, int, bool]:
    """(framing, length, reusable) for an answer, by RFC 9112 §6.3 (a POST is never HEAD)."""
    connection = headers.get("Connection", "").lower()
    reusable = (version_11 and "close" not in connection) or (not version_11 and "keep-alive" in connection)
    if status in (204, 304):
        return EMPTY, 0, reusable
    codings = headers.getall("Transfer-Encoding", ())
    if codings:
        last = codings[-1].rsplit(",", 1)[-1].strip().lower()
        if last == "chunked" and version_11:
            # A Content-Length beside it is ignored, and such a connection is not trusted afterwards.
            return CHUNKED, 0, reusable and "Content-Length" not in headers
        return UNTIL_CLOSE, 0, False
    lengths = headers.getall("Content-Length", ())
    if lengths:
        values = {v.strip() for value in lengths for v in value.split(",")}
        if len(values) != 1:
            raise ProtocolError("the answer has conflicting Content-Length headers")
        (value,) = values
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise ProtocolError(f"the answer's Content-Length is not a number: {value[:20]!r}")
        return LENGTH, int(value), reusable
    return UNTIL_CLOSE, 0, False
