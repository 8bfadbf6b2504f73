"""Usage recording on a real SQLite file: durability of admissions, idempotent finishes,
crash recovery, batching under concurrency, and write failures kept off the request path."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from proxy.store import Store
from proxy.store.rows import USAGE_IN_FLIGHT, WorkspaceNotFound
from proxy.store.usage_writer import UsageRecorder
from proxy.types import Endpoint, Lane, Outcome, Principal, RequestRecord, Route, Secret, Usage

ROOT = Path(__file__).resolve().parents[1]
PEPPER = Secret("test-pepper")


def _sql(path, query):
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


async def _env(target):
    store = await Store.open(target)
    ws = await store.create_workspace("acme")
    api_key, _ = await store.create_api_key("acme", PEPPER)
    recorder = UsageRecorder(store)
    await recorder.start()
    principal = Principal(ws.id, ws.name, api_key.id, False)
    return store, recorder, principal


@pytest.fixture
async def env(store_url):
    """Store, recorder and principal, on each backend."""
    store, recorder, principal = await _env(store_url)
    yield store, recorder, principal
    await recorder.stop()
    await store.close()


@pytest.fixture
async def sqlite_env(tmp_path):
    store, recorder, principal = await _env(tmp_path / "okm.sqlite3")
    yield store, recorder, principal
    await recorder.stop()
    await store.close()


def _record(principal, request_id="req-1", lane=Lane.CHEAP, model="gpt-5.4", started_at=None):
    return RequestRecord(
        request_id, started_at or time.time(), time.monotonic(), Endpoint.CHAT, stream=True, principal=principal,
        route=Route(lane, f"{lane.value}/{model}", model), upstream="pool-a",
    )


def _finished(record, prompt=10, completion=5, outcome=Outcome.OK, status=200):
    record.status, record.outcome = status, outcome
    record.usage = Usage(prompt, completion, prompt + completion, estimated=False)
    record.ttfb_s, record.duration_s, record.attempts = 0.05, 0.4, 1
    return record


async def test_admission_is_durable_when_its_future_resolves(env):
    store, recorder, principal = env
    record = _record(principal)
    assert await recorder.admit(record) is True
    rows = await store.fetchall("SELECT request_id, outcome, status FROM usage")  # the read connection
    assert rows == [("req-1", USAGE_IN_FLIGHT, 0)]
    recorder.finish(_finished(record))
    await recorder.stop()
    row = await store.get_usage("req-1")
    assert (row.outcome, row.status, row.prompt_tokens, row.completion_tokens, row.total_tokens) == ("ok", 200, 10, 5, 15)
    assert (row.workspace_id, row.key_id, row.lane, row.public_model, row.upstream) == (
        principal.workspace_id, principal.key_id, "cheap", "cheap/gpt-5.4", "pool-a")
    assert (row.endpoint, row.stream, row.tokens_estimated, row.ttfb_s, row.duration_s) == ("chat/completions", True, False, 0.05, 0.4)
    keys = await store.list_api_keys("acme")
    assert keys[0].last_used_at == pytest.approx(record.started_at)


async def test_finish_is_idempotent_and_wins_over_a_late_admission(env):
    store, recorder, principal = env
    record = _record(principal)
    recorder.finish(_finished(record, prompt=1, completion=1))
    recorder.finish(_finished(record, prompt=7, completion=3))
    assert await recorder.admit(record) is True  # late admission must not reset the final row
    await recorder.stop()
    row = await store.get_usage("req-1")
    assert (row.outcome, row.total_tokens) == ("ok", 10)
    assert await store.fetchall("SELECT count(*) FROM usage") == [(1,)]


async def test_stop_flushes_everything_queued(env):
    store, recorder, principal = env
    for i in range(450):
        recorder.finish(_finished(_record(principal, f"req-{i}")))
    await recorder.stop()
    assert await store.fetchall("SELECT count(*), sum(total_tokens) FROM usage") == [(450, 450 * 15)]
    assert recorder.write_failures == 0
    assert recorder.admit(_record(principal, "late")).result() is False  # after stop: refused, counted
    assert recorder.write_failures == 1


async def test_500_concurrent_requests_with_another_writer_and_no_database_locked(env, caplog):
    store, recorder, principal = env
    cli = await Store.open(store.url)  # another process writing at the same time

    async def request(i):
        record = _record(principal, f"req-{i}", lane=(Lane.CHEAP, Lane.RESALE)[i % 2])
        assert await recorder.admit(record) is True
        await asyncio.sleep(0)
        recorder.finish(_finished(record, prompt=i, completion=1))

    async def operator():
        for i in range(30):
            await cli.create_workspace(f"other{i}")
            await cli.create_api_key(f"other{i}", PEPPER)

    with caplog.at_level(logging.WARNING):
        await asyncio.gather(operator(), *(request(i) for i in range(500)))
        await recorder.stop()
    await cli.close()
    assert recorder.write_failures == 0
    assert "locked" not in caplog.text
    totals = await store.fetchall(
        "SELECT count(*), sum(prompt_tokens), sum(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END) FROM usage")
    assert [tuple(int(v) for v in row) for row in totals] == [(500, sum(range(500)), 500)]
    if store.kind == "sqlite":
        assert _sql(store.path, "PRAGMA integrity_check") == [("ok",)]


async def test_write_failures_are_counted_and_never_raise(sqlite_env, caplog):
    store, recorder, principal = sqlite_env
    pages = _sql(store.path, "PRAGMA page_count")[0][0]
    async with store.transaction() as db:  # the writer connection may not grow: "disk full"
        await db.execute(f"PRAGMA max_page_count = {pages}")
    long_model = "m" * 250
    with caplog.at_level(logging.ERROR):
        results = await asyncio.gather(
            *(recorder.admit(_record(principal, f"full-{i}", model=long_model)) for i in range(400))
        )
    assert False in results
    assert recorder.write_failures == results.count(False) > 0
    assert "usage write failed" in caplog.text and "full" in caplog.text
    async with store.transaction() as db:
        await db.execute("PRAGMA max_page_count = 1073741823")
    assert await recorder.admit(_record(principal, "after")) is True  # the writer survived


async def test_summary_per_workspace_lane_and_model(env):
    store, recorder, principal = env
    old = time.time() - 10 * 86400
    beta = await store.create_workspace("beta")
    other = Principal(beta.id, "beta", "k2", False)
    rows = [
        _finished(_record(principal, "a1", Lane.CHEAP, "gpt-5.4"), 10, 5),
        _finished(_record(principal, "a2", Lane.CHEAP, "gpt-5.4"), 20, 5, Outcome.UPSTREAM_ERROR, 502),
        _finished(_record(principal, "a3", Lane.RESALE, "gpt-5.4"), 1, 1),
        _finished(_record(principal, "a-old", Lane.CHEAP, "gpt-5.4", started_at=old), 100, 100),
        _finished(_record(other, "b1", Lane.BYOK, "gpt-5.4"), 3, 3),
    ]
    for record in rows:
        recorder.finish(record)
    await recorder.stop()
    totals = await store.usage_summary(since=time.time() - 86400)
    assert [(t.workspace, t.lane, t.model, t.requests, t.errors, t.total_tokens) for t in totals] == [
        ("acme", "cheap", "cheap/gpt-5.4", 2, 1, 40),
        ("acme", "resale", "resale/gpt-5.4", 1, 0, 2),
        ("beta", "byok", "byok/gpt-5.4", 1, 0, 6),
    ]
    acme_all = await store.usage_summary(workspace="acme")
    assert sum(t.requests for t in acme_all) == 4
    with pytest.raises(WorkspaceNotFound):
        await store.usage_summary(workspace="nope")


# --- retention: old rows become daily totals, counted once --------------------------------------

DAY = 86400.0


@pytest.fixture
async def backend_store(store_url):
    from proxy.store import Store

    s = await Store.open(store_url)
    yield s
    await s.close()


async def test_retention_rolls_old_rows_into_daily_totals_exactly_once(backend_store) -> None:
    import time

    from proxy.store.rows import UsageRow

    s = backend_store
    ws = await s.create_workspace("acme")
    now = time.time()
    old_day = now - 500 * DAY

    def row(i: int, started: float, outcome: str = "ok", **counts: int) -> UsageRow:
        return UsageRow(f"req_{i}", started, ws.id, None, "cheap", "cheap/m", "pool-0", "chat/completions", False, 200,
                        outcome, **counts)

    old = [row(1, old_day, prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_micros=7),
           row(2, old_day + 60, prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_micros=1),
           row(3, old_day + 120, "rejected")]
    await s.write_usage([], [*old, row(4, now - DAY, prompt_tokens=9)])
    await s.write_usage([row(5, old_day + 180, "in_flight")], [])  # still running: never swept
    assert await s.sweep_usage(now - 400 * DAY) == 3
    assert await s.sweep_usage(now - 400 * DAY) == 0  # a second sweep counts nothing twice
    left = sorted(r[0] for r in await s.fetchall("SELECT request_id FROM usage"))
    assert left == ["req_4", "req_5"]
    daily = sorted(tuple(r) for r in await s.fetchall(
        "SELECT day, workspace_id, lane, public_model, outcome, requests, prompt_tokens, completion_tokens, "
        "total_tokens, cost_micros FROM usage_daily"))
    day = time.strftime("%Y-%m-%d", time.gmtime(old_day))
    assert [tuple(int(v) if not isinstance(v, str) else v for v in d) for d in daily] == [
        (day, ws.id, "cheap", "cheap/m", "ok", 2, 11, 7, 18, 8),
        (day, ws.id, "cheap", "cheap/m", "rejected", 1, 0, 0, 0, 0),
    ]


async def test_usage_rows_wait_out_a_postgresql_blip_and_are_written(caplog):
    from tests.pg import fresh_schema, server_url

    async with fresh_schema() as url:
        name = url.rsplit("search_path=", 1)[1]
        store, recorder, principal = await _env(f"{url}&application_name={name}")
        try:
            import asyncpg

            admin = await asyncpg.connect(server_url())
            try:  # cut every connection of this store only (other tests and programs share the server)
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                                    name)
            finally:
                await admin.close()
            with caplog.at_level(logging.WARNING):
                for i in range(5):
                    recorder.finish(_finished(_record(principal, f"blip-{i}")))
                async with asyncio.timeout(10):
                    while recorder.rows_written < 5:
                        await asyncio.sleep(0.05)
            assert recorder.write_failures == 0
            assert await store.fetchall("SELECT count(*) FROM usage WHERE request_id LIKE 'blip-%'") == [(5,)]
        finally:
            await recorder.stop()
            await store.close()
