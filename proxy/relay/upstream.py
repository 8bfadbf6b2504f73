"""The only network client: one pooled HTTP/1.1 client (proxy/relay/http_pool.py), one request per
attempt, errors mapped once.

Connection, framing and timeout failures are translated here into UpstreamFailure (before a usable
reply) or reply.StreamBroken (while reading one); nothing above this module sees the pool's exceptions.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping

from aiohttp import hdrs
from yarl import URL

from proxy.config import Limits
from proxy.relay.http_pool import ConnectError, HttpPool, Origin
from proxy.relay.http_wire import Connection, ConnectionBroken, ProtocolError
from proxy.relay.mock import MockProvider
from proxy.relay.reply import Reply, StreamBroken, media_type
from proxy.types import AttemptResult, Endpoint, UpstreamTarget


class UpstreamFailure(Exception):
    """An attempt that produced no usable reply (connect error, timeout before headers)."""

    def __init__(self, result: AttemptResult, message: str) -> None:
        super().__init__(message)
        self.result = result
        self.message = message


class IdleTimeout(Exception):
    """Set on a reply's stream by the idle watchdog."""


MAX_PLANS = 4096  # prepared (target, endpoint, content type) plans kept; see UpstreamClient._plan
LOOP_LAG_S = 0.25  # a timer this late means the event loop itself was blocked, not the upstream


