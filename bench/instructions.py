"""`scripts/bench --instructions`: instructions per request and per stream event, counted by
valgrind's callgrind, for the bare relay and the gateway (billing on), in one run.

Why: CPU time on a shared machine drifts by ±15 % between runs, more than most single changes
to the hot path are worth. An instruction count is repeatable (the same code on the same input
gives the same count, whatever else the machine does), so an A/B of one change is a difference
of two counts. It is not time: a syscall or a cache miss counts as the instructions it runs. The
targets of docs/benchmarks.md stay CPU-time ratios from `scripts/bench`; this is the ruler for
the steps between them.

Each server runs under `valgrind --tool=callgrind --instr-atstart=no`; after a warm-up the
counting is switched on, a fixed load is sent, and the dump's total is divided by the requests
(or events) sent. Every thread of the process counts (the SQLite writer's too), as CPU time does.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench import gateway
from bench.wire import chat_body
from testkit.gateway import GatewayProcess, ServerProcess

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=no"]
EVENTS = 50  # per stream, as in scripts/bench


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


async def _load(port: int, path: str, key: str | None, model: str, requests: int, stream: bool, conns: int) -> int:
    """Send `requests` requests, `conns` at a time; every answer must be complete (200, [DONE])."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    body = chat_body(model, stream)
    left = iter(range(requests))
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as session:
        async def worker() -> None:
            nonlocal done
            for _ in left:
                async with session.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers) as resp:
                    text = await resp.read()
                    if resp.status != 200 or (stream and b"[DONE]" not in text):
                        raise RuntimeError(f"bad answer {resp.status}: {text[:200]!r}")
                    done += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
    return done


def _control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True, timeout=120)


def _total(out_dir: Path, pid: int) -> int:
    """The instruction total of the newest dump of `pid`."""
    dumps = sorted(out_dir.glob(f"callgrind.out.{pid}.*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {dumps[-1]}")


def count(server: ServerProcess, out_dir: Path, path: str, key: str | None, model: str,
          requests: int, streams: int) -> dict[str, float]:
    """Instructions per non-stream request and per stream event of one server (started here)."""
    server.start_blocking(within_s=300)
    pid, port = (server.proc.pid if server.proc else 0), server.port
    try:
        asyncio.run(_load(port, path, key, model, 200, False, 8))  # warm-up: imports, pools, caches
        asyncio.run(_load(port, path, key, model, 20, True, 4))
        result: dict[str, float] = {}
        for name, n, stream, per in (("per_request", requests, False, requests),
                                     ("per_event", streams, True, streams * EVENTS)):
            _control(pid, "-i", "on")
            _control(pid, "-z")
            asyncio.run(_load(port, path, key, model, n, stream, 8))
            _control(pid, "-d")
            _control(pid, "-i", "off")
            result[name] = _total(out_dir, pid) / per
        return result
    finally:
        server.stop_blocking()


def main(run_dir: Path, gateway_src: Path | None, requests: int = 1000, streams: int = 100,
         billing: bool = True) -> dict[str, dict]:
    """Count both servers; returns {"bare": {...}, "gateway": {...}, "ratio": {...}}."""
    py = sys.executable
    up = ServerProcess([py, "-m", "testkit.upstream"], log=run_dir / "upstream.log", name="fake upstream")
    up.start_blocking()
    try:
        profiles = gateway.Profiles(EVENTS, 80, 50)
        fast = profiles.fast_prefix + "/v1/chat/completions"
        wrap = [*VALGRIND, f"--callgrind-out-file={run_dir}/callgrind.out.%p"]
        bare = ServerProcess([py, "-m", "bench.bare_relay", "--upstream", up.url], log=run_dir / "bare.log",
                             name="bare relay", wrap=wrap)
        t0 = time.monotonic()
        results = {"bare": count(bare, run_dir, fast, None, "bench-fast", requests, streams)}
        setup = gateway.prepare(run_dir, up.port, profiles, billing=billing)
        gw = GatewayProcess(setup.config, setup.env, setup.log, cwd=gateway_src, python=py, wrap=wrap)
        results["gateway"] = count(gw, run_dir, "/v1/chat/completions", setup.key, "resale/bench-fast",
                                   requests, streams)
        results["ratio"] = {k: results["gateway"][k] / results["bare"][k] for k in results["bare"]}
        results["seconds"] = {"total": round(time.monotonic() - t0, 1)}
        return results
    finally:
        up.stop_blocking()


def table(found: dict[str, dict]) -> str:
    lines = [f"{'instructions':34} {'bare':>12} {'gateway':>12} {'gw/bare':>8}"]
    for key, label in (("per_request", "per non-stream request"), ("per_event", "per stream event (50-event streams)")):
        lines.append(f"{label:34} {found['bare'][key]:12,.0f} {found['gateway'][key]:12,.0f} "
                     f"{found['ratio'][key]:7.2f}x")
    return "\n".join(lines)
