"""SIGHUP to a 2-worker gateway: systemd hears RELOADING=1, then READY=1 only once every worker has
confirmed it serves the new file (or after a bounded wait that names the worker that did not
answer); a file the supervisor refuses reaches no worker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp

from proxy.supervisor import RELOAD_WAIT_S
from testkit.gateway import GatewayProcess
from tests.ops_support import (
    bearer,
    chat,
    config_data,
    fake_upstream,
    make_keys,
    process_gateway,
    write_config,
)
from tests.test_workers import children


async def _statuses(url: str, key: str, model: str, count: int) -> list[int]:
    """`count` requests one after another, each on a fresh connection (the kernel picks a worker for each)."""
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as session:
        statuses = []
        for _ in range(count):
            async with session.post(f"{url}/v1/chat/completions", json=chat(model), headers=bearer(key)) as r:
                await r.read()
                statuses.append(r.status)
        return statuses


async def _message(listener: socket.socket, timeout: float = 60) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(listener, 4096), timeout)


def _with_route(data: dict[str, Any], model: str) -> dict[str, Any]:
    models = {**data["lanes"]["resale"]["models"], model: {"upstreams": [{"provider": "fake"}]}}
    return {**data, "lanes": {**data["lanes"], "resale": {"models": models}}}


def _after(gw: GatewayProcess, first: str, then: str, start: int) -> bool:
    """Every line with `first` logged after line `start` comes before the first line with `then`."""
    lines = gw.lines[start:]
    cut = next(i for i, line in enumerate(lines) if then in line)
    return sum(first in line for line in lines[:cut]) == 2 and not any(first in line for line in lines[cut:])


async def test_reload_is_ready_only_once_every_worker_serves_the_new_config(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.setblocking(False)
        async with fake_upstream() as up:
            data = config_data(up, workers=2)
            config = write_config(tmp_path, data)
            key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
            async with process_gateway(config, notify_socket=tmp_path / "notify.sock") as gw:
                assert await _message(listener) == b"READY=1"
                assert "limits apply per worker: 2 workers × limits.max_concurrent_requests 2000 = up to 4000" in gw.output
                assert set(await _statuses(gw.url, key, "resale/extra", 6)) == {404}

                start = len(gw.lines)
                write_config(tmp_path, _with_route(data, "extra"))
                gw.signal(signal.SIGHUP)
                assert await _message(listener) == b"RELOADING=1"
                assert await _message(listener) == b"READY=1"
                assert await _statuses(gw.url, key, "resale/extra", 20) == [200] * 20  # every worker has it
                await gw.wait_for_line("reload confirmed by 2 of 2 workers")
                assert _after(gw, "config reloaded from", "reload confirmed by 2 of 2 workers", start)

                broken = _with_route(data, "extra")
                broken["pool"] = {"max_ejected_share": 5}
                write_config(tmp_path, broken)
                gw.signal(signal.SIGHUP)
                await gw.wait_for_line("config reload refused by the supervisor")
                assert await _statuses(gw.url, key, "resale/extra", 20) == [200] * 20  # the old config everywhere
                assert await _statuses(gw.url, key, "resale/later", 4) == [404] * 4

                stuck = children(gw.proc.pid)[0]
                os.kill(stuck, signal.SIGSTOP)  # a worker that cannot answer
                try:
                    write_config(tmp_path, _with_route(_with_route(data, "extra"), "later"))
                    gw.signal(signal.SIGHUP)
                    assert await _message(listener) == b"RELOADING=1"
                    assert await _message(listener, RELOAD_WAIT_S + 30) == b"READY=1"
                    await gw.wait_for_line(rf"worker \d \(pid {stuck}\) did not confirm the reload within")
                    assert "reload confirmed by 1 of 2 workers" in gw.output
                finally:
                    os.kill(stuck, signal.SIGCONT)
                async with asyncio.timeout(30):  # the late one applies it too, once it runs again
                    while gw.output.count("config reloaded from") < 4:
                        await asyncio.sleep(0.05)
                assert await _statuses(gw.url, key, "resale/later", 20) == [200] * 20
