"""Endurance run for the gateway (not a CI test; `scripts/endurance` runs it).

Phase 1: N clients hold streams open back to back for a while, a share of them vanishing at random
(before the first byte or mid-stream). Phase 2: many short streams, one after another. Throughout,
the gateway's RSS, descriptors and established connections are sampled from /proc; every stream that
was not abandoned must be byte-exact. Loopback only; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import sqlite3
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.gateway import GatewayProcess, ServerProcess  # noqa: E402  # reason: needs the repo root on sys.path first

PAGE = os.sysconf("SC_PAGE_SIZE")
MODEL_SLOW, MODEL_FAST = "slow", "fast"
STOP_GRACE_S = 40.0  # a drain of 1,000 streams may take a while


@dataclass
class Tally:
    ok: int = 0
    vanished: int = 0
    corrupt: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1


# --- processes and /proc -------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def socket_inodes(pid: int) -> tuple[int, set[str]]:
    """(open descriptors, inodes of the sockets among them)."""
    count, inodes = 0, set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        count += 1
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return count, inodes


def established(pid: int, gateway_port: int, upstream_port: int) -> tuple[int, int, int]:
    """(descriptors, established client connections, established upstream connections) of `pid`."""
    count, inodes = socket_inodes(pid)
    clients = upstream = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] != "01" or parts[9] not in inodes:
                    continue
                local, remote = int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16)
                clients += local == gateway_port
                upstream += remote == upstream_port
    return count, clients, upstream


# --- a small keep-alive HTTP client for chunked SSE answers --------------------------------------


class Client:
    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def stream(self, model: str, vanish_at: int | None) -> bytes | None:
        """The SSE body, or None when this client vanished on purpose (at byte `vanish_at` of the body)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        body = orjson.dumps({"model": f"resale/{model}", "stream": True,
                             "messages": [{"role": "user", "content": "endurance"}]})
        self.writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (self.key.encode(), len(body), body))
        if vanish_at == 0:
            return self.vanish()
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        out = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await self.reader.readexactly(2)
                return bytes(out)
            out += await self.reader.readexactly(size + 2)
            del out[-2:]
            if vanish_at is not None and len(out) >= vanish_at:
                return self.vanish()

    def vanish(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()  # a client gone without a goodbye (RST), like a killed process
        self.reader = self.writer = None
        return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --- the run -------------------------------------------------------------------------------------


def fetch_reference(upstream_port: int, profile: str) -> bytes:
    """What a stream of this profile must look like to the client, straight from the upstream."""
    body = orjson.dumps({"model": "x", "stream": True, "messages": []})
    request = urllib.request.Request(f"http://127.0.0.1:{upstream_port}{profile}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read()


def prepare(run: Path, upstream_port: int, args: argparse.Namespace) -> tuple[Path, dict[str, str], str, int]:
    from proxy.store import Store  # reason: only the set-up step needs the package
    from proxy.types import Secret

    env = {"OKM_KEY_PEPPER": secrets.token_urlsafe(32), "UPSTREAM_KEY": "sk-endurance-" + secrets.token_hex(8)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{upstream_port}"
    providers = {MODEL_SLOW: f"{base}/ev{args.events}/ms{args.gap_ms}/v1", MODEL_FAST: f"{base}/ev{args.events}/ms0/v1"}
    config = {
        "listen": {"host": "127.0.0.1", "port": port}, "store": {"path": str(run / "okm.sqlite3")},
        "log": {"level": "info", "access_log": True}, "drain": {"deadline_s": 10},
        "limits": {"upstream_connections": args.concurrency + 200, "max_concurrent_requests": args.concurrency + 500},
        "providers": {n: {"base_url": url, "api_key_env": "UPSTREAM_KEY"} for n, url in providers.items()},
        "lanes": {"resale": {"models": {n: {"upstreams": [{"provider": n}]} for n in providers}}},
    }
    (run / "gateway.yaml").write_text(yaml.safe_dump(config))

    async def issue() -> str:
        store = await Store.open(run / "okm.sqlite3")
        try:
            await store.create_workspace("endurance")
            return (await store.create_api_key("endurance", Secret(env["OKM_KEY_PEPPER"])))[1].reveal()
        finally:
            await store.close()

    return run / "gateway.yaml", env, asyncio.run(issue()), port


async def sample(pid: int, ports: tuple[int, int], series: list[dict], every_s: float, t0: float) -> None:
    while True:
        fds, clients, upstream = established(pid, *ports)
        series.append({"t": round(time.monotonic() - t0, 1), "rss_mib": round(rss_mib(pid), 1), "fds": fds,
                       "client_conns": clients, "upstream_conns": upstream})
        await asyncio.sleep(every_s)


async def phase_concurrent(port: int, key: str, args: argparse.Namespace, expected: bytes, tally: Tally) -> None:
    end = time.monotonic() + args.seconds
    rng = random.Random(args.seed)

    async def one_client() -> None:
        client = Client(port, key)
        try:
            while time.monotonic() < end:
                vanish_at = None
                if rng.random() < args.vanish:  # a quarter leave before the first byte, the rest mid-stream
                    vanish_at = 0 if rng.random() < 0.25 else rng.randrange(1, len(expected))
                try:
                    got = await client.stream(MODEL_SLOW, vanish_at)
                except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
                    tally.fail(type(exc).__name__ + (f": {exc}" if isinstance(exc, RuntimeError) else ""))
                    client.close()
                    continue
                if got is None:
                    tally.vanished += 1
                elif got == expected:
                    tally.ok += 1
                else:
                    tally.corrupt += 1
        finally:
            client.close()

    await asyncio.gather(*(one_client() for _ in range(args.concurrency)))


async def phase_sequential(port: int, key: str, count: int, expected: bytes, tally: Tally, pid: int,
                           rss_marks: list[tuple[int, float]]) -> None:
    client = Client(port, key)
    try:
        for i in range(count):
            try:
                got = await client.stream(MODEL_FAST, None)
            except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
                tally.fail(type(exc).__name__)
                client.close()
                continue
            if got == expected:
                tally.ok += 1
            else:
                tally.corrupt += 1
            if (i + 1) % 1000 == 0:
                rss_marks.append((i + 1, round(rss_mib(pid), 1)))
    finally:
        client.close()


def metrics_value(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def drive(args: argparse.Namespace, port: int, key: str, upstream_port: int, pid: int, report: dict) -> None:
    expected_slow = fetch_reference(upstream_port, f"/ev{args.events}/ms0")
    expected_fast = expected_slow
    series: list[dict] = []
    t0 = time.monotonic()
    sampler = asyncio.create_task(sample(pid, (port, upstream_port), series, 1.0, t0))
    try:
        baseline = established(pid, port, upstream_port)
        report["baseline"] = {"rss_mib": round(rss_mib(pid), 1), "fds": baseline[0]}
        concurrent, sequential = Tally(), Tally()
        await phase_concurrent(port, key, args, expected_slow, concurrent)
        report["phase1"] = {**concurrent.__dict__, "end_t": round(time.monotonic() - t0, 1)}
        await asyncio.sleep(args.settle_s)
        report["after_phase1"] = dict(zip(("fds", "client_conns", "upstream_conns"), established(pid, port, upstream_port), strict=True))
        marks: list[tuple[int, float]] = []
        await phase_sequential(port, key, args.sequential, expected_fast, sequential, pid, marks)
        report["phase2"] = {**sequential.__dict__, "rss_every_1000": marks, "end_t": round(time.monotonic() - t0, 1)}
        await asyncio.sleep(args.settle_s)
        report["after_phase2"] = dict(zip(("fds", "client_conns", "upstream_conns"), established(pid, port, upstream_port), strict=True))
        report["after_phase2"]["rss_mib"] = round(rss_mib(pid), 1)
        report["active_streams"] = metrics_value(port, "okm_active_streams{")
        report["in_flight"] = metrics_value(port, "okm_requests_in_flight ")
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    report["series"] = series


def usage_summary(store: Path) -> dict[str, int]:
    with sqlite3.connect(store) as db:
        return dict(db.execute("SELECT outcome, count(*) FROM usage GROUP BY outcome").fetchall())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60, help="length of phase 1")
    parser.add_argument("--vanish", type=float, default=0.3, help="share of phase-1 streams abandoned at random")
    parser.add_argument("--sequential", type=int, default=20000, help="streams in phase 2")
    parser.add_argument("--events", type=int, default=12, help="events per stream")
    parser.add_argument("--gap-ms", type=int, default=250, help="gap between events in phase 1")
    parser.add_argument("--settle-s", type=float, default=20, help="quiet time before leak checks (> upstream keep-alive)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "endurance")
    args = parser.parse_args()
    run = args.out / time.strftime("%Y%m%d-%H%M%S")
    run.mkdir(parents=True)
    upstream = ServerProcess([sys.executable, "-m", "testkit.upstream"], log=run / "upstream.log", name="fake upstream")
    gateway: GatewayProcess | None = None
    report: dict = {"settings": {k: str(v) for k, v in vars(args).items()}}
    try:
        upstream_port = upstream.start_blocking().port
        config, env, key, port = prepare(run, upstream_port, args)
        gateway = GatewayProcess(config, env, run / "gateway.log").start_blocking()
        asyncio.run(drive(args, port, key, upstream_port, gateway.pid, report))
        report["exit_status"] = gateway.stop_blocking(STOP_GRACE_S)
        report["usage_rows"] = usage_summary(run / "okm.sqlite3")
    finally:
        if gateway is not None:
            gateway.stop_blocking(STOP_GRACE_S)
        if upstream.proc is not None:
            upstream.stop_blocking(STOP_GRACE_S)
        (run / "report.json").write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    print_summary(report, run)
    return 0 if verdict(report) else 1


def verdict(report: dict) -> bool:
    """Byte-exact survivors, no failures, nothing left behind. Idle keep-alive connections to the upstream
    are the client session's pool (aiohttp drops expired ones at its next use), not a leak."""
    p1, p2, after1, after2 = report["phase1"], report["phase2"], report["after_phase1"], report["after_phase2"]
    return (not p1["corrupt"] and not p1["failed"] and not p2["corrupt"] and not p2["failed"]
            and after1["client_conns"] == 0 and after2["client_conns"] == 0 and after2["upstream_conns"] <= 1
            and after2["fds"] <= report["baseline"]["fds"] + after2["upstream_conns"]
            and report["active_streams"] == 0 and report["in_flight"] == 0 and report["exit_status"] == 0)


def print_summary(report: dict, run: Path) -> None:
    series = report.get("series", [])
    print(f"results in {run}/report.json")
    for key in ("baseline", "phase1", "after_phase1", "phase2", "after_phase2", "active_streams", "in_flight",
                "exit_status", "usage_rows"):
        print(f"{key}: {report.get(key)}")
    step = max(1, len(series) // 20)
    print("t(s)  rss(MiB)  fds  client_conns  upstream_conns")
    for point in series[::step]:
        print(f"{point['t']:6.1f} {point['rss_mib']:8.1f} {point['fds']:5d} {point['client_conns']:8d} "
              f"{point['upstream_conns']:8d}")
    print("PASS" if report.get("phase2") and verdict(report) else "FAIL")


if __name__ == "__main__":
    sys.exit(main())
