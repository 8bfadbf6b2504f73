"""Ownership of in-flight rows and holds on both backends (SQLite and a real PostgreSQL): a process
marks `interrupted` and releases the holds of dead instances only — an expired lease, or a pid that
no longer runs on this machine — never those of a live one, on this host or another."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from proxy.billing.holds import decide
from proxy.store import Store
from proxy.store.instances import InstanceLease, machine, pid_start
from proxy.store.rows import HoldRequest, UsageRow
from proxy.store.usage_writer import UsageRecorder
from proxy.types import Endpoint, Lane, Principal, RequestRecord, Route, Secret
from tests.ops_support import bearer, chat, config_data, fake_upstream, make_keys, process_gateway, write_config
from tests.test_workers import children

ROOT = Path(__file__).resolve().parent.parent
MONTH = time.strftime("%Y-%m", time.gmtime())
ROUTE = Route(Lane.RESALE, "resale/gpt-5.4", "gpt-5.4")
HELD = "SELECT 1 FROM usage WHERE outcome = 'in_flight' AND hold_micros > 0"  # a hold is an in-flight row's


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def until(check: Callable[[], bool], timeout: float = 45.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def admit(recorder: UsageRecorder, request_id: str, workspace_id: int) -> None:
    record = RequestRecord(request_id, time.time(), time.monotonic(), Endpoint.CHAT,
                           principal=Principal(workspace_id, "acme", "k", False), route=ROUTE)
    assert await recorder.admit(record)


async def held(store: Store, request_id: str, owner: str, amount: int, key_id: str | None = None) -> None:
    admission = UsageRow(request_id, time.time(), 1, key_id, "resale", "resale/gpt-5.4", None, "chat/completions",
                         False, 0, "in_flight", hold_micros=amount, owner=owner)
    hold = HoldRequest(request_id, 1, key_id, amount, owner, MONTH, admission, key_limited=key_id is not None)
    assert await store.take_hold(hold, decide(amount, "USD", MONTH)) is None


async def outcomes(store: Store) -> dict[str, str]:
    return {r[0]: r[1] for r in await store.fetchall("SELECT request_id, outcome FROM usage")}


async def foreign_instance(store: Store, instance_id: str, expires_at: float) -> None:
    """An instance of another host: only its lease can tell whether it lives."""
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO gateway_instances (id, host, pid, pid_start, started_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (instance_id, "other-host|boot|ns", 4242, 1, time.time(), expires_at))


async def test_only_dead_instances_rows_are_marked_and_their_holds_released(store_url: str) -> None:
    store = await Store.open(store_url)
    a, b = InstanceLease(store), InstanceLease(store)  # two live processes (here: one pid, two leases)
    recorders = [UsageRecorder(store, owner=a.id), UsageRecorder(store, owner=b.id)]
    try:
        await a.start()
        await b.start()
        for r in recorders:
            await r.start()
        await store.create_workspace("acme")
        key, _ = await store.create_api_key("acme", Secret("pepper"), spend_limit_micros=10_000_000)
        await store.add_ledger_entry("acme", 10_000_000, "topup", "", "ops")
        await foreign_instance(store, "far-live", time.time() + 60)
        await foreign_instance(store, "far-dead", time.time() - 1)  # its host stopped renewing
        await admit(recorders[0], "req-plain", 1)  # an admission row without a hold
        # A hold is its request's in-flight admission row (owner, hold_micros).
        await held(store, "req-a", a.id, 100_000)
        await held(store, "req-b", b.id, 200_000, key.id)
        await held(store, "req-far-live", "far-live", 300_000)
        await held(store, "req-far-dead", "far-dead", 400_000, key.id)
        await held(store, "req-unknown", "an-owner-no-instance-names", 500_000)
        async with store.transaction() as tx:  # a row of an older gateway (no owner) ...
            await tx.execute("INSERT INTO usage (request_id, started_at, endpoint, outcome, owner) VALUES (?, ?, ?, ?, ?)",
                             ("req-old", 1.0, "chat/completions", "in_flight", None))
            # ... and a hold an earlier version recorded in billing_holds, beside its admission row's copy
            await tx.execute("INSERT INTO usage (request_id, started_at, endpoint, outcome, owner, workspace_id, "
                             "hold_micros) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             ("req-legacy", 1.0, "chat/completions", "in_flight", "far-dead", 1, 50_000))
            await tx.execute("INSERT INTO billing_holds (request_id, workspace_id, key_id, amount_micros, owner, "
                             "created_at) VALUES (?, ?, ?, ?, ?, ?)", ("req-legacy", 1, None, 50_000, "far-dead", 1.0))
            await tx.execute("UPDATE billing_accounts SET held_micros = held_micros + 50000 WHERE workspace_id = 1")
        assert await store.holds_of(1) == (6, 1_550_000)  # the legacy hold counted once

        swept = await b.sweep()
        # marked: far-dead's, the unknown owner's, the ownerless and the legacy row; released: far-dead's,
        # the unknown owner's and the legacy hold (once: not again from its row)
        assert (swept.interrupted, swept.released) == (4, 3)
        assert await outcomes(store) == {"req-plain": "in_flight", "req-a": "in_flight", "req-b": "in_flight",
                                         "req-far-live": "in_flight", "req-far-dead": "interrupted",
                                         "req-unknown": "interrupted", "req-old": "interrupted",
                                         "req-legacy": "interrupted"}
        assert await store.holds_of(1) == (3, 600_000)  # req-a, req-b, req-far-live
        assert (await store.billing_account("acme")).held_micros == 600_000  # recounted from the holds left
        assert await store.fetchall("SELECT held_micros FROM api_keys WHERE id = ?", (key.id,)) == [(200_000,)]
        assert (await b.sweep()).released == 0  # nothing twice

        await recorders[0].stop()
        await a.stop()  # a clean stop removes the lease: what it left in flight is now a dead owner's
        swept = await b.sweep()
        assert (swept.interrupted, swept.released) == (2, 1)  # req-plain and req-a; req-a's hold
        assert (await outcomes(store))["req-a"] == "interrupted" and (await outcomes(store))["req-b"] == "in_flight"
        assert (await store.billing_account("acme")).held_micros == 500_000
    finally:
        for r in recorders:
            await r.stop()
        await a.stop()
        await b.stop()
        await store.close()


async def test_a_killed_process_on_this_machine_is_swept_at_once(store_url: str) -> None:
    """Its lease is still fresh (TTL_S has not passed), but its pid is gone: a restart releases its
    holds and marks its rows at start, as SPEC §8 wants ("gone at restart")."""
    script = textwrap.dedent(f"""
        import asyncio, time
        from proxy.billing.holds import decide
        from proxy.store import Store
        from proxy.store.instances import InstanceLease
        from proxy.store.rows import HoldRequest
        from proxy.store.usage_writer import UsageRecorder
        from proxy.types import Endpoint, Lane, Principal, RequestRecord, Route

        async def main():
            store = await Store.open({store_url!r})
            await store.create_workspace("acme")
            await store.add_ledger_entry("acme", 1_000_000, "topup", "", "ops")
            lease = InstanceLease(store)
            await lease.start()
            recorder = UsageRecorder(store, owner=lease.id)
            await recorder.start()
            route = Route(Lane.RESALE, "resale/gpt-5.4", "gpt-5.4")
            record = RequestRecord("req-killed", time.time(), time.monotonic(), Endpoint.CHAT,
                                   principal=Principal(1, "acme", "k", False), route=route)
            month = time.strftime("%Y-%m", time.gmtime())
            record.hold_micros = 1000  # the hold commits the request's admission row, as a request's does
            hold = HoldRequest("req-killed", 1, None, 1000, lease.id, month, recorder.admission_row(record))
            assert await store.take_hold(hold, decide(1000, "USD", month)) is None
            record.admitted = True
            assert await recorder.admit(record)
            print("admitted", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "admitted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    store = await Store.open(store_url)
    lease = InstanceLease(store)
    try:
        [(host, expires_at)] = await store.fetchall("SELECT host, expires_at FROM gateway_instances")
        assert host == machine() and expires_at > time.time()  # the dead one's lease has not expired yet
        swept = await lease.start()
        assert (swept.interrupted, swept.released) == (1, 1)
        row = await store.get_usage("req-killed")
        assert row is not None and (row.outcome, row.lane, row.public_model) == ("interrupted", "resale", "resale/gpt-5.4")
        assert (await store.billing_account("acme")).held_micros == 0
        assert [r[0] for r in await store.fetchall("SELECT id FROM gateway_instances")] == [lease.id]
        if store.kind == "sqlite":
            assert await store.fetchall("PRAGMA integrity_check") == [("ok",)]
    finally:
        await lease.stop()
        await store.close()


def test_pid_start_tells_a_running_pid_from_a_gone_one() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = pid_start(proc.pid)
        assert started is not None and started == pid_start(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)
    assert pid_start(proc.pid) is None  # reaped: gone (a zombie would count as gone too)


async def test_a_restarted_worker_leaves_its_siblings_rows_and_holds_alone(tmp_path: Path) -> None:
    """2 workers on one SQLite file: a stream runs on one, the other is SIGKILLed and restarted by
    the supervisor; the restart's sweep leaves the running stream's row in flight and its hold in
    place, and the stream then ends `ok` and charged."""
    async with fake_upstream() as up:
        data = config_data(up, workers=2)
        data["lanes"]["resale"]["models"]["slow-200-100"] = {"upstreams": [{"provider": "fake"}]}  # 20 s
        data["billing"] = {"enabled": True, "prices": {"resale/*": {"input": "1.00", "output": "2.00"},
                                                       "cheap/*": {"input": "1.00", "output": "2.00"}}}
        config = write_config(tmp_path, data)
        db = tmp_path / "okm.sqlite3"
        key = (await make_keys(db, "acme"))["acme"]
        store = await Store.open(db)
        try:
            await store.add_ledger_entry("acme", 10_000_000, "topup", "", "ops")
        finally:
            await store.close()
        async with process_gateway(config) as gw:
            await gw.wait_for_line("all 2 workers ready", timeout=60)

            async def stream() -> bytes:
                async with aiohttp.ClientSession() as session, session.post(
                        f"{gw.url}/v1/chat/completions", json=chat("resale/slow-200-100", stream=True),
                        headers=bearer(key), timeout=aiohttp.ClientTimeout(total=60)) as r:
                    assert r.status == 200
                    return await r.read()

            running = asyncio.create_task(stream())
            try:
                await until(lambda: bool(query(db, HELD)))
                [(request_id, owner)] = query(db, "SELECT request_id, owner FROM usage WHERE outcome = 'in_flight'")
                serving = int(owner.split(":")[-2])  # host:pid:random
                [other] = [pid for pid in children(gw.pid) if pid != serving]
                os.kill(other, signal.SIGKILL)
                await gw.wait_for_line(rf"worker \d \(pid {other}\) died with status -9", timeout=30)
                await until(lambda: gw.output.count("serving on") == 3)  # the restart has registered and swept
                assert not running.done(), "the stream should outlast the restart"
                assert query(db, "SELECT outcome FROM usage WHERE request_id = ?", (request_id,)) == [("in_flight",)]
                assert query(db, "SELECT request_id FROM usage WHERE outcome = 'in_flight' AND hold_micros > 0") \
                    == [(request_id,)]
                assert len(query(db, "SELECT id FROM gateway_instances")) == 2  # the dead worker's lease is gone
                body = await asyncio.wait_for(running, 60)
            finally:
                running.cancel()
            assert body.rstrip().endswith(b"data: [DONE]")
            [(outcome, cost)] = query(db, "SELECT outcome, cost_micros FROM usage WHERE request_id = ?", (request_id,))
            assert outcome == "ok" and cost > 0
            assert query(db, HELD) == []
