"""Metrics read from live state when Prometheus scrapes: pool account health, requests in
flight, the drain phase and the usage writer's failure count. Reads only; changes nothing.
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys
from proxy.lanes.pool import AccountState
from proxy.types import Phase


class LiveMetrics:
    """A scrape hook bound to one app (see `Metrics.on_scrape`)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._usage_failures_seen = 0

    def __call__(self) -> None:
        app = self._app
        metrics, state = app[appkeys.METRICS], app[appkeys.STATE]
        # clear() first: accounts removed by a reload must disappear, not freeze at their last value
        # (multiprocess files cannot be cleared: there a removed account stays until the restart)
        if metrics.multiprocess_dir is None:
            metrics.pool_healthy.clear()
        for health in state.runtime.lanes.cheap.pool.snapshot():
            metrics.pool_healthy.labels(health.name).set(1 if health.state is AccountState.HEALTHY else 0)
        metrics.in_flight.set(app[appkeys.LIMITER].in_flight)
        metrics.draining.set(1 if app[appkeys.DRAIN].phase >= Phase.DRAINING else 0)
        usage = app.get(appkeys.USAGE)  # absent until the store has opened
        if usage is not None and usage.write_failures > self._usage_failures_seen:
            metrics.usage_write_failures.inc(usage.write_failures - self._usage_failures_seen)
            self._usage_failures_seen = usage.write_failures
