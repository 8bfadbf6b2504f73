"""The one fake OpenAI-compatible upstream: a real aiohttp server on 127.0.0.1, port 0, driven per test.

It records every request, counts the connections still open, and answers each request with the
next scripted behaviour (or its default): `Auto` (what OpenAI would answer), `Profiled` (the answer
the request names, testkit.profiles), `Reply`, `Stream` or `Reset`. It never imports the gateway:
it only speaks HTTP, with bytes built by testkit.payloads.

`python -m testkit.upstream` serves the `Profiled` answers as a process that prints `LISTENING <port>`:
over a raw asyncio transport (testkit.raw_upstream, the benchmark's: no framework cost inside the
fake), or with `--aiohttp` through this class.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from testkit import payloads, profiles, raw_upstream

HANG_S = 60.0  # "forever" for a test; the server's shutdown cancels it
_ABORTED = web.RequestKey("fake_aborted", bool)  # this handler aborted its own connection


class End(Enum):
    """How a scripted stream ends after its last piece."""

    EOF = "eof"  # a clean end of the body (the events decide whether [DONE] was sent)
    RESET = "reset"  # abort the TCP connection
    HANG = "hang"  # keep the connection open and send nothing more


class Marker(Enum):
    USAGE = "usage"  # in Stream.pieces: the usage chunk, only if the request asked for include_usage


USAGE = Marker.USAGE
Piece = bytes | float | Marker  # bytes are written and drained; a float is a pause in seconds


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete answer. body: dict → JSON, bytes/str → sent as is, None → the endpoint's default."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay_s: float = 0.0  # stall before the status line and headers


@dataclass(frozen=True, slots=True)
class Stream:
    """An SSE answer. pieces=None: the endpoint's default events (with `eol` line ends)."""

    pieces: tuple[Piece, ...] | None = None
    end: End = End.EOF
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "text/event-stream"
    delay_s: float = 0.0  # stall before the status line and headers
    eol: str = "\n"


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort the connection before any status line."""

    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Auto:
    """What OpenAI would do: JSON, or the default stream when the request says `stream: true`."""

    eol: str = "\n"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Profiled:
    """The answer the request names by its path or model (testkit.profiles)."""


Behaviour = Reply | Stream | Reset | Auto | Profiled


def split(data: bytes, *offsets: int, gap_s: float = 0.0) -> tuple[Piece, ...]:
    """`data` cut at `offsets` into pieces written separately, with a pause of `gap_s` between them."""
    cuts = [0, *sorted(set(o for o in offsets if 0 < o < len(data))), len(data)]
    parts = [data[a:b] for a, b in itertools.pairwise(cuts)]
    return paced(parts, gap_s)


def paced(parts: list[bytes], gap_s: float) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for i, part in enumerate(parts):
        if i and gap_s:
            out.append(gap_s)
        out.append(part)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    raw: bytes
    body: Any  # parsed JSON, or None when the body was not JSON
    at: float  # time.monotonic() when it arrived
    connection: int = 0  # which TCP connection carried it (same number: a reused connection)
    peer_port: int = 0  # the sender's port on 127.0.0.1, and ours: together they name the TCP connection
    local_port: int = 0

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[7:] if value.startswith("Bearer ") else None


class FakeUpstream:
    """Start with `await start()`; script with `script(...)` or set `default`; read `requests`."""

    def __init__(self, name: str = "upstream", default: Behaviour | None = None) -> None:
        self.name = name
        self.default: Behaviour = default if default is not None else Auto()
        self.requests: list[Received] = []
        self.cancelled = 0  # handlers cut short because the gateway closed the connection
        # Awaited with each request once recorded, before it is answered (its connection still open):
        # a test's own look at who sent it. It must not block the event loop.
        self.observe: Callable[[Received], Awaitable[None]] | None = None
        self._queue: deque[Behaviour] = deque()
        self._transports: set[asyncio.Transport] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL a gateway config points at."""
        return f"{self.root}/v1"

    @property
    def root(self) -> str:
        """http://127.0.0.1:PORT, for base URLs with a profile path (`{root}/limited/v1`)."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection; the port then refuses connections."""
        if self._runner is not None:
            for transport in list(self._transports):
                transport.abort()
            await self._runner.cleanup()
            self._runner = None

    def script(self, *behaviours: Behaviour) -> FakeUpstream:
        """Answer the next requests with these behaviours, in order; then fall back to `default`."""
        self._queue.extend(behaviours)
        return self

    @property
    def open_connections(self) -> int:
        return sum(1 for t in self._transports if not t.is_closing())

    async def wait_no_connections(self, within_s: float = 1.0) -> float:
        """Seconds until no connection is open; AssertionError if one is still open after `within_s`."""
        start = time.monotonic()
        while self.open_connections:
            if time.monotonic() - start > within_s:
                raise AssertionError(f"{self.name}: {self.open_connections} connection(s) still open after {within_s}s")
            await asyncio.sleep(0.005)
        return time.monotonic() - start

    async def wait_requests(self, count: int, within_s: float = 2.0) -> None:
        start = time.monotonic()
        while len(self.requests) < count:
            if time.monotonic() - start > within_s:
                raise AssertionError(f"{self.name}: {len(self.requests)} requests after {within_s}s, wanted {count}")
            await asyncio.sleep(0.005)

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self._transports.add(request.transport)
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        peer, local = request.transport.get_extra_info("peername"), request.transport.get_extra_info("sockname")
        received = Received(request.method, request.path, request.headers, raw, body, time.monotonic(),
                            id(request.transport), peer[1] if peer else 0, local[1] if local else 0)
        self.requests.append(received)
        if self.observe is not None:
            await self.observe(received)
        behaviour = self._queue.popleft() if self._queue else self.default
        try:
            return await self._serve(request, behaviour, body if isinstance(body, dict) else {})
        except asyncio.CancelledError:
            if not request.get(_ABORTED):
                self.cancelled += 1
            raise

    async def _serve(self, request: web.Request, behaviour: Behaviour, body: dict[str, Any]) -> web.StreamResponse:
        if isinstance(behaviour, Profiled):
            behaviour = _from_profile(profiles.by_request(request.path, body))
        elif isinstance(behaviour, Auto):
            if "stream_options" in body and body.get("stream") is not True:  # as OpenAI refuses it
                message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
                behaviour = Reply(400, payloads.openai_error(message, param="stream_options"))
            elif body.get("stream") is True:
                behaviour = Stream(eol=behaviour.eol, headers=behaviour.headers)
            else:
                behaviour = Reply(headers=behaviour.headers)
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if isinstance(behaviour, Reset):
            return await self._abort(request)
        if isinstance(behaviour, Reply):
            return self._reply(request, behaviour, body)
        return await self._stream(request, behaviour, body)

    def _reply(self, request: web.Request, reply: Reply, body: dict[str, Any]) -> web.Response:
        content = reply.body if reply.body is not None else payloads.default_answer(request.path, body)
        if isinstance(content, dict):
            content = orjson.dumps(content)
        elif isinstance(content, str):
            content = content.encode()
        headers = {"Content-Type": reply.content_type, **reply.headers}
        return web.Response(status=reply.status, body=content, headers=headers)

    async def _stream(self, request: web.Request, stream: Stream, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(status=stream.status, headers={"Content-Type": stream.content_type, **stream.headers})
        await response.prepare(request)
        pieces = stream.pieces if stream.pieces is not None else payloads.default_events(request.path, body, stream.eol)
        for piece in pieces:
            if isinstance(piece, (int, float)):
                await asyncio.sleep(piece)
            elif piece is USAGE:
                if payloads.wants_usage(body):
                    model = str(body.get("model", "unknown"))
                    await response.write(payloads.sse(payloads.usage_chunk_for(request.path, model), eol=stream.eol))
            else:
                await response.write(piece)
        if stream.end is End.RESET:
            return await self._abort(request)
        if stream.end is End.HANG:
            await asyncio.sleep(HANG_S)
        await response.write_eof()
        return response

    async def _abort(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request[_ABORTED] = True
        request.transport.abort()
        await asyncio.sleep(HANG_S)  # cancelled at once: the server cancels handlers of lost connections
        raise AssertionError("unreachable: the aborted connection's handler was not cancelled")


def _from_profile(answer: profiles.Answer) -> Reply | Stream:
    (_, content_type), *rest = answer.headers
    headers = dict(rest)
    if answer.events is None:
        return Reply(answer.status, answer.body, headers, content_type)
    return Stream((*paced(list(answer.events), answer.gap_s), *answer.tail), status=answer.status, headers=headers, content_type=content_type)


async def _main(port: int, framework: bool) -> None:
    if framework:
        fake = FakeUpstream("upstream", Profiled())
        fake.port = port
        async with fake:
            print(f"LISTENING {fake.port}", flush=True)
            await asyncio.Event().wait()
    server = await raw_upstream.serve(port)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The fake upstream's request-chosen answers (testkit.profiles).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--core", type=int, default=None, help="pin this process to one CPU core")
    parser.add_argument("--aiohttp", action="store_true", help="serve through FakeUpstream instead of raw asyncio")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    try:
        asyncio.run(_main(args.port, args.aiohttp))
    except KeyboardInterrupt:
        pass
