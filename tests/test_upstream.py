"""The upstream client against a real server: what it sends and what it must never carry over."""

from __future__ import annotations

from aiohttp import web

from proxy.config import Limits
from proxy.relay.upstream import UpstreamClient
from proxy.types import Endpoint, Secret, UpstreamTarget


async def test_upstream_cookies_are_never_replayed_to_later_requests(aiohttp_server) -> None:
    """One upstream session serves every tenant: a Set-Cookie from one answer must not ride along
    on the next request (maybe another workspace's). Reached by host name, as in production:
    aiohttp's default jar ignores cookies from bare IP addresses, so 127.0.0.1 would hide it."""
    seen: list[str | None] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        return web.json_response({"ok": True}, headers={"Set-Cookie": "tenant=ws-a; Path=/"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = UpstreamClient(Limits())
    await client.open()
    try:
        for tenant in ("ws-a", "ws-b"):
            target = UpstreamTarget("up", "http", f"http://localhost:{server.port}/v1", Secret(f"sk-{tenant}"), "m")
            reply = await client.send(target, Endpoint.CHAT, b"{}", {}, stream=False)
            assert reply.status == 200
            await reply.read(1024)
            reply.release()
    finally:
        await client.close()
    assert seen == [None, None]
