"""`workers: N`: one supervisor, N `python -m proxy serve` workers on one port (SO_REUSEPORT).

Real processes and signals: a killed worker is restarted and counted, metrics are totals over
all workers counted once, SIGHUP reloads all (a broken file is refused by all), SIGTERM drains
all and exits 0, and systemd hears READY only once every worker is ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.ops_support import (
    ENV,
    bearer,
    chat,
    config_data,
    fake_upstream,
    make_keys,
    process_gateway,
    sample,
    write_config,
)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


async def _until(check: Callable[[], bool], timeout: float = 45.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def _requests(url: str, key: str, count: int) -> list[int]:
    # a fresh connection per request: the kernel picks a worker for every one
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as session:
        statuses = []
        for _ in range(count):
            async with session.post(f"{url}/v1/chat/completions", json=chat("resale/fast"), headers=bearer(key)) as r:
                await r.read()
                statuses.append(r.status)
        return statuses


async def _scrape(url: str) -> str:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, session.get(f"{url}/metrics") as r:
        return await r.text()


async def _total(url: str) -> float:
    return sample(await _scrape(url), "okm_requests_total", endpoint="chat/completions", lane="resale", status="200")


async def test_two_workers_share_a_port_restart_reload_and_stop(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.setblocking(False)
        async with fake_upstream() as up:
            data = config_data(up, workers=2)
            config = write_config(tmp_path, data)
            keys = await make_keys(tmp_path / "okm.sqlite3", "acme")
            async with process_gateway(config, notify_socket=tmp_path / "notify.sock") as gw:

                assert await asyncio.wait_for(loop.sock_recv(listener, 4096), 60) == b"READY=1"
                assert "all 2 workers ready" in gw.output  # READY came after every worker was ready
                workers = children(gw.proc.pid)
                assert len(workers) == 2
                assert await _requests(gw.url, keys["acme"], 40) == [200] * 40
                await asyncio.sleep(1.2)  # live gauges are written every second
                scrapes = [await _total(gw.url) for _ in range(6)]  # lands on either worker
                assert scrapes == [40.0] * 6


                assert sample(await _scrape(gw.url), "okm_worker_restarts_total") == 0.0

                os.kill(workers[0], signal.SIGKILL)  # connections already queued on it are reset (documented)
                await gw.wait_for_line(r"worker \d \(pid \d+\) died with status -9 .* restart 1 in", timeout=30)
                assert await _requests(gw.url, keys["acme"], 20) == [200] * 20  # the other one serves
                await _until(lambda: len(children(gw.proc.pid)) == 2 and workers[0] not in children(gw.proc.pid))
                await _until(lambda: gw.output.count("serving on") == 3)
                assert await _requests(gw.url, keys["acme"], 20) == [200] * 20
                await asyncio.sleep(1.2)
                assert sample(await _scrape(gw.url), "okm_worker_restarts_total") == 1.0
                assert await _total(gw.url) == 80.0  # the dead worker's counts stay, once

                config.write_text(config.read_text() + "\nbogus: [\n")
                gw.signal(signal.SIGHUP)
                await gw.wait_for_line("config reload refused by the supervisor", timeout=30)
                assert await _requests(gw.url, keys["acme"], 4) == [200] * 4
                write_config(tmp_path, data)
                gw.signal(signal.SIGHUP)
                await _until(lambda: gw.output.count("config reloaded from") == 2)


                survivors = children(gw.proc.pid)
                gw.signal(signal.SIGTERM)
                assert await gw.wait() == 0
                assert not [pid for pid in survivors if Path(f"/proc/{pid}").exists()]
                assert gw.output.count("INFO okm.server: stopped") == 2
                messages = []
                while True:
                    try:
                        messages.append(listener.recv(4096))
                    except BlockingIOError:
                        break
                assert b"STOPPING=1" in messages


async def test_serve_workers_flag_overrides_the_config_and_bad_values_are_refused(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, workers=1))
        for bad in ("0", "many"):
            gw = process_gateway(config, workers=bad)
            assert await gw.run_to_exit(20) == 1
            assert "--workers: must be 'auto' or a whole number from 1 to" in gw.output


@pytest.mark.parametrize("value", ["auto", 3])
def test_workers_in_the_config(tmp_path: Path, value: object) -> None:
    from proxy.config import load_config

    config = load_config(write_config(tmp_path, config_data("http://127.0.0.1:9", workers=value)), ENV)
    assert config.workers == (os.cpu_count() if value == "auto" else value)


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up, workers=2))
        async with process_gateway(config) as gw:
            await gw.wait_for_line("all 2 workers ready", timeout=60)
            workers = children(gw.proc.pid)
            assert len(workers) == 2
            gw.proc.kill()
            await gw.wait()
            await _until(lambda: not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                                      and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]])
