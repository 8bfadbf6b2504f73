"""SQLite group commit of `run_transaction` (the prepaid holds): works queued together share one
transaction, each in its own savepoint, so one that fails is undone alone and the others commit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from proxy.store import Store
from proxy.store.db import Tx
from proxy.store.rows import StoreUnavailable


async def test_queued_works_commit_together_and_a_failing_one_alone_is_undone(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "okm.sqlite3")
    try:
        await store.create_workspace("acme")

        async def rename(tx: Tx, name: str) -> int:
            await tx.execute("INSERT INTO workspaces (name, created_at) VALUES (?, 0)", (name,))
            row = await tx.fetchone("SELECT count(*) FROM workspaces")
            assert row is not None
            return int(row[0])

        async def broken(tx: Tx) -> int:
            await tx.execute("INSERT INTO workspaces (name, created_at) VALUES ('half', 0)")
            await tx.execute("INSERT INTO workspaces (name, created_at) VALUES ('acme', 0)")  # unique name: fails
            return 0

        results = await asyncio.gather(
            store.db.run_transaction(lambda tx: rename(tx, "a")),
            store.db.run_transaction(broken),
            store.db.run_transaction(lambda tx: rename(tx, "b")),
            return_exceptions=True,
        )
        assert results[0] == 2 and results[2] == 3  # each saw the ones before it
        assert isinstance(results[1], StoreUnavailable)
        names = [r[0] for r in await store.fetchall("SELECT name FROM workspaces ORDER BY name")]
        assert names == ["a", "acme", "b"]  # 'half' was rolled back with its own work only
    finally:
        await store.close()


async def test_a_caller_that_leaves_strands_no_one(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "okm.sqlite3")
    try:
        async def count(tx: Tx) -> int:
            row = await tx.fetchone("SELECT count(*) FROM workspaces")
            assert row is not None
            return int(row[0])

        first = asyncio.ensure_future(store.db.run_transaction(count))
        second = asyncio.ensure_future(store.db.run_transaction(count))
        await asyncio.sleep(0)
        first.cancel()
        assert await asyncio.wait_for(second, 5) == 0
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await store.close()


async def test_a_transaction_cancelled_while_its_commit_is_queued_ends_cancelled_and_leaves_the_store_usable(
        tmp_path: Path) -> None:
    """The instance lease's renewal, cancelled at shutdown, once ended in `cannot rollback - no
    transaction is active`: the queued COMMIT ran before the ROLLBACK sent after the cancel."""
    store = await Store.open(tmp_path / "okm.sqlite3")
    try:
        writer = store.db._writer  # reason: occupy the writer's thread so the COMMIT waits in its queue
        busy: asyncio.Future[None] | None = None

        async def work() -> None:
            nonlocal busy
            async with store.db.transaction() as tx:
                await tx.execute("INSERT INTO workspaces (name, created_at) VALUES ('kept', 0)")
                busy = asyncio.ensure_future(writer._execute(time.sleep, 0.3))
                await asyncio.sleep(0)  # the sleep is queued on the thread before the COMMIT

        task = asyncio.create_task(work())
        await asyncio.sleep(0.1)  # the COMMIT is queued behind the sleep
        assert writer.in_transaction
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert busy is not None
        await busy
        async with store.db.transaction() as tx:  # the writer is usable: no transaction left open
            await tx.execute("INSERT INTO workspaces (name, created_at) VALUES ('after', 0)")
        names = [r[0] for r in await store.fetchall("SELECT name FROM workspaces ORDER BY name")]
        assert names == ["after", "kept"]  # the COMMIT sent before the cancel took effect
    finally:
        await store.close()
