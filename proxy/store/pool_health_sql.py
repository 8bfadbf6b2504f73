"""Pool-account health rows (migration 8): read them all, or merge news into them under one lock.

The merge rule itself is the caller's (proxy.lanes.health_share): this module only reads the rows
inside a transaction that serializes every merger (BEGIN IMMEDIATE on SQLite, an advisory
transaction lock on PostgreSQL), hands them over and writes back the rows that changed.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.store.db import Row, Tx
from proxy.store.rows import PoolHealthRow

Merge = Callable[[dict[str, PoolHealthRow]], dict[str, PoolHealthRow]]  # all rows → the changed ones
LOCK = 0x6F6B6D01  # pg_advisory_xact_lock key: one pool-health merge at a time across hosts
_COLUMNS = "account, failures, ejected_until, eject_reason, disabled_at, cooling_until"
SELECT = f"SELECT {_COLUMNS} FROM pool_health"


def to_row(r: Row) -> PoolHealthRow:
    return PoolHealthRow(str(r[0]), int(r[1]), float(r[2]), None if r[3] is None else str(r[3]),
                         None if r[4] is None else float(r[4]), float(r[5]))


async def merge(tx: Tx, work: Merge, *, lock: bool) -> dict[str, PoolHealthRow]:
    """Every row after `work`'s changes, all in the caller's transaction."""
    if lock:
        await tx.fetchone("SELECT pg_advisory_xact_lock(?)", (LOCK,))
    rows = {row.account: row for row in map(to_row, await tx.fetchall(SELECT))}
    changed = work(dict(rows))
    if changed:
        await tx.executemany(
            f"INSERT INTO pool_health ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account) DO UPDATE SET "
            "failures = excluded.failures, ejected_until = excluded.ejected_until, "
            "eject_reason = excluded.eject_reason, disabled_at = excluded.disabled_at, "
            "cooling_until = excluded.cooling_until",
            [(r.account, r.failures, r.ejected_until, r.eject_reason, r.disabled_at, r.cooling_until)
             for r in changed.values()])
    return {**rows, **changed}
