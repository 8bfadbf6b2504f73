"""SIGKILL during billed load, with the gateway as a real `python -m proxy serve` process: after the
restart no hold is left, every answered JSON request is charged, and the running balance equals
credits minus the usage rows' costs."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from proxy.store import Store
from proxy.types import Secret
from testkit import payloads
from testkit.gateway import GatewayProcess
from testkit.upstream import USAGE, FakeUpstream, Reply, Stream
from tests.conftest import MODEL, resale_key
from tests.fakes.hostile import CLOSE, process_config

PEPPER = "billing-crash-pepper-0123456789abcdef"
BILLING = {"enabled": True, "prices": {"cheap/*": {"input": "1.00", "output": "2.00"},
                                       "resale/*": {"input": "1.00", "output": "2.00"}}}
CREDIT = 100_000_000


@dataclass
class Call:
    request_id: str | None = None
    status: int = 0
    body: bytes = b""
    error: str | None = None

    @property
    def answered_json(self) -> bool:
        if self.error or self.status != 200:
            return False
        try:
            return bool(orjson.loads(self.body)["choices"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False


async def call(session: aiohttp.ClientSession, url: str, key: str, model: str, stream: bool) -> Call:
    out = Call()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 200}
    try:
        async with session.post(url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}", **CLOSE}) as resp:
            out.request_id, out.status = resp.headers.get("X-Request-Id"), resp.status
            async for chunk in resp.content.iter_any():
                out.body += chunk
    except (aiohttp.ClientError, ConnectionError) as exc:
        out.error = type(exc).__name__
    return out


def billed_config(tmp: Path, pool: FakeUpstream, resale: FakeUpstream) -> Path:
    path = process_config(tmp, pool={"pool-0": pool.url}, resale={"resale-0": resale.url}, byok={}, model=MODEL)
    config = yaml.safe_load(path.read_text())
    config["billing"] = BILLING
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def query(db_path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql).fetchall()


async def test_sigkill_during_billed_load_leaves_no_hold_and_no_lost_charge(tmp_path: Path) -> None:
    pool, resale = await FakeUpstream("pool-0").start(), await FakeUpstream("resale-0").start()
    pool.default = Reply(delay_s=0.05, headers=CLOSE)
    pieces: list[Any] = []
    for i in range(20):
        pieces += [payloads.sse(payloads.chat_chunk(MODEL, {"content": f"t{i} "})), 0.05]
    resale.default = Stream((*pieces, payloads.sse(payloads.chat_chunk(MODEL, {}, "stop")), USAGE, payloads.done()))
    store = await Store.open(tmp_path / "okm.sqlite3")
    try:
        await store.create_workspace("ws")
        _, key = await store.create_api_key("ws", Secret(PEPPER))
        await store.add_ledger_entry("ws", CREDIT, "topup", "crash test", "test")
    finally:
        await store.close()
    config = billed_config(tmp_path, pool, resale)
    env = {"OKM_KEY_PEPPER": PEPPER, "POOL_KEY": "sk-pool-crash", "RESALE_KEY": resale_key(0)}
    gateways = [GatewayProcess(config, env, tmp_path / "gateway.log")]
    try:
        gateway = await gateways[0].start()
        calls: list[Call] = []

        async def client(i: int, session: aiohttp.ClientSession) -> None:
            while gateway.proc and gateway.proc.poll() is None:
                model, stream = (f"resale/{MODEL}", True) if i % 2 else (f"cheap/{MODEL}", False)
                result = await call(session, gateway.url, key.reveal(), model, stream)
                calls.append(result)
                if result.error:
                    return

        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(client(i, session)) for i in range(24)]
            await asyncio.sleep(1.5)
            held_before = query(tmp_path / "okm.sqlite3", "SELECT count(*) FROM usage WHERE outcome = 'in_flight' AND hold_micros > 0")[0][0]
            gateway.signal(signal.SIGKILL)
            assert await gateway.wait(5) == -signal.SIGKILL
            await asyncio.wait_for(asyncio.gather(*clients), 10)
        assert held_before > 0, "the kill should land while requests hold balance"
        left = query(tmp_path / "okm.sqlite3", "SELECT count(*) FROM usage WHERE outcome = 'in_flight' AND hold_micros > 0")[0][0]
        assert left > 0  # the dead process's holds are still there ...

        gateways.append(GatewayProcess(config, env, tmp_path / "gateway-2.log"))
        await gateways[1].start()
        db = tmp_path / "okm.sqlite3"
        assert query(db, "SELECT count(*) FROM usage WHERE outcome = 'in_flight' AND hold_micros > 0") == [(0,)]  # ... and gone after the restart
        assert query(db, "SELECT held_micros FROM billing_accounts") == [(0,)]
        rows = {r[0]: r[1:] for r in query(db, "SELECT request_id, outcome, cost_micros FROM usage")}
        answered = [c for c in calls if c.answered_json]
        assert len(answered) > 10
        lost = [c.request_id for c in answered if rows[c.request_id][0] != "ok" or rows[c.request_id][1] <= 0]
        assert not lost, f"answered requests without their charge: {lost}"
        assert all(cost > 0 for outcome, cost in rows.values() if outcome == "ok")
        [(credits, charges)] = query(db, "SELECT credits_micros, charges_micros FROM billing_accounts")
        assert credits == CREDIT and charges == query(db, "SELECT sum(cost_micros) FROM usage")[0][0]
        assert "released" in Path(gateways[1].log).read_text() and "Traceback" not in Path(gateways[1].log).read_text()
    finally:
        for g in gateways:
            g.kill()
        await pool.stop()
        await resale.stop()
