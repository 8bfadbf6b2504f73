"""The three plans as three sealed lanes: each yields the upstream targets a request may try.

A lane is built only from its own part of the config: the Business lane never receives the
pool's accounts, and the BYOK lane only ever uses the calling workspace's key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from proxy.config import ByokProvider, Config, PoolAccount, Provider, ResaleUpstream
from proxy.lanes.pool import Pool
from proxy.types import AttemptResult, Lane, Route, Secret, UpstreamTarget


class CheapLane:
    """Budget: a weighted pool of operator accounts, strictly scrubbed, failover inside the pool."""

    lane = Lane.CHEAP
    scrub = True

    def __init__(self, pool: Pool, max_attempts: int) -> None:
        self.pool = pool
        self.max_attempts = max_attempts

    def targets(self, route: Route, key: Secret | None = None) -> Iterator[UpstreamTarget]:
        tried: list[str] = []
        while len(tried) < self.max_attempts:
            account = self.pool.choose(route.model, exclude=tried)
            if account is None:
                return
            tried.append(account.name)
            yield _pool_target(account, route.model)

    def begin(self, target: UpstreamTarget) -> None:
        self.pool.begin(target.name)

    def end(self, target: UpstreamTarget) -> None:
        self.pool.end(target.name)

    def report(self, target: UpstreamTarget, result: AttemptResult, retry_after: float | None) -> None:
        self.pool.report(target.name, result, retry_after)

    def soonest_retry_after(self, route: Route) -> float | None:
        return self.pool.soonest_retry_after(route.model)


def _pool_target(account: PoolAccount, model: str) -> UpstreamTarget:
    return UpstreamTarget(account.name, account.kind, account.base_url, account.api_key, model, scrub=True)


class _PassiveLane:
    """Shared no-op health hooks for lanes without a pool."""

    scrub = False

    def begin(self, target: UpstreamTarget) -> None:
        pass

    def end(self, target: UpstreamTarget) -> None:
        pass

    def report(self, target: UpstreamTarget, result: AttemptResult, retry_after: float | None) -> None:
        pass

    def soonest_retry_after(self, route: Route) -> float | None:
        return None


class ResaleLane(_PassiveLane):
    """Business: each model's ordered list of operator-managed providers; never the pool."""

    lane = Lane.RESALE

    def __init__(self, providers: Mapping[str, Provider], models: Mapping[str, tuple[ResaleUpstream, ...]]) -> None:
        self.providers = providers
        self.models = models

    def targets(self, route: Route, key: Secret | None = None) -> Iterator[UpstreamTarget]:
        for upstream in self.models.get(route.model, ()):
            p = self.providers[upstream.provider]
            yield UpstreamTarget(p.name, p.kind, p.base_url, p.api_key, upstream.model, p.responses_stream)


class ByokLane(_PassiveLane):
    """BYOK: the configured provider's base URL with the workspace's own key; nothing falls back."""

    lane = Lane.BYOK

    def __init__(self, providers: Mapping[str, ByokProvider]) -> None:
        self.providers = providers

    def targets(self, route: Route, key: Secret | None = None) -> Iterator[UpstreamTarget]:
        assert route.provider is not None and key is not None, "BYOK targets need a provider and its key"
        p = self.providers[route.provider]
        yield UpstreamTarget(
            f"byok-{p.name}", p.kind, p.base_url, key, route.model, p.responses_stream, byok_provider=p.name
        )


class LaneSet:
    """The lanes of one config generation; a reload builds a new set (and a fresh pool)."""

    def __init__(self, config: Config) -> None:
        self.cheap = CheapLane(Pool(config.cheap_pool, config.pool_policy), config.pool_policy.max_attempts)
        self.resale = ResaleLane(config.providers, config.resale_models)
        self.byok = ByokLane(config.byok_providers)

    def for_route(self, route: Route) -> CheapLane | ResaleLane | ByokLane:
        return {Lane.CHEAP: self.cheap, Lane.RESALE: self.resale, Lane.BYOK: self.byok}[route.lane]
