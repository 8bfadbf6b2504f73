"""The upstream HTTP client against real servers on 127.0.0.1: keep-alive reuse, the connection cap,
TLS verification, and what it refuses to send."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.config import Limits
from proxy.relay.http_pool import HttpPool
from proxy.relay.upstream import UpstreamClient, UpstreamFailure
from proxy.types import AttemptResult, Endpoint, Secret, UpstreamTarget


class Seen:
    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.hosts: list[str] = []
        self.auth: list[str] = []
        self.live = 0
        self.most_live = 0


def upstream_app(seen: Seen, delay_s: float = 0.0, close: bool = False) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        seen.peers.append(request.transport.get_extra_info("peername")[:2])  # type: ignore[union-attr]  # reason: a live request has a transport
        seen.hosts.append(request.headers.get("Host", ""))
        seen.auth.append(request.headers.get("Authorization", ""))
        seen.live += 1
        seen.most_live = max(seen.most_live, seen.live)
        try:
            await asyncio.sleep(delay_s)
        finally:
            seen.live -= 1
        return web.json_response({"ok": True}, headers={"Connection": "close"} if close else None)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def target(base_url: str, key: str = "sk-test") -> UpstreamTarget:
    return UpstreamTarget("up", "http", base_url, Secret(key), "m")


async def call(client: UpstreamClient, base_url: str, key: str = "sk-test") -> bytes:
    reply = await client.send(target(base_url, key), Endpoint.CHAT, b"{}", {}, stream=False)
    assert reply.status == 200
    body = await reply.read(1024)
    reply.release()
    return body


@pytest.fixture
async def client():
    upstream = UpstreamClient(Limits())
    await upstream.open()
    yield upstream
    await upstream.close()


async def test_keep_alive_connections_are_reused(aiohttp_server, client) -> None:
    seen = Seen()
    server = await aiohttp_server(upstream_app(seen))
    for _ in range(5):
        assert await call(client, f"http://127.0.0.1:{server.port}/v1") == b'{"ok": true}'
    assert len(set(seen.peers)) == 1
    assert seen.hosts == [f"127.0.0.1:{server.port}"] * 5
    assert seen.auth == ["Bearer sk-test"] * 5
    assert client.open_connections == 1


async def test_an_answer_that_closes_its_connection_is_not_reused(aiohttp_server, client) -> None:
    seen = Seen()
    server = await aiohttp_server(upstream_app(seen, close=True))
    for _ in range(3):
        await call(client, f"http://127.0.0.1:{server.port}/v1")
    assert len(set(seen.peers)) == 3
    await asyncio.sleep(0.05)
    assert client.open_connections == 0


async def test_a_pooled_connection_the_server_dropped_is_not_used(aiohttp_server) -> None:
    seen = Seen()
    server = await aiohttp_server(upstream_app(seen), keepalive_timeout=0.05)
    client = UpstreamClient(Limits())
    await client.open()
    try:
        await call(client, f"http://127.0.0.1:{server.port}/v1")
        await asyncio.sleep(0.3)  # the server closes the idle connection; the pool notices
        assert client.open_connections == 0
        await call(client, f"http://127.0.0.1:{server.port}/v1")
    finally:
        await client.close()
    assert len(set(seen.peers)) == 2


async def test_the_connection_cap_queues_requests_instead_of_opening_more(aiohttp_server) -> None:
    seen = Seen()
    server = await aiohttp_server(upstream_app(seen, delay_s=0.1))
    client = UpstreamClient(Limits(upstream_connections=2))
    await client.open()
    try:
        bodies = await asyncio.gather(*(call(client, f"http://127.0.0.1:{server.port}/v1") for _ in range(6)))
    finally:
        await client.close()
    assert bodies == [b'{"ok": true}'] * 6
    assert seen.most_live == 2 and len(set(seen.peers)) == 2


async def test_a_refused_connection_is_a_connect_error(client) -> None:
    with pytest.raises(UpstreamFailure) as failed:
        await call(client, "http://127.0.0.1:9/v1")
    assert failed.value.result is AttemptResult.CONNECT_ERROR


@pytest.mark.parametrize("key", ["sk-a\r\nX-Injected: 1", "sk-a\nX-Injected: 1", "sk-\x00a"])
async def test_a_key_with_a_line_break_is_never_sent(aiohttp_server, client, key: str) -> None:
    seen = Seen()
    server = await aiohttp_server(upstream_app(seen))
    with pytest.raises(UpstreamFailure) as failed:
        await call(client, f"http://127.0.0.1:{server.port}/v1", key=key)
    assert failed.value.result is AttemptResult.CONNECT_ERROR
    assert "sk-a" not in failed.value.message
    assert seen.peers == []


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_upstreams_are_verified(aiohttp_server, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    seen = Seen()
    server = await aiohttp_server(upstream_app(seen), ssl=server_tls)
    trusting = ssl.create_default_context(cafile=str(cert))
    client = UpstreamClient(Limits(), tls=trusting)
    system = UpstreamClient(Limits())  # the system's CAs: a self-signed certificate is refused
    await client.open()
    await system.open()
    try:
        for _ in range(2):
            assert await call(client, f"https://localhost:{server.port}/v1") == b'{"ok": true}'
        with pytest.raises(UpstreamFailure) as failed:
            await call(system, f"https://localhost:{server.port}/v1")
    finally:
        await client.close()
        await system.close()
    assert failed.value.result is AttemptResult.CONNECT_ERROR
    assert "TLS" in failed.value.message
    assert len(set(seen.peers)) == 1  # the TLS connection was kept alive and reused
    assert seen.hosts == [f"localhost:{server.port}"] * 2


async def test_a_woken_waiter_that_leaves_passes_its_slot_on(aiohttp_server) -> None:
    server = await aiohttp_server(upstream_app(Seen()))
    pool = HttpPool(limit=1, connect_timeout_s=1.0)
    origin = ("http", "127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    held = await pool.acquire(origin, loop.time() + 5)
    first = asyncio.ensure_future(pool.acquire(origin, loop.time() + 5))
    second = asyncio.ensure_future(pool.acquire(origin, loop.time() + 5))
    await asyncio.sleep(0.01)  # both wait for the one slot
    pool.discard(held)  # the slot frees and goes to the first waiter...
    first.cancel()  # ...which is cancelled before it could take it
    try:
        conn = await asyncio.wait_for(second, 1.0)  # the second gets the slot, not a wait until its deadline
        assert pool.open_connections == 1
        pool.discard(conn)
    finally:
        await pool.close()
    assert first.cancelled()
