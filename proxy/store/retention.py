"""The one task that applies `store.usage_retention_days`: a sweep a minute after start, then
hourly (Store.sweep_usage does the work). Started and stopped by the app's retention context."""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.background import BackgroundTask
from proxy.store.store import Store

log = logging.getLogger("okm.store")

FIRST_SWEEP_S = 60.0
SWEEP_EVERY_S = 3600.0
DAY_S = 86400.0


class UsageRetention:
    def __init__(self, store: Store, days: int) -> None:
        self._store = store
        self._days = days
        self._task = BackgroundTask("usage-retention")

    async def sweep_once(self) -> int:
        """Remove (and roll up) the rows past retention now; returns how many."""
        removed = await self._store.sweep_usage(time.time() - self._days * DAY_S)
        if removed:
            log.info("usage retention: %d rows older than %d days rolled up into usage_daily", removed, self._days)
        return removed

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        await asyncio.sleep(FIRST_SWEEP_S)
        while True:
            try:
                while await self.sweep_once():  # a backlog is worked off 48 hours of rows at a time
                    await asyncio.sleep(0)
            except Exception as exc:  # a failed sweep is retried next hour; serving goes on
                log.error("usage retention sweep failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(SWEEP_EVERY_S)
