"""The three sealed lanes over tables: which targets a route may try, with which credentials and
scrub, and the error once none is left. Pure; no event loop, an injected clock."""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import MappingProxyType

import pytest

from proxy import errors
from proxy.config import ByokProvider, PoolAccount, PoolPolicy, Provider, ResaleUpstream
from proxy.lanes.lane import SealedLane
from proxy.lanes.pool import Pool
from proxy.lanes.targets import ByokLane, CheapLane, ResaleLane
from proxy.types import AttemptResult, Lane, Route, Secret

POLICY = PoolPolicy(max_attempts=2, cooldown_s=30.0)
ACCOUNTS = [PoolAccount(f"pool-{i}", "openai", f"http://pool-{i}/v1", Secret(f"sk-pool-{i}"), 1.0, ("m", "e"))
            for i in range(3)]
PROVIDERS = MappingProxyType({n: Provider(n, "openai", f"http://{n}/v1", Secret(f"sk-{n}"), n != "nostream")
                              for n in ("first", "second", "nostream")})
RESALE = MappingProxyType({"m": (ResaleUpstream("first", "m"), ResaleUpstream("second", "m-large")),
                           "q": (ResaleUpstream("nostream", "m"),)})
BYOK = MappingProxyType({"openai": ByokProvider("openai", "openai", "https://api.openai.com/v1", ("m",), True)})
TENANT_KEY = Secret("sk-tenant-own-key")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def cheap() -> CheapLane:
    return CheapLane(Pool(ACCOUNTS, POLICY, clock=Clock(), rng=random.Random(1)), POLICY)


LANES: dict[str, SealedLane] = {"cheap": cheap(), "resale": ResaleLane(PROVIDERS, RESALE), "byok": ByokLane(BYOK)}

# route → (lane, [(target name, base URL, model sent, key, scrub, byok provider, responses_stream)])
TARGETS = {
    "resale, in order": (Route(Lane.RESALE, "resale/m", "m"), "resale", [
        ("first", "http://first/v1", "m", Secret("sk-first"), False, None, True),
        ("second", "http://second/v1", "m-large", Secret("sk-second"), False, None, True)]),
    "resale, no-stream provider": (Route(Lane.RESALE, "resale/q", "q"), "resale", [
        ("nostream", "http://nostream/v1", "m", Secret("sk-nostream"), False, None, False)]),
    "resale, unknown model": (Route(Lane.RESALE, "resale/x", "x"), "resale", []),
    "byok, the tenant's key only": (Route(Lane.BYOK, "byok/openai/m", "m", "openai"), "byok", [
        ("byok-openai", "https://api.openai.com/v1", "m", TENANT_KEY, False, "openai", True)]),
}


@pytest.mark.parametrize(("route", "lane", "expected"), TARGETS.values(), ids=TARGETS.keys())
def test_each_route_tries_only_its_lanes_targets(route: Route, lane: str, expected: list[tuple[object, ...]]) -> None:
    key = TENANT_KEY if route.lane is Lane.BYOK else None
    got = [(t.name, t.base_url, t.model, t.api_key, t.scrub, t.byok_provider, t.responses_stream)
           for t in LANES[lane].targets(route, key)]
    assert got == expected
    assert LANES[lane].scrub is (lane == "cheap")


def test_the_budget_lane_tries_distinct_pool_accounts_up_to_max_attempts() -> None:
    targets = list(cheap().targets(Route(Lane.CHEAP, "cheap/m", "m")))
    assert len(targets) == POLICY.max_attempts and len({t.name for t in targets}) == POLICY.max_attempts
    assert all(t.scrub and t.name.startswith("pool-") and t.model == "m" for t in targets)
    assert list(cheap().targets(Route(Lane.CHEAP, "cheap/x", "x"))) == []


@dataclass(frozen=True)
class Failed:
    result: AttemptResult
    error: errors.ProxyError
    retry_after: float | None = None


LIMITED = AttemptResult.RATE_LIMITED
BROKEN = AttemptResult.SERVER_ERROR
UPSTREAM_429 = errors.UpstreamStatusError(429, {"error": {"message": "slow down"}})
UPSTREAM_500 = errors.UpstreamError("down")

# failures → (error class, Retry-After header or None)
CHEAP_EXHAUSTED = {
    "all limited, smallest wait": ([Failed(LIMITED, UPSTREAM_429, 9), Failed(LIMITED, UPSTREAM_429, 7)],
                                   errors.RateLimitedError, "7"),
    "all limited with Retry-After: 0": ([Failed(LIMITED, UPSTREAM_429, 0.0)] * 2, errors.RateLimitedError, "1"),
    "limited without Retry-After": ([Failed(LIMITED, UPSTREAM_429)], errors.RateLimitedError, "30"),
    "one broke": ([Failed(LIMITED, UPSTREAM_429, 5), Failed(BROKEN, UPSTREAM_500)], errors.NoHealthyUpstreamError, None),
    "nothing tried, nothing cooling": ([], errors.NoHealthyUpstreamError, None),
}


@pytest.mark.parametrize(("failures", "error", "retry_after"), CHEAP_EXHAUSTED.values(), ids=CHEAP_EXHAUSTED.keys())
def test_the_budget_lane_sums_up_its_failures(failures: list[Failed], error: type[errors.ProxyError],
                                              retry_after: str | None) -> None:
    lane = cheap()
    for failure, account in zip(failures, ACCOUNTS, strict=False):  # the pool saw what the attempts saw
        lane.pool.report(account.name, failure.result, failure.retry_after)
    exc = lane.exhausted(Route(Lane.CHEAP, "cheap/m", "m"), failures)
    assert type(exc) is error and exc.headers().get("Retry-After") == retry_after
    assert "pool-" not in exc.message  # never names an account


@pytest.mark.parametrize("lane", ["resale", "byok"])
def test_the_other_lanes_pass_on_the_last_upstream_error(lane: str) -> None:
    route = Route(Lane.RESALE, "resale/m", "m")
    assert LANES[lane].exhausted(route, [Failed(BROKEN, UPSTREAM_500), Failed(LIMITED, UPSTREAM_429)]) is UPSTREAM_429
    assert isinstance(LANES[lane].exhausted(route, []), errors.NoHealthyUpstreamError)
