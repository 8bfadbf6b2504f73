"""Crash, stop and a failing store, with the gateway as a real `python -m proxy serve` process
(fakes in this test's loop): SIGKILL under load then restart, SIGTERM with 50 streams in flight,
and usage writes failing on a read-only or full store while serving goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy import appkeys
from proxy.store import Store
from proxy.store.rows import StoreUnavailable
from proxy.types import Secret
from testkit import payloads
from testkit.gateway import GatewayProcess
from testkit.upstream import USAGE, FakeUpstream, Reply, Stream
from tests.conftest import MODEL, Gateway, resale_key
from tests.fakes.hostile import CLOSE, metric, process_config, scrape, sse_events, until

PEPPER = "crash-test-pepper-0123456789abcdef"
POOL_KEY = "sk-crash-pool-canary-4e5f60"
CHAT = [{"role": "user", "content": "hi"}]


def slow_stream(events: int, gap_s: float) -> Stream:
    pieces: list[Any] = []
    for i in range(events):
        pieces += [payloads.sse(payloads.chat_chunk(MODEL, {"content": f"t{i} "})), gap_s]
    return Stream((*pieces, payloads.sse(payloads.chat_chunk(MODEL, {}, "stop")), USAGE, payloads.done()))


@dataclass
class Rig:
    tmp: Path
    pool: FakeUpstream
    resale: FakeUpstream
    key: str = ""
    gateways: list[GatewayProcess] = field(default_factory=list)

    def process(self, **config: Any) -> GatewayProcess:
        path = process_config(self.tmp, pool={"pool-0": self.pool.url}, resale={"resale-0": self.resale.url}, byok={},
                              model=MODEL, **config)
        gateway = GatewayProcess(path, {"OKM_KEY_PEPPER": PEPPER, "POOL_KEY": POOL_KEY, "RESALE_KEY": resale_key(0)},
                                 self.tmp / "gateway.log")
        self.gateways.append(gateway)
        return gateway

    @property
    def store_path(self) -> Path:
        return self.tmp / "okm.sqlite3"

    def rows(self) -> dict[str, tuple[str, int]]:
        with sqlite3.connect(self.store_path) as db:
            return {r[0]: (r[1], r[2]) for r in db.execute("SELECT request_id, outcome, status FROM usage")}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    pool, resale = await FakeUpstream("pool-0").start(), await FakeUpstream("resale-0").start()
    store = await Store.open(tmp_path / "okm.sqlite3")
    try:
        await store.create_workspace("ws")
        _, key = await store.create_api_key("ws", Secret(PEPPER))
    finally:
        await store.close()
    rig = Rig(tmp_path, pool, resale, key.reveal())
    try:
        yield rig
    finally:
        for gateway in rig.gateways:
            gateway.kill()
        await pool.stop()
        await resale.stop()


@dataclass
class Outcome:
    request_id: str | None = None  # set once the client got the status line: the request was admitted
    body: bytes = b""
    error: str | None = None


async def call(session: aiohttp.ClientSession, url: str, key: str, model: str, stream: bool) -> Outcome:
    out = Outcome()
    body = {"model": model, "messages": CHAT, "stream": stream}
    try:
        async with session.post(url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}", **CLOSE}) as resp:
            out.request_id = resp.headers.get("X-Request-Id")
            async for chunk in resp.content.iter_any():
                out.body += chunk
    except (aiohttp.ClientError, ConnectionError) as exc:
        out.error = type(exc).__name__
    return out


async def test_sigkill_under_load_then_restart_keeps_every_admitted_request(rig: Rig) -> None:
    rig.resale.default = slow_stream(30, 0.05)
    rig.pool.default = Reply(delay_s=0.05, headers=CLOSE)
    gateway = await rig.process().start()
    outcomes: list[Outcome] = []

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        while gateway.proc and gateway.proc.poll() is None:
            model, stream = (f"resale/{MODEL}", True) if i % 2 else (f"cheap/{MODEL}", False)
            outcome = await call(session, gateway.url, rig.key, model, stream)
            outcomes.append(outcome)
            if outcome.error:
                return

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(i, session)) for i in range(30)]
        await asyncio.sleep(1.5)
        gateway.signal(signal.SIGKILL)
        assert await gateway.wait(5) == -signal.SIGKILL
        await asyncio.wait_for(asyncio.gather(*clients), 10)
    admitted = [o for o in outcomes if o.request_id]
    cut = [o for o in admitted if o.error]
    assert len(admitted) > 30 and cut, "the kill should land while streams are running"
    with sqlite3.connect(rig.store_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    restarted = await rig.process().start()  # marks the dead process's in-flight rows `interrupted`
    rows = rig.rows()
    missing = [o.request_id for o in admitted if o.request_id not in rows]
    assert not missing, f"{len(missing)} admitted requests have no usage row"
    assert "interrupted" in {rows[o.request_id][0] for o in cut}
    # A request the client saw complete may still be `interrupted`: its final row was queued when the kill came.
    assert {rows[o.request_id][0] for o in admitted} <= {"ok", "interrupted"}
    async with aiohttp.ClientSession() as session:
        after = await call(session, restarted.url, rig.key, f"cheap/{MODEL}", False)
    assert after.error is None and orjson.loads(after.body)["choices"]
    log = Path(restarted.log).read_text()
    assert "(now interrupted)" in log and "Traceback" not in log
    assert POOL_KEY not in log and rig.key not in log and resale_key(0) not in log


async def test_sigterm_with_50_streams_in_flight_drains_and_exits_0(rig: Rig) -> None:
    rig.pool.default = slow_stream(8, 0.1)  # ~1 s: finishes inside the drain deadline
    rig.resale.default = slow_stream(60, 0.1)  # ~6 s: still running at the deadline
    gateway = await rig.process(drain={"deadline_s": 2}).start()
    async with aiohttp.ClientSession() as session:
        streams = [asyncio.create_task(call(session, gateway.url, rig.key,
                                            f"cheap/{MODEL}" if i % 2 else f"resale/{MODEL}", True))
                   for i in range(50)]
        while len(rig.pool.requests) + len(rig.resale.requests) < 50:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # every stream has its first event
        stopped_at = time.monotonic()
        gateway.signal(signal.SIGTERM)
        results = await asyncio.wait_for(asyncio.gather(*streams), 15)
        assert await gateway.wait(10) == 0
    assert time.monotonic() - stopped_at < 2 + 5.5, "the drain overran its deadline and grace"
    finished, cut = results[1::2], results[0::2]
    for outcome in finished:
        assert outcome.error is None and outcome.body.endswith(payloads.done())
    for outcome in cut:
        assert outcome.error is None, "a stream was cut without its in-band error"
        last = sse_events(outcome.body)[-1]
        assert b"[DONE]" not in outcome.body and last["error"]["code"] == "gateway_restarting"
    rows = rig.rows()
    assert [rows[o.request_id][0] for o in finished] == ["ok"] * 25
    assert [rows[o.request_id][0] for o in cut] == ["interrupted"] * 25
    assert "in_flight" not in {outcome for outcome, _ in rows.values()}
    log = gateway.output
    assert "Traceback" not in log and POOL_KEY not in log and rig.key not in log


# --- a store that cannot be written --------------------------------------------------------------

STORE_FAULTS = {
    "read-only": "PRAGMA query_only = ON",
    "full": "PRAGMA max_page_count = 1",  # below the current size: every new page is refused (SQLITE_FULL)
}


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
async def test_usage_writes_failing_keep_serving_and_are_counted(gateway: Any, caplog: pytest.LogCaptureFixture,
                                                                  fault: str) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=())
    store, usage = gw.app[appkeys.STORE], gw.app[appkeys.USAGE]
    handled = usage.write_failures + usage.rows_written
    async with store.transaction() as db:
        if fault == "full":
            await db.execute("CREATE TABLE filler (x BLOB)")
        await db.execute(STORE_FAULTS[fault])
    if fault == "full":  # fill the free space left in the file's pages, so every usage row needs a new page
        for size in (2000, 500, 100, 20, 1):
            with contextlib.suppress(StoreUnavailable):
                while True:
                    async with store.transaction() as db:
                        await db.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))
    answers = []
    for i in range(30):
        model, stream = (f"cheap/{MODEL}", False) if i % 2 else (f"resale/{MODEL}", True)
        answers.append(await gw.post("/v1/chat/completions", {"model": model, "messages": CHAT, "stream": stream}))
    assert [a.status for a in answers] == [200] * 30
    assert all(a.body.endswith(payloads.done()) for a in answers[0::2])
    await until(lambda: usage.write_failures + usage.rows_written - handled == 60, within_s=5.0)  # every row tried
    failures = metric(await scrape(gw.url, gw.session), "okm_usage_write_failures_total")
    if fault == "read-only":
        assert failures == 60, "every row (an admission and a final row per request) is counted"
    else:  # rows that still fit in the file's free space are written; the rest are counted
        assert failures >= 1 and failures == usage.write_failures
    assert (await gw.get("/readyz", authed=False)).status == 200
    logged = [r for r in caplog.records if "usage write failed" in r.getMessage()]
    assert logged and all(r.levelname == "ERROR" and not r.exc_info for r in logged)
    assert gw.key not in caplog.text
