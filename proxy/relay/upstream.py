"""The only network client: one pooled ClientSession, one request per attempt, errors mapped once.

aiohttp and timeout exceptions are translated here into UpstreamFailure (before a usable reply)
or reply.StreamBroken (while reading one); nothing above this module sees aiohttp's exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import hdrs
from yarl import URL

from proxy.config import Limits
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
    __slots__ = ("_away", "_due", "_idle_s", "_last_read", "_loop", "_resp", "_seen", "_timer", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, idle_s: float) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers
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
        return self._resp.content.is_eof()

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
        arrived = self._resp.content.total_bytes
        if self._away or arrived != self._seen or now - self._due > LOOP_LAG_S:
            self._seen = arrived
            self._rearm(now + self._idle_s)
        elif now >= self._last_read + self._idle_s:
            self._resp.content.set_exception(IdleTimeout())
        else:
            self._rearm(self._last_read + self._idle_s)

    async def read(self, limit: int) -> bytes:
        content = self._resp.content
        if content.is_eof():  # the whole answer has arrived (the common small JSON): no iterator, no timer
            try:
                data = content.read_nowait(-1)
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise StreamBroken(f"upstream connection broke: {type(exc).__name__}") from exc
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

    async def chunks(self) -> AsyncIterator[bytes]:
        self._last_read = self._loop.time()
        self._seen = self._resp.content.total_bytes
        if not self._resp.content.is_eof():  # a body already complete needs no idle timer
            self._arm()
        content = self._resp.content
        read = content.readany  # what iter_any() calls, without its iterator in between
        try:
            while chunk := await read():
                self._away = True
                yield chunk
                self._away = False
                self._last_read = self._loop.time()  # the wait for the next chunk starts when we ask for it
                self._seen = content.total_bytes
        except IdleTimeout as exc:
            raise StreamBroken(f"upstream sent nothing for {self._idle_s:g}s", timeout=True) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise StreamBroken(f"upstream connection broke: {type(exc).__name__}") from exc
        finally:
            self._disarm()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._disarm()
        self._resp.close()

    def release(self) -> None:
        self._disarm()
        self._resp.release()


class UpstreamClient:
    """Owns the shared ClientSession (created in the app's cleanup context)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.mock = MockProvider()
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, Endpoint], URL] = {}
        self._plans: dict[tuple[int, Endpoint, str], tuple[UpstreamTarget, URL, dict[str, str]]] = {}

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.limits.upstream_connections, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.limits.connect_timeout_s)
        # DummyCookieJar: one session serves every tenant, so an upstream's Set-Cookie must never
        # be stored and replayed on someone else's request.
        self._session = aiohttp.ClientSession(
            # auto_decompress=False: nothing from an upstream is ever inflated (a 1 MB gzip bomb
            # would become the whole answer cap in memory); identity is asked, anything else refused.
            connector=connector, timeout=timeout, skip_auto_headers=(hdrs.USER_AGENT,), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _url(self, base_url: str, endpoint: Endpoint) -> URL:
        """Parsed once per upstream and endpoint (yarl parsing costs more than the lookup)."""
        key = (base_url, endpoint)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = URL(f"{base_url}/{endpoint.value}")
        return url

    def _plan(self, target: UpstreamTarget, endpoint: Endpoint, content_type: str) -> tuple[URL, dict[str, str]]:
        """The URL and the gateway's own headers for a target, built once per configured target
        (a reload makes new target objects, so new plans); per request only the client's allowed
        headers are added. BYOK targets carry one workspace's key and are made per request: not kept."""
        key = (id(target), endpoint, content_type)
        found = self._plans.get(key)
        if found is not None and found[0] is target:
            return found[1], found[2]
        headers: dict[str, str] = {hdrs.CONTENT_TYPE: content_type}
        if target.api_key is not None:
            headers[hdrs.AUTHORIZATION] = "Bearer " + target.api_key.reveal()
        headers[hdrs.ACCEPT_ENCODING] = "identity"  # see open(): encoded answers are refused, never inflated
        url = self._url(target.base_url, endpoint)
        if target.byok_provider is None:
            if len(self._plans) >= MAX_PLANS:  # reloads leave old targets behind: start over
                self._plans.clear()
            self._plans[key] = (target, url, headers)
        return url, headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, target: UpstreamTarget, endpoint: Endpoint, body: bytes, headers: Mapping[str, str], stream: bool,
        deadline: float | None = None, content_type: str = "application/json",
    ) -> Reply:
        """Send one attempt and wait for the status line and headers, until `deadline` (loop time;
        default: the first-byte timeout from now)."""
        if target.kind == "mock":
            return self.mock.reply(target, endpoint, body, stream, content_type)
        assert self._session is not None, "UpstreamClient.open() was not called"
        url, prepared = self._plan(target, endpoint, content_type)
        out = dict(headers)
        out.update(prepared)
        try:
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.limits.first_byte_timeout_s
            async with asyncio.timeout_at(deadline):
                resp = await self._session.post(url, data=body, headers=out, allow_redirects=False)
        except TimeoutError as exc:
            raise UpstreamFailure(
                AttemptResult.TIMEOUT, f"no answer within {self.limits.first_byte_timeout_s:g}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamFailure(AttemptResult.CONNECT_ERROR, "could not connect to the upstream") from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamFailure(AttemptResult.CONNECT_ERROR, f"upstream connection failed: {type(exc).__name__}") from exc
        encoding = resp.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding not in ("", "identity"):
            resp.close()
            raise UpstreamFailure(
                AttemptResult.SERVER_ERROR, f"the upstream sent a {encoding[:20]}-encoded answer although identity was asked"
            )
        return HttpReply(resp, self.limits.idle_timeout_s)
