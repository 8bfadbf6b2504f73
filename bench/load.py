"""The Python load generator, run as its own process pinned to the load core.

Modes: `http` (non-stream requests on C keep-alive connections; the fallback when wrk is
missing), `stream` (back-to-back streams on C connections), `hold` (N concurrent slow streams)
and `sequential` (a fixed number of streams, with progress lines for memory sampling).
It prints one `RESULT {json}` line at the end; it never decides pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from dataclasses import dataclass, field

import orjson

from bench.wire import Connection, Exchange, chat_body, request_bytes

KEY_ENV = "OKM_BENCH_KEY"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]  # nearest rank


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 4)


@dataclass
class Tally:
    expected_events: int
    ok: int = 0
    errors: int = 0
    events: int = 0
    latency: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    first_error: str = ""

    def check(self, ex: Exchange, stream: bool) -> bool:
        if ex.status != 200:
            return self.fail(f"HTTP {ex.status}: {ex.body[:200]!r}")
        if stream:
            body = ex.body
            n = body.count(b"data: {")
            if n != self.expected_events or b"data: [DONE]" not in body:
                return self.fail(f"stream had {n} events (expected {self.expected_events}), DONE={b'[DONE]' in body}")
            self.events += n
            self.ttfb.append(ex.t_first - ex.t_sent)
        self.ok += 1
        self.latency.append(ex.t_done - ex.t_sent)
        return True

    def fail(self, why: str) -> bool:
        self.errors += 1
        self.first_error = self.first_error or why
        return False

    def summary(self, seconds: float) -> dict:
        return {
            "ok": self.ok, "errors": self.errors, "first_error": self.first_error, "events": self.events,
            "seconds": round(seconds, 4), "per_s": round(self.ok / seconds, 2) if seconds else None,
            "events_per_s": round(self.events / seconds, 1) if seconds else None,
            "latency_p50_ms": _ms(percentile(self.latency, 50)), "latency_p99_ms": _ms(percentile(self.latency, 99)),
            "ttfb_p50_ms": _ms(percentile(self.ttfb, 50)), "ttfb_p99_ms": _ms(percentile(self.ttfb, 99)),
        }


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    raw: bytes
    stream: bool


async def one(conn: Connection | None, target: Target, tally: Tally) -> Connection | None:
    """One exchange on `conn` (opened if needed); returns the connection to reuse, or None."""
    try:
        if conn is None or conn.closed:
            conn = await Connection.open(target.host, target.port, target.stream)
        ex = await conn.send(target.raw)
    except (OSError, ValueError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")
        if conn is not None:
            conn.close()
        return None
    tally.check(ex, target.stream)
    return conn


async def run_for(target: Target, tally: Tally, conns: int, seconds: float) -> float:
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        conn = None
        while time.monotonic() < deadline:
            conn = await one(conn, target, tally)
        if conn is not None:
            conn.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return time.monotonic() - start


async def run_count(target: Target, tally: Tally, conns: int, count: int, progress: int) -> float:
    started = 0

    async def worker() -> None:
        nonlocal started
        conn = None
        while started < count:
            started += 1
            conn = await one(conn, target, tally)
            done = tally.ok + tally.errors
            if progress and done % progress == 0:
                print(f"PROGRESS {done} {time.monotonic():.6f}", flush=True)
        if conn is not None:
            conn.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return time.monotonic() - start


async def run_hold(target: Target, tally: Tally, streams: int, batch: int) -> dict:
    """Open `streams` concurrent streams (in batches, so the listen backlog never overflows)."""
    pending: list[asyncio.Future[Exchange]] = []
    conns: list[Connection] = []
    t0 = time.monotonic()
    for i in range(0, streams, batch):
        opened = await asyncio.gather(*(Connection.open(target.host, target.port, True)
                                        for _ in range(min(batch, streams - i))), return_exceptions=True)
        for conn in opened:
            if isinstance(conn, BaseException):
                tally.fail(f"connect: {conn}")
                continue
            conns.append(conn)
            pending.append(conn.send(target.raw))
    t_sent = time.monotonic()
    t_ready = None
    while not all(f.done() for f in pending):
        if t_ready is None and all(c.current is None or c.current.t_first for c in conns):
            t_ready = time.monotonic()
            print(f"READY {t_ready:.6f}", flush=True)
        await asyncio.sleep(0.02)
    firsts = []
    for future in pending:
        if future.exception() is not None:
            tally.fail(str(future.exception()))
        else:
            firsts.append(future.result().t_done)
            tally.check(future.result(), True)
    for conn in conns:
        conn.close()
    return {"t_start": t0, "t_all_sent": t_sent, "t_ready": t_ready, "t_first_done": min(firsts, default=None),
            "t_all_done": time.monotonic(), "opened": len(conns)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=("http", "stream", "hold", "sequential"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--model", required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--count", type=int, default=1000, help="sequential: streams; hold: concurrent streams")
    p.add_argument("--events", type=int, default=50, help="content events each stream must carry")
    p.add_argument("--progress", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--core", type=int, default=None)
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> dict:
    stream = args.mode != "http"
    raw = request_bytes(args.host, args.port, args.path, chat_body(args.model, stream), os.environ.get(KEY_ENV, ""))
    target = Target(args.host, args.port, raw, stream)
    tally = Tally(args.events)
    extra: dict = {}
    if args.mode in ("http", "stream"):
        seconds = await run_for(target, tally, args.conns, args.seconds)
    elif args.mode == "sequential":
        seconds = await run_count(target, tally, args.conns, args.count, args.progress)
    else:
        t0 = time.monotonic()
        extra = await run_hold(target, tally, args.count, args.batch)
        seconds = time.monotonic() - t0
    return {**tally.summary(seconds), **extra}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    result = asyncio.run(amain(args))
    sys.stdout.write("RESULT " + orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
