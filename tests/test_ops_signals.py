"""Signals on a real `python -m proxy serve` process: SIGHUP reloads (a broken file changes nothing),
SIGTERM drains (readiness fails, the listener closes, streams finish, usage is written, exit 0),
and a stream still running at the drain deadline ends with an in-band error."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.relay.drain import Drain, DrainDeadline
from proxy.types import Phase
from tests.ops_support import (
    bearer,
    chat,
    config_data,
    fake_upstream,
    make_keys,
    process_gateway,
    read_stream,
    sample,
    usage_rows,
    write_config,
)


async def _stream(session: aiohttp.ClientSession, url: str, key: str, model: str) -> aiohttp.ClientResponse:
    response = await session.post(url + "/v1/chat/completions", json=chat(model, stream=True), headers=bearer(key))
    assert response.status == 200
    await response.content.readuntil(b"\n\n")
    return response


async def _post(session: aiohttp.ClientSession, url: str, key: str, model: str) -> int:
    async with session.post(url + "/v1/chat/completions", json=chat(model), headers=bearer(key)) as response:
        await response.read()
        return response.status


async def test_sighup_reload_keeps_serving_on_a_broken_file_and_applies_a_good_one(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        good = config_data(up)
        config = write_config(tmp_path, good)
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with process_gateway(config) as gw, aiohttp.ClientSession() as session:
            broken = config_data(up)
            broken["lanes"]["cheap"]["pool"][0]["weight"] = -1
            write_config(tmp_path, broken)
            gw.signal(signal.SIGHUP)
            refused = await gw.wait_for_line("config reload refused")
            assert "lanes.cheap.pool[0].weight: must be > 0" in refused
            assert await _post(session, gw.url, key, "resale/fast") == 200  # the last good config serves

            in_flight = await _stream(session, gw.url, key, "resale/slow-20-100")
            changed = config_data(up, listen={"host": "127.0.0.1", "port": 1})
            changed["lanes"]["cheap"]["pool"][0]["name"] = "pool-renamed"
            changed["lanes"]["resale"]["models"] = {"fast": {"upstreams": [{"provider": "fake"}]},
                                                    "added-model": {"upstreams": [{"provider": "fake"}]}}
            write_config(tmp_path, changed)
            gw.signal(signal.SIGHUP)
            await gw.wait_for_line("config reloaded from")
            async with session.get(gw.url + "/v1/models", headers=bearer(key)) as r:
                models = {m["id"] for m in (await r.json())["data"]}
            assert "resale/added-model" in models and "resale/slow-20-100" not in models
            assert await _post(session, gw.url, key, "resale/added-model") == 200
            assert await _post(session, gw.url, key, "resale/slow-20-100") == 404
            # the stream that began before the reload finishes on the config it started with
            assert (await read_stream(in_flight))[-1] == b"[DONE]"
            async with session.get(gw.url + "/metrics") as r:
                text = await r.text()
            gw.signal(signal.SIGTERM)
            assert await gw.wait() == 0
    assert sample(text, "okm_config_reloads_total", result="failed") == 1
    assert sample(text, "okm_config_reloads_total", result="ok") == 1
    assert sample(text, "okm_pool_account_healthy", account="pool-renamed") == 1
    assert 'account="pool-ok"' not in text  # an account the reload removed leaves the gauge
    assert "listen changed; it takes effect only after a restart" in gw.output


async def test_sigterm_drains_streams_in_flight_and_exits_0_with_usage_written(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, drain={"deadline_s": 15, "unready_delay_s": 0.5}))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with process_gateway(config) as gw, aiohttp.ClientSession() as session, aiohttp.ClientSession() as warm:
            streams = [await _stream(session, gw.url, key, "resale/slow-20-100") for _ in range(3)]
            async with warm.get(gw.url + "/healthz") as r:  # leaves an idle keep-alive connection
                assert r.status == 200
            signalled = time.monotonic()
            gw.signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as fresh:  # a new connection, as a load balancer's probe
                async with fresh.get(gw.url + "/readyz") as r:
                    assert r.status == 503 and (await r.json())["status"] == "draining"
                await gw.wait_for_line("listener closed")
                with pytest.raises(aiohttp.ClientConnectorError):
                    await fresh.get(gw.url + "/healthz")
            async with warm.post(gw.url + "/v1/chat/completions", json=chat("resale/fast"), headers=bearer(key)) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"  # late, on the old connection
                assert r.headers["Connection"] == "close" and "shutting down" in (await r.json())["error"]["message"]
            ends = [await read_stream(s) for s in streams]
            assert await gw.wait() == 0
            stopped_after = time.monotonic() - signalled
    for events in ends:
        assert events[-1] == b"[DONE]" and len(events) == 21  # 19 content events left, the stop chunk, [DONE]
    assert stopped_after < 8
    rows = usage_rows(tmp_path / "okm.sqlite3")
    assert [(r["outcome"], r["status"], r["completion_tokens"]) for r in rows] == [("ok", 200, 20)] * 3


async def test_a_stream_running_at_the_drain_deadline_ends_with_an_inband_error(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, drain={"deadline_s": 1}))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with process_gateway(config) as gw, aiohttp.ClientSession() as session:
            stream = await _stream(session, gw.url, key, "resale/slow-80-100")
            signalled = time.monotonic()
            gw.signal(signal.SIGTERM)
            events = await read_stream(stream)
            cut_after = time.monotonic() - signalled
            assert await gw.wait() == 0
    assert b"[DONE]" not in events
    error = orjson.loads(events[-1])["error"]
    assert error["code"] == "gateway_restarting" and "drain deadline" in error["message"]
    assert 0.9 < cut_after < 3
    assert "drain deadline reached: 1 streams end with an in-band error" in gw.output
    (row,) = usage_rows(tmp_path / "okm.sqlite3")
    assert row["outcome"] == "interrupted" and row["status"] == 200


async def test_a_second_sigterm_cuts_at_once(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, drain={"deadline_s": 30}))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with process_gateway(config) as gw, aiohttp.ClientSession() as session:
            stream = await _stream(session, gw.url, key, "resale/slow-80-100")
            gw.signal(signal.SIGTERM)
            await gw.wait_for_line("listener closed")
            gw.signal(signal.SIGTERM)
            events = await read_stream(stream)
            assert await asyncio.wait_for(gw.wait(), 5) == 0
    assert orjson.loads(events[-1])["error"]["code"] == "gateway_restarting"


async def test_systemd_is_notified_of_ready_reload_and_stop(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.setblocking(False)

        async def message() -> bytes:
            return await asyncio.wait_for(loop.sock_recv(listener, 4096), 10)

        async with fake_upstream() as up:
            config = write_config(tmp_path, config_data(up))
            async with process_gateway(config, notify_socket=tmp_path / "notify.sock") as gw:
                assert await message() == b"READY=1"
                gw.signal(signal.SIGHUP)
                assert [await message(), await message()] == [b"RELOADING=1", b"READY=1"]
                gw.signal(signal.SIGTERM)
                assert await message() == b"STOPPING=1"
                assert await gw.wait() == 0


async def test_a_failed_start_exits_1_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, config_data("http://127.0.0.1:9", listen={"host": "127.0.0.1", "port": port}))
        gw = process_gateway(config)
        assert await gw.run_to_exit(20) == 1
    assert "cannot start:" in gw.output and "Traceback" not in gw.output


async def test_drain_cuts_every_watched_stream_and_any_that_starts_later() -> None:
    drain = Drain()

    async def stream() -> str:
        try:
            async with drain.watch():
                await asyncio.sleep(30)
        except DrainDeadline:
            return "cut"
        return "finished"

    async def quick() -> str:
        async with drain.watch():
            await asyncio.sleep(0)
        return "finished"

    running = [asyncio.create_task(stream()) for _ in range(3)]
    assert await quick() == "finished"  # before the cut, a watch changes nothing
    await asyncio.sleep(0)
    assert drain.streams == 3 and drain.phase is not Phase.CUTTING
    assert drain.cut() == 3
    assert drain.cut() == 3  # a second cut (a second SIGTERM) is harmless
    assert await asyncio.wait_for(asyncio.gather(*running), 2) == ["cut"] * 3
    assert drain.streams == 0
    assert await asyncio.wait_for(stream(), 2) == "cut"  # a stream that starts after the cut


def test_event_loop_choice() -> None:
    """`event_loop: asyncio` is asyncio's own loop; `uvloop` needs the package, `auto` takes it if there."""
    from proxy.errors import ConfigError
    from proxy.server import loop_factory

    assert loop_factory("asyncio") is None
    try:
        import uvloop
    except ImportError:
        assert loop_factory("auto") is None
        with pytest.raises(ConfigError, match="uvloop is not installed"):
            loop_factory("uvloop")
    else:
        assert loop_factory("auto") is uvloop.new_event_loop is loop_factory("uvloop")
