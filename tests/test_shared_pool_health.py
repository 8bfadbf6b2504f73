"""Pool-account health holds across processes: 2 workers on one SQLite file, and 2 gateway processes
("hosts") on one PostgreSQL. An account that answers 500, times out or answers 401 to a request one
process served is skipped by the other process within about a second (what the fake account
receives says so), and comes back for both when its ejection ends (a 401: after a reload).

The fake upstream records, for each request an account receives, which gateway process sent it
(the pid owning the TCP connection, found in /proc)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testkit import payloads
from testkit.upstream import Auto, Behaviour, FakeUpstream, Received, Reply
from tests.ops_support import config_data, make_keys, process_gateway, write_config
from tests.pg import fresh_schema
from tests.test_shared_limits import _fire
from tests.test_workers import children

EJECT_S = 6.0  # long enough to fire a burst inside it on a loaded machine
SPREAD_S = 1.5  # what one process learns, every other applies within about a second (0.25 s rounds), with slack for a loaded machine


def _socket_inodes(local_port: int, remote_port: int) -> set[str]:
    """The inodes of the TCP sockets from `local_port` to `remote_port` on this machine."""
    found, local, remote = set(), f":{local_port:04X}", f":{remote_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(local) and fields[2].endswith(remote):
                    found.add(fields[9])
    return found


def _owner(inodes: set[str], pids: list[int]) -> int | None:
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").rstrip("]") in inodes:
                        return pid
    return None


MODES: dict[str, Behaviour] = {
    "ok": Auto(),
    "500": Reply(500, payloads.openai_error("boom", "server_error")),
    "401": Reply(401, payloads.openai_error("bad key", code="invalid_api_key")),
    "timeout": Reply(delay_s=5),  # past first_byte_timeout_s
}


@dataclass
class Upstream:
    """Two pool accounts: `flaky` (behaviour chosen by `mode`) and `steady` (always answers)."""

    flaky: FakeUpstream
    steady: FakeUpstream
    pids: list[int] = field(default_factory=list)  # the gateway processes that may call it
    hits: list[int | None] = field(default_factory=list)  # the sender of each request to `flaky`
    owners: dict[int, int | None] = field(default_factory=dict)  # connection → pid (keep-alive reuses it)

    def set_mode(self, name: str) -> None:
        self.flaky.default = MODES[name]

    async def sender(self, request: Received) -> None:
        peer, port, connection = request.peer_port, request.local_port, request.connection
        if self.owners.get(connection) is None:  # off the loop: the other account must keep answering at once
            self.owners[connection] = await asyncio.to_thread(lambda: _owner(_socket_inodes(peer, port), self.pids))
        self.hits.append(self.owners[connection])


@contextlib.asynccontextmanager
async def _upstream() -> AsyncIterator[Upstream]:
    async with FakeUpstream("pool-flaky") as flaky, FakeUpstream("pool-steady") as steady:
        up = Upstream(flaky, steady)
        flaky.observe = up.sender
        yield up


def _config(up: Upstream, **sections: Any) -> dict[str, Any]:
    data = config_data(up.steady.root, **sections)
    data["limits"] = {**data["limits"], "first_byte_timeout_s": 2}
    data["pool"] = {"eject_base_s": EJECT_S, "max_ejected_share": 0.5}
    data["lanes"]["cheap"]["pool"] = [
        {"name": "pool-flaky", "base_url": up.flaky.url, "api_key_env": "POOL_KEY", "models": ["fast"]},
        {"name": "pool-steady", "base_url": up.steady.url, "api_key_env": "POOL_KEY", "models": ["fast"]},
    ]
    return data


@dataclass
class Gateways:
    urls: list[str]
    key: str
    processes: list[Any]  # GatewayProcess: what a reload is sent to
    reloads: int  # "config reloaded from" lines one SIGHUP to each process yields


@contextlib.asynccontextmanager
async def _two_workers(tmp_path: Path, up: Upstream) -> AsyncIterator[Gateways]:
    key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
    async with process_gateway(write_config(tmp_path, _config(up, workers=2))) as gw:
        await gw.wait_for_line("all 2 workers ready", timeout=60)
        up.pids = children(gw.proc.pid)
        yield Gateways([gw.url], key, [gw], 2)


@contextlib.asynccontextmanager
async def _two_hosts(tmp_path: Path, up: Upstream) -> AsyncIterator[Gateways]:
    async with fresh_schema() as url:
        data = _config(up)
        data["store"] = {"url": url}
        key = (await make_keys(url, "acme"))["acme"]
        async with process_gateway(write_config(tmp_path, data, "one.yaml")) as a, \
                process_gateway(write_config(tmp_path, data, "two.yaml")) as b:
            up.pids = [a.proc.pid, b.proc.pid]
            yield Gateways([a.url, b.url], key, [a, b], 1)


async def _check(gw: Gateways, up: Upstream, mode: str) -> None:
    up.set_mode(mode)
    async with asyncio.timeout(60):
        while not up.hits:  # until one process has met the failure (the client still gets 200: failover)
            assert await _fire(gw.urls, gw.key, "cheap/fast", False, 1) == [200]
    learned_at, learner = time.monotonic(), up.hits[0]
    assert learner in up.pids
    await asyncio.sleep(SPREAD_S)
    assert await _fire(gw.urls, gw.key, "cheap/fast", False, 40) == [200] * 40  # over every process
    assert up.hits == [learner], up.hits  # no other process tried the account again
    assert time.monotonic() - learned_at < EJECT_S, "the burst outlived the ejection: the check proves nothing"
    up.set_mode("ok")
    if mode == "401":  # out until a reload builds a new pool
        for process in gw.processes:
            process.signal(signal.SIGHUP)
        async with asyncio.timeout(30):
            while any(p.output.count("config reloaded from") < gw.reloads for p in gw.processes):
                await asyncio.sleep(0.05)
    else:
        await asyncio.sleep(max(0.0, learned_at + EJECT_S + 0.5 - time.monotonic()))
    up.hits.clear()
    assert await _fire(gw.urls, gw.key, "cheap/fast", False, 60) == [200] * 60
    assert set(up.hits) == set(up.pids), up.hits  # back in rotation for every process


@pytest.mark.parametrize("mode", ["500", "timeout", "401"])
async def test_health_one_worker_learns_applies_to_both_workers(tmp_path: Path, mode: str) -> None:
    async with _upstream() as up, _two_workers(tmp_path, up) as gw:
        await _check(gw, up, mode)


@pytest.mark.parametrize("mode", ["500", "timeout", "401"])
async def test_health_one_host_learns_applies_to_both_hosts_on_postgresql(tmp_path: Path, mode: str) -> None:
    async with _upstream() as up, _two_hosts(tmp_path, up) as gw:
        await _check(gw, up, mode)
