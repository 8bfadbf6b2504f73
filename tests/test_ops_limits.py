"""Admission limits: the global in-flight cap (fast 503), per-workspace requests per minute and
concurrent streams (429 with Retry-After), and the timeouts against slow clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.config import RateLimits
from proxy.errors import WorkspaceLimitedError
from proxy.http.limits import EffectiveLimits, Limiter, effective_limits
from proxy.types import ShedReason
from proxy.workspaces.auth import WorkspaceLimits
from tests.ops_support import (
    app_gateway,
    bearer,
    chat,
    config_data,
    fake_upstream,
    make_keys,
    process_gateway,
    read_stream,
    sample,
    write_config,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("defaults", "override", "expected"),
    [
        (RateLimits(), None, EffectiveLimits(None, None)),
        (RateLimits(60, 4), None, EffectiveLimits(60, 4)),
        (RateLimits(60, 4), WorkspaceLimits(None, None), EffectiveLimits(60, 4)),
        (RateLimits(60, 4), WorkspaceLimits(600, None), EffectiveLimits(600, 4)),
        (RateLimits(None, None), WorkspaceLimits(None, 2), EffectiveLimits(None, 2)),
    ],
)
def test_effective_limits(defaults: RateLimits, override: WorkspaceLimits | None, expected: EffectiveLimits) -> None:
    assert effective_limits(defaults, override) == expected


def test_rpm_bucket_bursts_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = EffectiveLimits(requests_per_minute=2, concurrent_streams=None)
    limiter.admit(1, False, limits)
    limiter.admit(1, False, limits)
    with pytest.raises(WorkspaceLimitedError) as refused:
        limiter.admit(1, False, limits)
    assert refused.value.reason is ShedReason.WORKSPACE_RPM
    assert refused.value.headers() == {"Retry-After": "30"}  # one token per 30 s at 2 per minute
    limiter.admit(2, False, limits)  # another workspace has its own bucket
    clock.now += 29.0
    with pytest.raises(WorkspaceLimitedError):
        limiter.admit(1, False, limits)  # refused requests took no token: still 1 s to go
    clock.now += 1.0
    limiter.admit(1, False, limits)
    clock.now += 3600
    for _ in range(2):  # an idle hour refills to the burst size, not beyond
        limiter.admit(1, False, limits)
    with pytest.raises(WorkspaceLimitedError):
        limiter.admit(1, False, limits)


def test_stream_slots_are_held_until_released() -> None:
    limiter = Limiter(Clock())
    limits = EffectiveLimits(requests_per_minute=None, concurrent_streams=1)
    ticket = limiter.admit(7, True, limits)
    with pytest.raises(WorkspaceLimitedError) as refused:
        limiter.admit(7, True, limits)
    assert refused.value.reason is ShedReason.WORKSPACE_STREAMS and refused.value.status == 429
    limiter.release(limiter.admit(7, False, limits))  # a non-stream request needs no stream slot
    limiter.release(ticket)
    assert limiter.streams(7) == 0
    limiter.admit(7, True, limits)


def test_global_cap_refuses_at_once() -> None:
    limiter = Limiter()
    limiter.enter(2)
    limiter.enter(2)
    with pytest.raises(Exception) as refused:
        limiter.enter(2)
    assert refused.value.status == 503 and refused.value.code == "overloaded"
    limiter.leave()
    limiter.enter(2)


async def _open_stream(session: aiohttp.ClientSession, url: str, key: str, model: str) -> aiohttp.ClientResponse:
    response = await session.post(url + "/v1/chat/completions", json=chat(model, stream=True), headers=bearer(key))
    assert response.status == 200
    await response.content.readuntil(b"\n\n")  # streaming now
    return response


async def test_cap_answers_503_while_streams_in_flight_continue(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, limits={"max_concurrent_requests": 2, "max_workspace_share": 1.0}))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            streams = [await _open_stream(session, url, key, "resale/slow-10-100") for _ in range(2)]
            started = time.monotonic()
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast"), headers=bearer(key)) as r:
                refused_in = time.monotonic() - started
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
                assert (await r.json())["error"]["code"] == "overloaded"
            for response in streams:
                assert (await read_stream(response))[-1] == b"[DONE]"
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast"), headers=bearer(key)) as r:
                assert r.status == 200  # capacity is back once the streams ended
            async with session.get(url + "/metrics") as r:
                text = await r.text()
    assert refused_in < 0.5  # refused at once, not queued behind the streams
    assert sample(text, "okm_requests_shed_total", reason="overloaded") == 1
    assert sample(text, "okm_requests_total", lane="none", endpoint="chat/completions", status="503") == 1


async def test_workspace_requests_per_minute(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, rate_limits={"requests_per_minute": 2}))
        keys = await make_keys(tmp_path / "okm.sqlite3", "acme", "other", limits={"other": {"rpm_limit": 100}})
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(3):
                async with session.post(url + "/v1/chat/completions", json=chat("resale/fast"),
                                        headers=bearer(keys["acme"])) as r:
                    statuses.append(r.status)
                    headers, body = r.headers, await r.json()
            for _ in range(3):  # the store's override for `other` lifts the configured default
                async with session.post(url + "/v1/chat/completions", json=chat("resale/fast"),
                                        headers=bearer(keys["other"])) as r:
                    assert r.status == 200
            async with session.get(url + "/metrics") as r:
                text = await r.text()
    assert statuses == [200, 200, 429]
    assert body["error"]["code"] == "rate_limited" and "2 requests per minute" in body["error"]["message"]
    assert 29 <= int(headers["Retry-After"]) <= 30
    assert sample(text, "okm_requests_shed_total", reason="workspace_rpm") == 1


async def test_workspace_concurrent_streams(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, rate_limits={"concurrent_streams": 5}))
        keys = await make_keys(tmp_path / "okm.sqlite3", "acme", "other", limits={"acme": {"stream_limit": 1}})
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            first = await _open_stream(session, url, keys["acme"], "resale/slow-10-50")
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast", stream=True),
                                    headers=bearer(keys["acme"])) as r:
                assert r.status == 429
                assert r.headers["Retry-After"] == "1"
                assert (await r.json())["error"]["code"] == "rate_limited"
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast"),
                                    headers=bearer(keys["acme"])) as r:
                assert r.status == 200  # a non-stream request needs no stream slot
            other = await _open_stream(session, url, keys["other"], "resale/slow-3-50")  # default: 5
            assert (await read_stream(first))[-1] == b"[DONE]"
            await read_stream(other)
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast", stream=True),
                                    headers=bearer(keys["acme"])) as r:
                assert r.status == 200  # the slot came back when the first stream ended
                await r.read()
            async with session.get(url + "/metrics") as r:
                text = await r.text()
    assert sample(text, "okm_requests_shed_total", reason="workspace_streams") == 1


async def test_slow_headers_and_slow_bodies_are_cut(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        limits = {"client_header_timeout_s": 1, "client_body_timeout_s": 1}
        config = write_config(tmp_path, config_data(up, limits=limits))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with process_gateway(config) as gw:
            host, port = gw.url.removeprefix("http://").split(":")
            # slowloris: a header line every 0.3 s never completes the request
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            closed_after = None
            for i in range(20):
                await asyncio.sleep(0.3)
                if reader.at_eof() or writer.is_closing():
                    break
                try:
                    writer.write(f"X-Slow-{i}: y\r\n".encode())
                    await writer.drain()
                    if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                        break
                except (ConnectionError, TimeoutError):
                    continue
            closed_after = time.monotonic() - started
            writer.close()
            # slow body: the headers promise 100 bytes, 10 arrive
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":".encode())
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
    assert closed_after is not None and closed_after < 3.0  # 1 s limit plus aiohttp's timer granularity
    assert status_line.startswith(b"HTTP/1.1 408")
