"""SQL for limits shared by every worker and host on one store: request buckets, stream leases.

A bucket row is read with `tx.for_update` and rewritten in the same transaction, so two
processes never spend the same token; a stream lease is a row that expires unless renewed, so
a process that dies frees its streams within the lease time. Times are epoch seconds from the
caller (hosts are assumed NTP-synchronised).
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.store.db import Tx


async def take_token(tx: Tx, workspace_id: int, rpm: int, now: float) -> float | None:
    """Spend one token of the workspace's bucket (N tokens, refilled at N a minute).

    Returns None when taken, else the seconds until the next token (nothing is spent).
    """
    await tx.execute(
        "INSERT INTO rate_buckets (workspace_id, tokens, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (workspace_id) DO NOTHING", (workspace_id, float(rpm), now))
    row = await tx.fetchone(
        "SELECT tokens, updated_at FROM rate_buckets WHERE workspace_id = ?" + tx.for_update, (workspace_id,))
    assert row is not None
    rate = rpm / 60.0
    tokens = min(float(rpm), float(row[0]) + max(0.0, now - float(row[1])) * rate)
    if tokens < 1.0:
        return (1.0 - tokens) / rate
    await tx.execute("UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE workspace_id = ?",
                     (tokens - 1.0, max(now, row[1]), workspace_id))
    return None


async def take_lease(tx: Tx, lease_id: str, workspace_id: int, cap: int, now: float, ttl_s: float) -> bool:
    """One of the workspace's `cap` stream slots as a lease row; False when all are taken."""
    await tx.fetchone("SELECT id FROM workspaces WHERE id = ?" + tx.for_update, (workspace_id,))  # one taker at a time
    await tx.execute("DELETE FROM stream_leases WHERE workspace_id = ? AND expires_at < ?", (workspace_id, now))
    row = await tx.fetchone("SELECT count(*) FROM stream_leases WHERE workspace_id = ?", (workspace_id,))
    if row is not None and row[0] >= cap:
        return False
    await tx.execute("INSERT INTO stream_leases (id, workspace_id, expires_at) VALUES (?, ?, ?)",
                     (lease_id, workspace_id, now + ttl_s))
    return True


async def drop_leases(tx: Tx, lease_ids: Sequence[str]) -> None:
    await tx.executemany("DELETE FROM stream_leases WHERE id = ?", [(i,) for i in lease_ids])


async def renew_leases(tx: Tx, lease_ids: Sequence[str], expires_at: float) -> None:
    await tx.executemany("UPDATE stream_leases SET expires_at = ? WHERE id = ?", [(expires_at, i) for i in lease_ids])

