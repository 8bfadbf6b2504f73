"""The three plans as three sealed lanes: each yields the upstream targets a request may try.

A lane is built only from its own part of the config: the Business lane never receives the
pool's accounts, and the BYOK lane only ever uses the calling workspace's key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from proxy import errors
from proxy.config import ByokProvider, Config, PoolAccount, PoolPolicy, Provider, ResaleUpstream
from proxy.lanes.lane import FailedAttempt, SealedLane
from proxy.lanes.pool import Pool
from proxy.types import AttemptResult, Lane, Route, Secret, UpstreamTarget


class CheapLane:
    """Budget: a weighted pool of operator accounts, strictly scrubbed, failover inside the pool."""

    lane = Lane.CHEAP
    scrub = True

    def __init__(self, pool: Pool, policy: PoolPolicy) -> None:
        self.pool = pool
        self.max_attempts = policy.max_attempts
        self.cooldown_s = policy.cooldown_s
        # One target per (account, model), made on first use and kept for this config generation:
        # the upstream client prepares each target's request head once (proxy/relay/upstream.py).
        self._targets: dict[tuple[str, str], UpstreamTarget] = {}

    def targets(self, route: Route, key: Secret | None = None) -> Iterator[UpstreamTarget]:
        tried: list[str] = []
        while len(tried) < self.max_attempts:
            account = self.pool.choose(route.model, exclude=tried)
            if account is None:
                return
            tried.append(account.name)
            target = self._targets.get((account.name, route.model))
            if target is None or target.api_key is not account.api_key:
                if len(self._targets) >= MAX_KEPT_TARGETS:
                    self._targets.clear()
                target = self._targets[(account.name, route.model)] = _pool_target(account, route.model)
            yield target

    def begin(self, target: UpstreamTarget) -> None:
        self.pool.begin(target.name)

    def end(self, target: UpstreamTarget) -> None:
        self.pool.end(target.name)

    def report(self, target: UpstreamTarget, result: AttemptResult, retry_after: float | None) -> None:
        self.pool.report(target.name, result, retry_after)

    def exhausted(self, route: Route, failures: Sequence[FailedAttempt]) -> errors.ProxyError:
        """429 when every attempt was rate-limited (or every account is cooling), else 503."""
        limited = [f for f in failures if f.result is AttemptResult.RATE_LIMITED]
        if len(limited) == len(failures):
            waits = [f.retry_after for f in limited if f.retry_after is not None]
            retry_after = min(waits) if waits else self.pool.soonest_retry_after(route.model)
            if limited or retry_after is not None:
                return errors.RateLimitedError(
                    f"every Budget pool account for {route.public_model} is rate-limited; retry later",
                    retry_after=self.cooldown_s if retry_after is None else retry_after,
                )
        return errors.NoHealthyUpstreamError(
            f"no healthy Budget pool account could serve {route.public_model}"
            + (f" ({len(failures)} attempts failed)" if failures else "")
        )


MAX_KEPT_TARGETS = 4096  # (account, model) pairs kept by the Budget lane; models come from clients


def _resale_target(p: Provider, model: str) -> UpstreamTarget:
    return UpstreamTarget(p.name, p.kind, p.base_url, p.api_key, model, p.responses_stream)


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

    def exhausted(self, route: Route, failures: Sequence[FailedAttempt]) -> errors.ProxyError:
        """The last upstream's own error: these lanes have no pool to summarise."""
        if not failures:
            return errors.NoHealthyUpstreamError(f"no upstream is configured for {route.public_model}")
        return failures[-1].error


class ResaleLane(_PassiveLane):
    """Business: each model's ordered list of operator-managed providers; never the pool."""

    lane = Lane.RESALE

    def __init__(self, providers: Mapping[str, Provider], models: Mapping[str, tuple[ResaleUpstream, ...]]) -> None:
        self.providers = providers
        self.models = models
        # Built once per config generation (the upstream client prepares each target's head once).
        self._targets = {
            model: tuple(_resale_target(providers[u.provider], u.model) for u in upstreams)
            for model, upstreams in models.items()
        }

    def targets(self, route: Route, key: Secret | None = None) -> Iterator[UpstreamTarget]:
        return iter(self._targets.get(route.model, ()))


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
        self.cheap = CheapLane(Pool(config.cheap_pool, config.pool_policy), config.pool_policy)
        self.resale = ResaleLane(config.providers, config.resale_models)
        self.byok = ByokLane(config.byok_providers)

    def for_route(self, route: Route) -> SealedLane:
        lanes: dict[Lane, SealedLane] = {Lane.CHEAP: self.cheap, Lane.RESALE: self.resale, Lane.BYOK: self.byok}
        return lanes[route.lane]
