"""SQLite group commit of `run_transaction` (the prepaid holds): works queued together share one
transaction, each in its own savepoint, so one that fails is undone alone and the others commit."""

from __future__ import annotations

import asyncio
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
