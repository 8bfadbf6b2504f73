"""The gateway's one upstream HTTP client: keep-alive connections pooled per origin, TLS verified
against the system's CAs, host names resolved once per five minutes, and a cap on open connections.

It speaks only what the gateway sends: one POST with a known length per exchange, HTTP/1.1, no
cookies (nothing is ever stored between requests, so no tenant's cookie can reach another's
request), no redirects followed, no proxy from the environment. Built for the hot path: a
request's bytes are its prepared head plus the per-request headers and the body, written at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque

from proxy.relay.http_wire import IDLE, Connection

KEEPALIVE_S = 15.0  # an idle pooled connection older than this is closed, not reused (servers drop them)
DNS_TTL_S = 300.0


class ConnectError(Exception):
    """No connection could be opened (refused, unreachable, name not found, TLS failure, timeout)."""


Origin = tuple[str, str, int]  # scheme, host, port


class HttpPool:
    def __init__(self, limit: int, connect_timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.limit = max(1, limit)
        self.connect_timeout_s = connect_timeout_s
        self._tls = tls
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0  # connections open or opening: idle + in use
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._all: set[Connection] = set()
        self._closing = False

    @property
    def open_connections(self) -> int:
        return self._open

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
            self._tls.set_alpn_protocols(["http/1.1"])
        return self._tls

    def take_idle(self, origin: Origin, now: float) -> Connection | None:
        """An idle connection to `origin` still fit for reuse, if the pool has one (no await: the hot path)."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recent: its server is the least likely to have dropped it
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                return conn
            self._discard(conn)
        return None

    async def acquire(self, origin: Origin, deadline: float) -> Connection:
        """A connection to `origin`: an idle one, else a new one once the cap allows."""
        loop = asyncio.get_running_loop()
        conn = self.take_idle(origin, loop.time())
        if conn is not None:
            return conn
        while self._open >= self.limit:
            if not self._close_one_idle():
                waiter = loop.create_future()
                self._slot_waiters.append(waiter)
                try:
                    async with asyncio.timeout_at(deadline):
                        await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._wake_one()  # woken, but leaving (timeout, cancel): the slot goes to the next in line
                    raise
                finally:
                    if not waiter.done():
                        waiter.cancel()
                conn = self.take_idle(origin, loop.time())
                if conn is not None:
                    return conn
        self._open += 1
        try:
            conn = await self._connect(origin, deadline)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        self._all.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """After a complete exchange: back to the pool when the connection may carry another one."""
        if conn.reusable and conn.complete and not conn.closed and not self._closing:
            conn.state = IDLE
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(conn.key, []).append(conn)
            self._wake_one()
        else:
            self.discard(conn)

    def discard(self, conn: Connection) -> None:
        """Close a connection whose exchange did not end cleanly (or may not be reused)."""
        self._discard(conn)

    def _discard(self, conn: Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1
            self._wake_one()
        if not conn.closed:
            conn.abort()

    def _lost(self, conn: Connection) -> None:
        """connection_lost: an idle connection leaves the pool at once; one in use is discarded by its exchange."""
        if conn.state == IDLE:
            idle = self._idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
            self._discard(conn)

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                self._discard(idle.pop(0))
                return True
        return False

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, origin: Origin, deadline: float) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == "https" else None
        last: BaseException | None = None
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.connect_timeout_s)):
                for address in await self._resolve(host, port):
                    try:
                        _, conn = await loop.create_connection(
                            lambda: Connection(loop, origin, self._lost), address, port, ssl=tls,
                            server_hostname=host if tls is not None else None,
                        )
                    except (OSError, ssl.SSLError) as exc:
                        last = exc
                        continue
                    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
                    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return conn
        except TimeoutError as exc:
            if loop.time() >= deadline:  # the attempt's own deadline, not the connect timeout: a timeout
                raise
            raise ConnectError(f"no connection within {self.connect_timeout_s:g}s") from exc
        if isinstance(last, ssl.SSLError):
            raise ConnectError(f"TLS handshake failed: {last.reason or type(last).__name__}") from last
        raise ConnectError(type(last).__name__ if last else "the host name has no address") from last

    async def _resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        found = self._dns.get((host, port))
        if found is not None and loop.time() - found[0] < DNS_TTL_S:
            return found[1]
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectError(f"host name not resolved: {exc.strerror}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self._dns[(host, port)] = (loop.time(), addresses)
        return addresses

    async def close(self) -> None:
        self._closing = True
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost
