"""Per-workspace limits hold across processes: 2 workers on one SQLite file, and 2 gateway
processes ("hosts") on one PostgreSQL. A 60 RPM limit admits 60 in all, not 60 per process;
a 3-stream limit admits 3 streams in all; a balance that covers 10 holds admits at most 10 of 50
concurrent requests over both hosts."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from proxy.store import Store
from testkit.upstream import FakeUpstream, Profiled
from tests.ops_support import bearer, chat, config_data, fake_upstream, make_keys, process_gateway, write_config
from tests.pg import fresh_schema

BURST = 90


async def _fire(urls: list[str], key: str, model: str, stream: bool, count: int,
                extra: dict[str, Any] | None = None) -> list[int]:
    """`count` requests at once, spread over `urls`, each on its own connection."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i: int) -> int:
            url = urls[i % len(urls)]
            body = {**chat(model, stream), **(extra or {})}
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=bearer(key)) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(i) for i in range(count))))


@contextlib.asynccontextmanager
async def _two_hosts(tmp_path: Path, up: str, limits: dict[str, int]) -> AsyncIterator[tuple[list[str], str]]:
    async with fresh_schema() as url:
        data = config_data(up)
        data["store"] = {"url": url}
        key = (await make_keys(url, "acme", limits={"acme": limits}))["acme"]
        one = write_config(tmp_path, data, "one.yaml")
        two = write_config(tmp_path, data, "two.yaml")
        async with process_gateway(one) as a, process_gateway(two) as b:
            yield [a.url, b.url], key


@contextlib.asynccontextmanager
async def _two_workers(tmp_path: Path, up: str, limits: dict[str, int]) -> AsyncIterator[tuple[list[str], str]]:
    key = (await make_keys(tmp_path / "okm.sqlite3", "acme", limits={"acme": limits}))["acme"]
    config = write_config(tmp_path, config_data(up, workers=2))
    async with process_gateway(config) as gw:
        await gw.wait_for_line("all 2 workers ready", timeout=60)
        yield [gw.url], key


def _check_rpm(statuses: list[int], elapsed: float) -> None:
    ok = statuses.count(200)
    assert statuses.count(200) + statuses.count(429) == BURST, statuses
    assert 60 <= ok <= 60 + math.ceil(elapsed), (ok, elapsed)  # refill: 1 token a second


async def test_rpm_limit_is_shared_by_two_hosts_on_postgresql(tmp_path: Path) -> None:
    async with fake_upstream() as up, _two_hosts(tmp_path, up, {"rpm_limit": 60}) as (urls, key):
        started = time.monotonic()
        statuses = await _fire(urls, key, "resale/fast", False, BURST)
        _check_rpm(statuses, time.monotonic() - started)


async def test_rpm_limit_is_shared_by_two_workers_on_sqlite(tmp_path: Path) -> None:
    async with fake_upstream() as up, _two_workers(tmp_path, up, {"rpm_limit": 60}) as (urls, key):
        started = time.monotonic()
        statuses = await _fire(urls, key, "resale/fast", False, BURST)
        _check_rpm(statuses, time.monotonic() - started)


async def _check_streams(urls: list[str], key: str) -> None:
    statuses = await _fire(urls, key, "resale/slow-20-100", True, 10)  # each stream runs ~2 s
    assert statuses.count(200) == 3 and statuses.count(429) == 7, statuses
    await asyncio.sleep(0.5)  # a slot frees when the handler has finished, just after the client's last byte
    assert await _fire(urls, key, "resale/fast", True, 2) == [200, 200]  # the slots came back


async def test_stream_limit_is_shared_by_two_hosts_on_postgresql(tmp_path: Path) -> None:
    async with fake_upstream() as up, _two_hosts(tmp_path, up, {"stream_limit": 3}) as (urls, key):
        await _check_streams(urls, key)


async def test_stream_limit_is_shared_by_two_workers_on_sqlite(tmp_path: Path) -> None:
    async with fake_upstream() as up, _two_workers(tmp_path, up, {"stream_limit": 3}) as (urls, key):
        await _check_streams(urls, key)


HOLD_MICROS = 10_000  # max_tokens 1000 at 10.00 per 1M output tokens; input priced at 0


async def test_a_balance_for_10_holds_admits_at_most_10_across_two_hosts(tmp_path: Path) -> None:
    async with fake_upstream() as up, fresh_schema() as url:
        data = config_data(up)
        data["store"] = {"url": url}
        data["billing"] = {"enabled": True, "prices": {"resale/*": {"input": "0", "output": "10.00"},
                                                       "cheap/*": {"input": "0", "output": "10.00"}}}
        key = (await make_keys(url, "acme"))["acme"]
        store = await Store.open(url)
        try:
            await store.add_ledger_entry("acme", 10 * HOLD_MICROS + HOLD_MICROS // 2, "topup", "ten holds", "test")
        finally:
            await store.close()
        one, two = write_config(tmp_path, data, "one.yaml"), write_config(tmp_path, data, "two.yaml")
        async with process_gateway(one) as a, process_gateway(two) as b:
            statuses = await _fire([a.url, b.url], key, "resale/slow-20-100", True, 50, {"max_tokens": 1000})
    assert statuses.count(200) + statuses.count(402) == 50, statuses
    assert statuses.count(200) == 10, statuses  # all 50 overlap: exactly the 10 the balance covers


async def test_a_pool_cooldown_learned_by_one_worker_applies_to_all(tmp_path: Path) -> None:
    fake = FakeUpstream("pool", Profiled())  # `/limited/v1` answers 429 with Retry-After: 30, `/ok/v1` serves

    def limited() -> int:
        return sum(1 for r in fake.requests if r.path.startswith("/limited/"))

    async with fake:
        up = fake.root
        data = config_data(up, workers=2)
        data["lanes"]["cheap"]["pool"] = [
            {"name": "pool-limited", "base_url": f"{up}/limited/v1", "api_key_env": "POOL_KEY", "models": ["fast"]},
            {"name": "pool-ok", "base_url": f"{up}/ok/v1", "api_key_env": "POOL_KEY", "models": ["fast"]},
        ]
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with process_gateway(write_config(tmp_path, data)) as gw:
            await gw.wait_for_line("all 2 workers ready", timeout=60)
            async with asyncio.timeout(30):
                while limited() == 0:  # until one worker has met the 429 and cooled the account
                    assert await _fire([gw.url], key, "cheap/fast", False, 1) == [200]
            await asyncio.sleep(1.5)  # the cool-down reaches the other worker within about a second
            assert await _fire([gw.url], key, "cheap/fast", False, 40) == [200] * 40
    assert limited() == 1, [r.path for r in fake.requests]  # the other worker never tried the cooled account
