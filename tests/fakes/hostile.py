"""Hostile behaviours composed on top of `testkit.upstream` (which stays untouched), hostile
clients, the config of a gateway run as its own process (testkit.gateway runs it), and the leak
checks every robustness case ends with.

It never imports the gateway package: it speaks HTTP and writes config files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testkit import payloads
from testkit.upstream import Auto, FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
CLOSE = {"Connection": "close"}  # answers that close their connection: a connection still open is a leak


# --- upstream behaviours -------------------------------------------------------------------------


class Flood:
    """Stream pieces made on demand (pass as `Stream(pieces=Flood(...))`), recording how far the upstream got.

    The fake writes a piece and waits for it to drain before it asks for the next one, so `pulled`
    stops growing as soon as the gateway stops reading: that is what backpressure looks like from
    the upstream. `head` goes first, then `unit` repeated until `total` bytes, then `tail`.
    """

    def __init__(self, unit: bytes, total: int, head: Iterable[bytes] = (), tail: bytes = b"") -> None:
        self.unit, self.total, self.head, self.tail = unit, total, tuple(head), tail
        self.pulled = 0  # bytes handed to the fake's writer so far
        self.finished = False

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.head:
            self.pulled += len(piece)
            yield piece
        sent = 0
        while sent < self.total:
            piece = self.unit[: self.total - sent]
            sent += len(piece)
            self.pulled += len(piece)
            yield piece
        if self.tail:
            self.pulled += len(self.tail)
            yield self.tail
        self.finished = True

    def expected(self) -> bytes:
        """Every byte this flood sends (build only for small floods)."""
        body = (self.unit * (self.total // len(self.unit) + 1))[: self.total]
        return b"".join(self.head) + body + self.tail


def big_chat_event(model: str, size: int) -> bytes:
    """One chat chunk whose content makes the whole SSE block exactly `size` bytes."""
    empty = payloads.sse(payloads.chat_chunk(model, {"content": ""}))
    block = payloads.sse(payloads.chat_chunk(model, {"content": "x" * (size - len(empty))}))
    assert len(block) == size
    return block


def close_after_answer(*fakes: FakeUpstream) -> None:
    """Default answers close their connection, so any upstream connection left open is a leak."""
    for fake in fakes:
        fake.default = Auto(headers=CLOSE)


# --- metrics and leak checks ---------------------------------------------------------------------


class GatewayLike(Protocol):
    url: str
    session: aiohttp.ClientSession

    @property
    def upstreams(self) -> list[FakeUpstream]: ...


async def scrape(url: str, session: aiohttp.ClientSession) -> str:
    async with session.get(url + "/metrics", headers=CLOSE) as resp:
        assert resp.status == 200
        return await resp.text()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def tasks_now() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


@dataclass
class Leaks:
    """What a case left behind; `clean` when nothing."""

    active_streams: float
    upstream_connections: dict[str, int]
    tasks: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.active_streams and not any(self.upstream_connections.values()) and not self.tasks


async def leaks(gw: GatewayLike, baseline: set[asyncio.Task[Any]]) -> Leaks:
    text = await scrape(gw.url, gw.session)
    me = asyncio.current_task()
    extra = [t for t in tasks_now() - baseline if t is not me]
    return Leaks(
        metric(text, "okm_active_streams"),
        {u.name: u.open_connections for u in gw.upstreams if u.open_connections},
        sorted(f"{t.get_name()}: {t.get_coro()!r}" for t in extra),
    )


async def assert_settled(gw: GatewayLike, baseline: set[asyncio.Task[Any]], within_s: float = 1.5) -> None:
    """Within `within_s`: no active stream, no upstream connection open, no task beyond `baseline`."""
    deadline = time.monotonic() + within_s
    while True:
        found = await leaks(gw, baseline)
        if found.clean:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after {within_s}s: {found}")
        await asyncio.sleep(0.02)


async def until(condition: Callable[[], bool], within_s: float = 1.0) -> None:
    """Wait for `condition` (checked every 5 ms); AssertionError when it is still false after `within_s`."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {within_s}s")
        await asyncio.sleep(0.005)


# --- hostile clients -----------------------------------------------------------------------------


async def slowloris(host: str, port: int, head: bytes, gap_s: float, give_up_s: float) -> float | None:
    """Send `head` one byte every `gap_s`; seconds until the server closed the connection, None if it never did."""
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    try:
        for byte in head:
            if time.monotonic() - start > give_up_s:
                return None
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                if await _closed_within(reader, gap_s):
                    return time.monotonic() - start
            except ConnectionError:
                return time.monotonic() - start
        return None if not await _closed_within(reader, give_up_s) else time.monotonic() - start
    finally:
        writer.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            data = await reader.read(65536)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 4")  # EOF, or an error answer before closing


# --- the gateway as its own process --------------------------------------------------------------


def process_config(tmp: Path, *, pool: Mapping[str, str], resale: Mapping[str, str], byok: Mapping[str, str],
                   model: str, limits: Mapping[str, Any] = {}, drain: Mapping[str, Any] = {},
                   port: int = 0) -> Path:
    """A config for `python -m proxy serve`: pool/resale/byok map upstream names to base URLs.

    Pool accounts read POOL_KEY, resale providers RESALE_KEY (see `process_env`).
    """
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"path": str(tmp / "okm.sqlite3")},
        "log": {"level": "info", "access_log": True},
        "limits": dict(limits),
        "drain": dict(drain),
        "providers": {name: {"base_url": url, "api_key_env": "RESALE_KEY"} for name, url in resale.items()},
        "lanes": {
            "cheap": {"pool": [{"name": name, "base_url": url, "api_key_env": "POOL_KEY", "models": [model]}
                               for name, url in pool.items()]},
            "resale": {"models": {model: {"upstreams": [{"provider": name} for name in resale]}}},
            "byok": {"providers": {name: {"base_url": url, "models": [model]} for name, url in byok.items()}},
        },
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of an LF-framed stream's data lines ([DONE] as {"done": True})."""
    out = []
    for block in payloads.blocks(raw):
        data = payloads.data_of(block)
        if data:
            out.append({"done": True} if data == b"[DONE]" else orjson.loads(data))
    return out
