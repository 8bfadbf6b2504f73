"""A PostgreSQL blip under a running gateway (a real `python -m proxy serve` process): the database
sits behind a TCP proxy this test owns, and the proxy is cut (listener closed, every connection
reset) and later restored. While it is cut: a request that needs a billing hold gets 503
`billing_unavailable` with Retry-After and nothing reaches the upstream; a postpaid workspace's
requests (JSON and a stream) are served from the cached key table; their usage rows are written
once the database is back (docs/operations.md, "Scaling out", failure modes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
import pytest

from proxy.store import Store
from testkit.upstream import FakeUpstream, Profiled
from tests.ops_support import config_data, make_keys, process_gateway, write_config
from tests.pg import fresh_schema

PRICES = {"input": "1.00", "output": "2.00"}
CREDIT = 10_000_000


class TcpProxy:
    """127.0.0.1:PORT → the PostgreSQL server; `cut()` resets every connection and stops listening."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)), asyncio.ensure_future(self._pipe(up_reader, writer))]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)
    netloc = (host[0] + "@" if len(host) == 2 else "") + f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def proxied_store() -> AsyncIterator[tuple[str, str, TcpProxy]]:
    """(direct URL, URL through the proxy, the proxy) of a fresh schema."""
    async with fresh_schema() as url:
        proxy = await TcpProxy(urlsplit(url).port or 5432).start()
        try:
            yield url, through(url, proxy.port), proxy
        finally:
            if proxy._server is not None:
                await proxy.cut()


async def rows(url: str) -> dict[str, tuple[Any, ...]]:
    store = await Store.open(url)
    try:
        found = await store.fetchall("SELECT request_id, outcome, cost_micros, stream FROM usage")
        return {r[0]: tuple(r[1:]) for r in found}
    finally:
        await store.close()


async def test_a_database_blip_refuses_new_holds_and_serves_postpaid_requests(tmp_path: Path) -> None:
    async with FakeUpstream("blip", Profiled()) as up, proxied_store() as (direct, proxied, proxy):
        keys = await make_keys(direct, "pre", "post")
        store = await Store.open(direct)
        try:
            await store.add_ledger_entry("pre", CREDIT, "topup", "blip test", "test")
            await store.set_billing_mode("post", "postpaid")
        finally:
            await store.close()
        data = config_data(up.root)
        data["store"] = {"url": proxied}
        data["billing"] = {"enabled": True, "prices": {"resale/*": PRICES, "cheap/*": PRICES}}
        async with process_gateway(write_config(tmp_path, data)) as gw:
            clients = {name: openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)
                       for name, key in keys.items()}
            try:
                for client in clients.values():  # each key seen once: the gateway's cached key table has it
                    await client.chat.completions.create(model="resale/fast", messages=[{"role": "user", "content": "hi"}])
                await proxy.cut()
                before = len(up.requests)

                with pytest.raises(openai.APIStatusError) as refused:
                    await clients["pre"].chat.completions.create(model="resale/fast",
                                                                 messages=[{"role": "user", "content": "hi"}])
                assert refused.value.status_code == 503 and refused.value.code == "billing_unavailable"
                assert int(refused.value.response.headers["Retry-After"]) >= 1
                body = refused.value.response.json()
                assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["type"] == "api_error"
                assert len(up.requests) == before  # nothing went upstream

                raw = await clients["post"].chat.completions.with_raw_response.create(
                    model="resale/fast", messages=[{"role": "user", "content": "hi"}])
                served = [raw.headers["X-Request-Id"]]
                assert raw.parse().choices[0].message.content
                raw_stream = await clients["post"].chat.completions.with_raw_response.create(
                    model="resale/slow-3-50", stream=True, messages=[{"role": "user", "content": "hi"}])
                served.append(raw_stream.headers["X-Request-Id"])
                text = "".join([c.choices[0].delta.content or "" async for c in raw_stream.parse() if c.choices])
                assert text
                assert len(up.requests) == before + 2
                assert not set(served) & set(await rows(direct))  # not written while the database is away

                await proxy.start()  # the database is back: the queued rows are written
                deadline = time.monotonic() + 30
                while not set(served) <= set(found := await rows(direct)):
                    assert time.monotonic() < deadline, f"rows not written after the database came back: {found}"
                    await asyncio.sleep(0.2)
                for request_id, stream in zip(served, (0, 1), strict=True):
                    outcome, cost, is_stream = found[request_id]
                    assert (outcome, is_stream) == ("ok", stream) and cost > 0
                store = await Store.open(direct)
                try:
                    post = await store.billing_account("post")
                    charged = [r[0] for r in await store.fetchall(
                        "SELECT cost_micros FROM usage WHERE workspace_id = ?", (post.workspace_id,))]
                    assert post.charges_micros == sum(charged) and len(charged) == 3  # warm-up + the two served
                finally:
                    await store.close()
                again = await clients["pre"].chat.completions.create(model="resale/fast",
                                                                     messages=[{"role": "user", "content": "hi"}])
                assert again.choices  # holds work again
            finally:
                for client in clients.values():
                    await client.close()
