"""Pool-account cool-downs shared by every worker and host on one store (workers > 1 or PostgreSQL).

Every SYNC_S one task writes the cool-downs (429 + Retry-After) this process learned and reads
those every other process wrote, applying them to the current pool: a cool-down learned by one
worker keeps the account out of every worker's rotation within about a second. Ejections for
5xx and timeouts stay per process (each worker learns them from its own failed attempt).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.background import BackgroundTask
from proxy.lanes.pool import Pool
from proxy.store import Store
from proxy.store.rows import StoreUnavailable

log = logging.getLogger("okm.pool")

SYNC_S = 0.5


class SharedPoolHealth:
    def __init__(self, store: Store, current_pool: Callable[[], Pool]) -> None:
        self._store = store
        self._pool = current_pool  # the pool of the running config (a reload builds a new one)
        self._task = BackgroundTask("pool-health-sync")

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        await self._task.stop()

    async def sync(self) -> None:
        pool, now = self._pool(), time.time()
        learned, pool.learned = pool.learned, {}
        try:
            await self._store.push_pool_cooldowns([(name, now + for_s) for name, for_s in learned.items()])
            for name, until in await self._store.pool_cooldowns(now):
                pool.cool(name, until - now)
        except StoreUnavailable as exc:
            pool.learned.update(learned)  # pushed on the next round
            log.warning("pool health not shared this round: %s", exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_S)
            await self.sync()
