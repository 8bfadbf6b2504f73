"""The shared pool-health rows (migration 8) on each backend: merges serialize across connections,
and the cool-downs migration 7 stored survive the upgrade."""

from __future__ import annotations

import asyncio
import dataclasses

from proxy.store import Store
from proxy.store.migrations import load_migrations
from proxy.store.rows import PoolHealthRow


async def test_merges_from_two_processes_serialize_and_every_row_reads_back(store_url: str) -> None:
    first, second = await Store.open(store_url), await Store.open(store_url)  # two pools of connections

    def one_more_failure(rows: dict[str, PoolHealthRow]) -> dict[str, PoolHealthRow]:
        row = rows.get("pool-a", PoolHealthRow("pool-a"))
        return {"pool-a": dataclasses.replace(row, failures=row.failures + 1)}

    try:
        await asyncio.gather(*(s.merge_pool_health(one_more_failure) for _ in range(10) for s in (first, second)))
        await second.merge_pool_health(lambda rows: {"pool-b": PoolHealthRow("pool-b", 0, 2e9, "timeout", 1.5e9, 3e9)})
        assert await first.pool_health() == {
            "pool-a": PoolHealthRow("pool-a", failures=20),  # no merge lost another's increment
            "pool-b": PoolHealthRow("pool-b", 0, 2e9, "timeout", 1.5e9, 3e9),
        }
        assert await first.merge_pool_health(lambda rows: {}) == await second.pool_health()
    finally:
        await first.close()
        await second.close()


async def test_cool_downs_stored_by_migration_7_survive_the_upgrade(store_url: str) -> None:
    kind = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    old = await Store.open(store_url, migrations=load_migrations(kind)[:7])
    try:
        async with old.transaction() as tx:
            await tx.execute("INSERT INTO pool_cooldowns (account, cooling_until) VALUES ('pool-a', 2000000000.5)")
    finally:
        await old.close()
    store = await Store.open(store_url)
    try:
        assert await store.pool_health() == {"pool-a": PoolHealthRow("pool-a", cooling_until=2000000000.5)}
    finally:
        await store.close()
