"""Sampling profile of the gateway under the bench's load (py-spy, attached by PID, raw stacks),
summarised as the functions that cost the most: self time and time including callees.

It only observes: py-spy reads the process from outside; nothing in the gateway changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Procs
from testkit.gateway import stop_process

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")
TOP = 25

# Where a sample's time goes: the innermost frame matching one of these names its area.
AREAS = (
    ("metrics (prometheus_client + plain counters)", ("prometheus_client/", "proxy/telemetry/metrics.py",
                                                      "proxy/telemetry/live_metrics.py", "proxy/telemetry/outcome.py")),
    ("asyncio.timeout contexts", ("asyncio/timeouts.py",)),
    ("access log (logging + redaction)", ("proxy/telemetry/accesslog.py", "proxy/redaction.py",
                                          "proxy/telemetry/logs.py", "logging/")),
    ("usage rows (build, queue, store writer task)", ("proxy/store/usage", "proxy/store/rows.py", "Store.write_usage",
                                                     "Store.transaction", "aiosqlite/", "proxy/store/sqlite")),
    ("billing (holds, cost)", ("proxy/billing/", "proxy/store/billing")),
    ("request id (uuid4)", ("uuid.py",)),
    ("SSE decode + relay inspection", ("proxy/relay/sse.py", "proxy/relay/events.py", "StreamRelay.")),
    ("auth (key check, HMAC)", ("proxy/workspaces/",)),
    ("body read + strict JSON parse", ("proxy/http/body.py", "json/")),
    ("scrub + routing + lanes", ("proxy/lanes/",)),
    ("upstream client (HTTP/1.1 pool, framing)", ("proxy/relay/upstream.py", "proxy/relay/http_pool.py",
                                                  "proxy/relay/http_wire.py", "aiohttp/client", "aiohttp/connector")),
    ("gateway glue (pipeline, middleware, attempt, streaming)", ("proxy/",)),
)
_IO_LEAF = ("asyncio/selector_events.py", "selectors.py")
EVENT_LOOP = "aiohttp server + event loop (parse, dispatch, write)"
SOCKET_IO = "socket I/O + epoll (send/recv syscalls)"


def area_of(frames: list[str]) -> str:
    if any(mark in frames[-1] for mark in _IO_LEAF):
        return SOCKET_IO
    for frame in reversed(frames):
        if "proxy/server.py" in frame or "proxy/cli.py" in frame or "proxy/__main__.py" in frame:
            break
        for name, marks in AREAS:
            if any(mark in frame for mark in marks):
                return name
    return EVENT_LOOP


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def frame_key(frame: str) -> str:
    """`func (path/file.py:123)` -> `func (path/file.py)`: lines of one function are one cost."""
    match = _FRAME.match(frame)
    return f"{match['func']} ({match['file']})" if match else frame


@dataclass(frozen=True, slots=True)
class Summary:
    """Shares of the event loop thread's samples (the hot path); other threads are listed apart."""

    samples: int  # event-loop (MainThread) samples
    top_self: list[tuple[str, float]]  # (function, % of samples)
    top_total: list[tuple[str, float]]
    by_file: list[tuple[str, float]]  # self time grouped by source file
    by_area: list[tuple[str, float]]  # every sample in one area (see AREAS)
    other_threads: list[tuple[str, int]]  # (thread: leaf frame with line, samples); mostly waits

    def as_dict(self) -> dict:
        return {"samples": self.samples, "top_self": self.top_self, "top_total": self.top_total,
                "by_file": self.by_file, "by_area": self.by_area, "other_threads": self.other_threads}


def summarize(raw: str) -> Summary:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    others: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames.pop(0).split(": ", 1)[-1] if frames[0].startswith("thread (") else "MainThread"
        if thread != "MainThread":
            # py-spy counts a thread blocked in SimpleQueue.get (aiosqlite's idle worker) as active.
            others[f"{thread}: {frames[-1]}"] += n
            continue
        keys = [frame_key(f) for f in frames]
        samples += n
        self_time[keys[-1]] += n
        match = _FRAME.match(frames[-1])
        by_file[match["file"] if match else "?"] += n
        by_area[area_of(frames)] += n
        for key in set(keys):
            total_time[key] += n

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / samples, 1)) for k, v in counter.most_common(TOP)] if samples else []

    return Summary(samples, pct(self_time), pct(total_time), pct(by_file), pct(by_area), others.most_common(8))


def record(procs: Procs, pid: int, out: Path, seconds: float, core: int | None,
           load: Callable[[], dict]) -> tuple[Summary, dict]:
    """Profile `pid` for `seconds` while `load()` runs (give it seconds + 1); returns the summary and its result."""
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed: run `scripts/bench --profile` (it installs it into .venv)")
    cmd = [spy, "record", "--pid", str(pid), "--threads", "--rate", "250", "--format", "raw", "--output", str(out),
           "--duration", str(max(1, round(seconds)))]
    log = out.with_suffix(".log")
    with log.open("wb") as sink:
        proc = procs.start("py-spy", cmd, core=core, stdout=sink)
        try:
            time.sleep(0.3)  # attach first, so every sample falls inside the load (which runs a little longer)
            result = load()
            proc.wait(30)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("py-spy did not finish") from exc
        finally:
            stop_process(proc)  # a no-op once it has finished; ends it if the load failed
            procs.forget(proc)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {log.read_text(errors='replace')[-1500:]}")
    return summarize(out.read_text(errors="replace")), result
