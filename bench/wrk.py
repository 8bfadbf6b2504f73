"""Non-stream load with wrk (Debian package `wrk`): one thread, N keep-alive connections, a Lua
script that posts the same body as the Python load generator and prints one JSON summary line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.procs import Procs

BODY_ENV = "OKM_BENCH_BODY_FILE"
KEY_ENV = "OKM_BENCH_KEY"

LUA = r"""
local f = assert(io.open(os.getenv("OKM_BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "*/*"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("OKM_BENCH_KEY") or "")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.2f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def write_script(run_dir: Path, body: bytes) -> dict[str, str]:
    """Write the Lua script and the body; return the environment wrk needs (without the key)."""
    (run_dir / "post.lua").write_text(LUA)
    (run_dir / "body.json").write_bytes(body)
    return {BODY_ENV: str(run_dir / "body.json")}


def run(procs: Procs, *, run_dir: Path, url: str, conns: int, seconds: float, core: int | None,
        env: dict[str, str]) -> dict:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(run_dir / "post.lua"), url]
    out = procs.run("wrk", cmd, core=core, env=env, timeout=seconds + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out[-2000:]}")
    raw = json.loads(line[len("WRKJSON "):])
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    secs = raw["duration_us"] / 1e6
    return {
        "ok": raw["requests"] - raw["status"], "errors": errors,
        "first_error": f"wrk errors: {raw}" if errors else "", "seconds": round(secs, 4),
        "per_s": round(raw["requests"] / secs, 2), "latency_p50_ms": raw["p50_us"] / 1000,
        "latency_p99_ms": raw["p99_us"] / 1000, "events": 0,
    }
