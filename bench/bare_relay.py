"""The physical limit of our stack: a bare aiohttp relay with no auth, routing, usage or metrics.

It reads the body, forwards it to the same path on the upstream, and relays the answer chunk by
chunk with `iter_any()`. It must stay this small: it is the yardstick, not a product.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from collections.abc import Callable

import aiohttp
from aiohttp import hdrs, web

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    url = request.app[UPSTREAM] + request.path
    headers = {hdrs.CONTENT_TYPE: "application/json"}
    async with request.app[SESSION].post(url, data=body, headers=headers) as up:
        response = web.StreamResponse(status=up.status, headers={hdrs.CONTENT_TYPE: up.headers[hdrs.CONTENT_TYPE]})
        if up.content_length is not None:
            response.content_length = up.content_length
        await response.prepare(request)
        async for chunk in up.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def session_ctx(app: web.Application):  # reason: aiohttp cleanup-context generator
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        app[SESSION] = session
        yield


async def main(upstream: str, port: int) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", port), backlog=4096)
    await web.SockSite(runner, sock).start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--core", type=int, default=None, help="pin this process to one CPU core")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:  # the gateway's own rule (event_loop: auto): uvloop when installed, so the ratio stays honest
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main(args.upstream, args.port))
    except KeyboardInterrupt:
        pass
