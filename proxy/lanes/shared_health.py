"""Pool-account health shared by every worker and host on one store (workers > 1 or PostgreSQL).

Every SYNC_S one task hands the store what the current pool learned since the last round
(ejections after 5xx, connect errors and timeouts with their back-off, 401/403 disablings,
429 cool-downs, successes that re-admit an account) and takes back the merged health of every
process (proxy.lanes.health_share says how news is merged): what one worker learns reaches every
other worker and host within SYNC_S + one store round trip of the next round, well under 1 s,
and an account re-admitted anywhere comes back everywhere the same way. When the store is
down, each process keeps its own view and its news waits for the next round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.background import BackgroundTask
from proxy.lanes.health_share import merge
from proxy.lanes.pool import Pool
from proxy.store import Store
from proxy.store.rows import StoreError

log = logging.getLogger("okm.pool")

SYNC_S = 0.25


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
        pool = self._pool()
        news, pusher = pool.take_news(), pool.pusher()
        try:
            if news:
                rows = await self._store.merge_pool_health(lambda rows: merge(rows, news, pusher, time.time()))
            else:
                rows = await self._store.pool_health()
        except StoreError as exc:  # StoreUnavailable above all: the database is down
            pool.give_back(news)  # pushed on the next round
            log.warning("pool health not shared this round: %s", exc)
            return
        pool.apply_shared(rows)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_S)
            await self.sync()
