"""SQLite's WAL is copied back into the database off the commit path, and stays bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.store import Store, sqlite


async def test_the_checkpointer_keeps_the_wal_small_between_bursts(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """20 commits of ~200 KB with pauses between them. Each commit writes ~50 pages. The writer
    never checkpoints on commit, so without the checkpointer the WAL grows to ~4 MB. With SQLite's
    own checkpoint every 1,000 pages it stays at ~4 MB. With the checkpointer it is copied back
    after each pause, and the next commit starts the WAL over."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY_S", 0.03)
    store = await Store.open(tmp_path / "okm.db")
    try:
        db = store.db
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        for _ in range(20):
            await db.execute_batch([("INSERT INTO blobs (data) VALUES (?)", [(b"x" * 4000,)] * 50)])
            await asyncio.sleep(0.1)
        wal = (tmp_path / "okm.db-wal").stat().st_size
        rows = await db.fetchone("SELECT count(*) FROM blobs")
    finally:
        await store.close()
    assert rows == (1000,)
    assert wal < 1_000_000, f"the WAL grew to {wal} bytes"
    assert not (tmp_path / "okm.db-wal").exists() or (tmp_path / "okm.db-wal").stat().st_size == 0


async def test_a_commit_does_not_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the checkpointer idle, 8 MB of commits leave an 8 MB WAL: no COMMIT waited for a checkpoint."""
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY_S", 3600.0)
    store = await Store.open(tmp_path / "okm.db")
    try:
        db = store.db
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        for _ in range(40):
            await db.execute_batch([("INSERT INTO blobs (data) VALUES (?)", [(b"x" * 4000,)] * 50)])
        wal = (tmp_path / "okm.db-wal").stat().st_size
    finally:
        await store.close()
    assert wal > 7_000_000, f"the WAL is {wal} bytes: a commit checkpointed"