class HttpReply:
    __slots__ = ("_away", "_conn", "_due", "_idle_s", "_last_read", "_loop", "_pool", "_seen", "_timer", "headers",
                 "status")

    def __init__(self, pool: HttpPool, conn: Connection, idle_s: float) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._idle_s = idle_s
        self._loop = asyncio.get_running_loop()
        self._last_read = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._away = False  # a chunk is with the consumer (e.g. blocked writing to a slow client)
        self._due = 0.0  # when the armed timer should fire
        self._seen = 0  # bytes the upstream had sent at our last read

    @property
    def content_type(self) -> str:
        return media_type(self.headers)

    @property
    def ended(self) -> bool:
        return self._conn.complete

    # One timer per reply that re-arms itself, instead of a timer per chunk: the hot path only
    # stores the time of the last read.
    def _arm(self) -> None:
        if self._timer is None:
            self._rearm(self._last_read + self._idle_s)

    def _rearm(self, deadline: float) -> None:
        self._due = deadline
        self._timer = self._loop.call_at(deadline, self._check_idle)

    def _check_idle(self) -> None:
        """The upstream is idle only if we were waiting for it and it sent nothing. Not when the
        consumer holds a chunk, when bytes wait unread, nor when the loop was blocked (the timer
        fired late): then it gets a fresh window, a blocked loop is never the upstream's fault."""
        self._timer = None
        now = self._loop.time()
        arrived = self._conn.total_bytes
        if self._away or arrived != self._seen or now - self._due > LOOP_LAG_S:
            self._seen = arrived
            self._rearm(now + self._idle_s)
        elif now >= self._last_read + self._idle_s:
            self._conn.set_exception(IdleTimeout())
        else:
            self._rearm(self._last_read + self._idle_s)

    async def read(self, limit: int) -> bytes:
        conn = self._conn
        if conn.complete:  # the whole answer has arrived (the common small JSON): no iterator, no timer
            data = self._take(conn)
            if len(data) > limit:
                raise StreamBroken(f"upstream answer is larger than {limit} bytes")
            return data
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise StreamBroken(f"upstream answer is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @staticmethod
    def _take(conn: Connection) -> bytes:
        try:
            return conn.take_all()
        except (ProtocolError, ConnectionBroken) as exc:
            raise StreamBroken(f"upstream connection broke: {exc}") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        self._last_read = self._loop.time()
        self._seen = conn.total_bytes
        if not conn.complete:  # a body already complete needs no idle timer
            self._arm()
        read = conn.readany
        try:
            while chunk := await read():
                self._away = True
                yield chunk
                self._away = False
                self._last_read = self._loop.time()  # the wait for the next chunk starts when we ask for it
                self._seen = conn.total_bytes
        except IdleTimeout as exc:
            raise StreamBroken(f"upstream sent nothing for {self._idle_s:g}s", timeout=True) from exc
        except (ProtocolError, ConnectionBroken) as exc:
            raise StreamBroken(f"upstream connection broke: {exc}") from exc
        finally:
            self._disarm()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._disarm()
        self._pool.discard(self._conn)

    def release(self) -> None:
        self._disarm()
        self._pool.release(self._conn)


class UpstreamClient:
    """Owns the gateway's one upstream HTTP pool (opened in the app's cleanup context)."""

    def __init__(self, limits: Limits, tls: ssl.SSLContext | None = None) -> None:
        self.limits = limits
        self.mock = MockProvider()
        self._tls = tls  # None: the system's CAs (tests pass a context that trusts their own)
        self._pool: HttpPool | None = None
        self._urls: dict[tuple[str, Endpoint], URL] = {}
        self._plans: dict[tuple[int, Endpoint, str], tuple[UpstreamTarget, Plan]] = {}

    async def open(self) -> None:
        self._pool = HttpPool(self.limits.upstream_connections, self.limits.connect_timeout_s, self._tls)

    @property
    def open_connections(self) -> int:
        return self._pool.open_connections if self._pool is not None else 0

    def _url(self, base_url: str, endpoint: Endpoint) -> URL:
        """Parsed once per upstream and endpoint (yarl parsing costs more than the lookup)."""
        key = (base_url, endpoint)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = URL(f"{base_url}/{endpoint.value}")
        return url

    def _plan(self, target: UpstreamTarget, endpoint: Endpoint, content_type: str) -> Plan:
        """The origin and the request head's fixed part for a target, built once per configured
        target (a reload makes new target objects, so new plans); per request only the client's
        allowed headers and the length are added. BYOK targets carry one workspace's key and are
        made per request: not kept."""
        key = (id(target), endpoint, content_type)
        found = self._plans.get(key)
        if found is not None and found[0] is target:
            return found[1]
        headers: dict[str, str] = {hdrs.CONTENT_TYPE: content_type}
        if target.api_key is not None:
            headers[hdrs.AUTHORIZATION] = "Bearer " + target.api_key.reveal()
        headers[hdrs.ACCEPT_ENCODING] = "identity"  # encoded answers are refused, never inflated (see send)
        plan = Plan.build(self._url(target.base_url, endpoint), headers)
        if target.byok_provider is None:
            if len(self._plans) >= MAX_PLANS:  # reloads leave old targets behind: start over
                self._plans.clear()
            self._plans[key] = (target, plan)
        return plan

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def send(
        self, target: UpstreamTarget, endpoint: Endpoint, body: bytes, headers: Mapping[str, str], stream: bool,
        deadline: float | None = None, content_type: str = "application/json",
    ) -> Reply:
        """Send one attempt and wait for the status line and headers, until `deadline` (loop time;
        default: the first-byte timeout from now)."""
        if target.kind == "mock":
            return self.mock.reply(target, endpoint, body, stream, content_type)
        pool = self._pool
        assert pool is not None, "UpstreamClient.open() was not called"
        try:
            plan = self._plan(target, endpoint, content_type)
            request = plan.request(headers, body)
        except ValueError as exc:
            raise UpstreamFailure(AttemptResult.CONNECT_ERROR, f"the request cannot be sent: {exc}") from exc
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.limits.first_byte_timeout_s
        conn: Connection | None = None
        try:
            conn = pool.take_idle(plan.origin, loop.time()) or await pool.acquire(plan.origin, deadline)
            head = conn.begin(request)
            timer = loop.call_at(deadline, _expire, head)
            try:
                await head
            finally:
                timer.cancel()
        except asyncio.CancelledError:
            if conn is not None:
                pool.discard(conn)
            raise
        except ConnectError as exc:
            raise UpstreamFailure(AttemptResult.CONNECT_ERROR, f"could not connect to the upstream: {exc}") from exc
        except (TimeoutError, _HeadTimeout) as exc:
            if conn is not None:
                pool.discard(conn)
            raise UpstreamFailure(
                AttemptResult.TIMEOUT, f"no answer within {self.limits.first_byte_timeout_s:g}s"
            ) from exc
        except (ConnectionBroken, ProtocolError, OSError) as exc:
            if conn is not None:
                pool.discard(conn)
            raise UpstreamFailure(AttemptResult.CONNECT_ERROR, f"upstream connection failed: {exc}") from exc
        encoding = conn.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding not in ("", "identity"):
            pool.discard(conn)
            raise UpstreamFailure(
                AttemptResult.SERVER_ERROR, f"the upstream sent a {encoding[:20]}-encoded answer although identity was asked"
            )
        return HttpReply(pool, conn, self.limits.idle_timeout_s)


class _HeadTimeout(Exception):
    pass


def _expire(head: asyncio.Future[None]) -> None:
    if not head.done():
        head.set_exception(_HeadTimeout())


class Plan:
    """A target's request head, encoded once: request line, Host and the gateway's own headers."""

    __slots__ = ("fixed", "names", "origin")

    def __init__(self, origin: Origin, fixed: bytes, names: frozenset[str]) -> None:
        self.origin = origin
        self.fixed = fixed
        self.names = names  # lower-cased names of the fixed headers: a client header never repeats one

    @classmethod
    def build(cls, url: URL, headers: Mapping[str, str]) -> Plan:
        scheme, host = url.scheme, url.raw_host or ""
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"the upstream URL must be http or https with a host, not {scheme or 'none'}")
        port = url.port or (443 if scheme == "https" else 80)
        authority = f"[{host}]" if ":" in host else host
        if url.explicit_port:
            authority += f":{port}"
        lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {authority}"]
        lines += [f"{_plain(name)}: {_plain(value)}" for name, value in headers.items()]
        fixed = ("\r\n".join(lines) + "\r\n").encode("utf-8")
        return cls((scheme, host, port), fixed, frozenset(n.lower() for n in headers) | {"host"})

    def request(self, headers: Mapping[str, str], body: bytes) -> list[bytes] | bytes:
        extra = "".join(f"{_plain(name)}: {_plain(value)}\r\n" for name, value in headers.items()
                        if name.lower() not in self.names)
        head = self.fixed + f"{extra}Content-Length: {len(body)}\r\n\r\n".encode("utf-8", "surrogateescape")
        return head + body if len(body) < SMALL_BODY else [head, body]


SMALL_BODY = 64 * 1024  # below this the head and body are joined into one write


def _plain(text: str) -> str:
    """A header name or value may carry no CR, LF or NUL: one would split the head (a request smuggled upstream)."""
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError("a header holds a line break or NUL")
    return text
