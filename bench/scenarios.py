"""The measurements: one function per scenario, each driving one target once and returning plain
numbers (with the CPU the process under test and the load side spent). No pass/fail here.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import wrk
from bench.load import KEY_ENV
from bench.procs import Procs, Sampler, children_cpu_seconds, cpu_seconds, rss_bytes

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # direct | bare | gateway
    port: int
    fast_path: str
    slow_path: str
    pid: int | None  # the process under test; None for direct-to-upstream


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    seconds: float
    stream_conns: int
    fast_events: int
    hold_streams: int
    slow_events: int
    slow_ms: int
    slope_streams: int
    slope_conns: int


@dataclass(frozen=True)
class Bench:
    """What every scenario needs: the processes, cores, key, model ids and the settings."""

    procs: Procs
    run_dir: Path
    proxy_core: int | None
    load_core: int | None
    upstream_pid: int
    key: str
    fast_model: str
    slow_model: str
    settings: Settings
    use_wrk: bool
    wrk_env: dict[str, str] = field(default_factory=dict)

    def load_cmd(self, mode: str, target: Target, *, slow: bool = False, **opts: object) -> list[str]:
        cmd = [sys.executable, "-m", "bench.load", mode, "--port", str(target.port),
               "--path", target.slow_path if slow else target.fast_path,
               "--model", self.slow_model if slow else self.fast_model]
        for name, value in opts.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        return cmd

    @property
    def load_env(self) -> dict[str, str]:
        return {**os.environ, KEY_ENV: self.key}

    def loadgen(self, mode: str, target: Target, *, timeout: float, slow: bool = False, **opts: object) -> dict:
        out = self.procs.run(f"load {mode}", self.load_cmd(mode, target, slow=slow, **opts), core=self.load_core,
                             env=self.load_env, timeout=timeout)
        return parse_result(out)


def parse_result(out: str) -> dict:
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the load generator printed no result:\n{out[-2000:]}")
    return orjson.loads(line[len("RESULT "):])


def measured(bench: Bench, target: Target, run: Callable[[], dict]) -> dict:
    """Run one load and add the CPU seconds spent by the process under test and by the load side."""
    cpu0 = cpu_seconds(target.pid) if target.pid else 0.0
    up0, kids0, t0 = cpu_seconds(bench.upstream_pid), children_cpu_seconds(), time.monotonic()
    result = run()
    wall = time.monotonic() - t0
    load_cpu = cpu_seconds(bench.upstream_pid) - up0 + children_cpu_seconds() - kids0
    result["load_util"] = round(load_cpu / wall, 3)
    if target.pid:
        cpu = cpu_seconds(target.pid) - cpu0
        result["proxy_cpu_s"] = round(cpu, 3)
        result["proxy_util"] = round(cpu / result["seconds"], 3) if result["seconds"] else None
        if result["ok"]:
            result["cpu_ms_per_req"] = round(cpu * 1000 / result["ok"], 4)
        if result.get("events"):
            result["cpu_us_per_event"] = round(cpu * 1e6 / result["events"], 3)
    return result


def nonstream(bench: Bench, target: Target, conns: int, seconds: float) -> dict:
    def run() -> dict:
        if bench.use_wrk:
            env = {**os.environ, **bench.wrk_env, wrk.KEY_ENV: bench.key}
            url = f"http://127.0.0.1:{target.port}{target.fast_path}"
            return wrk.run(bench.procs, run_dir=bench.run_dir, url=url, conns=conns, seconds=seconds,
                           core=bench.load_core, env=env)
        return bench.loadgen("http", target, timeout=seconds + 30, conns=conns, seconds=seconds)

    return measured(bench, target, run)


def stream(bench: Bench, target: Target, conns: int, seconds: float) -> dict:
    s = bench.settings
    return measured(bench, target, lambda: bench.loadgen("stream", target, timeout=seconds + 30, conns=conns,
                                                         seconds=seconds, events=s.fast_events))


def _cpu_rate(samples: list[tuple[float, int, float]], start: float, end: float) -> float | None:
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.2:
        return None
    return (inside[-1][2] - inside[0][2]) / (inside[-1][0] - inside[0][0])


def hold(bench: Bench, target: Target) -> dict:
    """N concurrent slow streams: resident memory while all are open, and the CPU it takes to feed them."""
    s = bench.settings
    assert target.pid is not None
    rss_idle = rss_bytes(target.pid)
    timeout = s.slow_events * s.slow_ms / 1000 + 60
    with Sampler(target.pid, 0.05) as sampler:
        result = measured(bench, target, lambda: bench.loadgen(
            "hold", target, timeout=timeout, slow=True, count=s.hold_streams, events=s.slow_events, batch=100))
    samples = sampler.samples
    ready, first_done = result.get("t_ready"), result.get("t_first_done")
    steady = ready is not None and first_done is not None and first_done - ready >= 0.5
    start, end = (ready, first_done) if steady else (result["t_all_sent"], result["t_all_done"])
    rate = _cpu_rate(samples, start, end)
    window_rss = [r for t, r, _ in samples if start <= t <= end] or [r for _, r, _ in samples]
    result.update({
        "steady_window_s": round(end - start, 3) if steady else None,
        "rss_idle_mib": round(rss_idle / MIB, 1),
        "rss_peak_mib": round(max(r for _, r, _ in samples) / MIB, 1),
        "rss_hold_mib": round(statistics.median(window_rss) / MIB, 1),
        "kib_per_stream": round((max(r for _, r, _ in samples) - rss_idle) / 1024 / s.hold_streams, 1),
        "cpu_util": None if rate is None else round(rate, 3),  # while every stream is open
    })
    return result


def slope(bench: Bench, target: Target) -> dict:
    """RSS after every 1/40th of N sequential streams, and a linear fit over all but the first tenth."""
    s = bench.settings
    assert target.pid is not None
    every = max(1, s.slope_streams // 40)
    cmd = bench.load_cmd("sequential", target, count=s.slope_streams, conns=s.slope_conns, progress=every,
                         events=s.fast_events)
    proc = bench.procs.start("load sequential", cmd, core=bench.load_core, env=bench.load_env)
    points: list[tuple[int, int]] = [(0, rss_bytes(target.pid))]
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if line.startswith("PROGRESS "):
                points.append((int(line.split()[1]), rss_bytes(target.pid)))
        proc.wait(60)
    finally:
        bench.procs.forget(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"load sequential exited with {proc.returncode}: {''.join(lines)[-2000:]}")
    result = parse_result("".join(lines))
    fit = [p for p in points if p[0] >= s.slope_streams // 10]
    slope_b = statistics.linear_regression([p[0] for p in fit], [p[1] for p in fit]).slope if len(fit) >= 3 else None
    result.update({
        "points": [(n, round(r / MIB, 2)) for n, r in points],
        "rss_start_mib": round(points[0][1] / MIB, 1), "rss_end_mib": round(points[-1][1] / MIB, 1),
        "bytes_per_stream": None if slope_b is None else round(slope_b, 2),
        "growth_mib_per_20k": None if slope_b is None else round(slope_b * 20000 / MIB, 2),
    })
    return result
