"""Budget pool: weighted least-request choice, cool-down, ejection back-off and its cap, auth disable."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from proxy.config import PoolAccount, PoolPolicy
from proxy.lanes.pool import AccountHealth, AccountState, Pool
from proxy.types import AttemptResult

R = AttemptResult


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def account(name: str, weight: float = 1.0, models: tuple[str, ...] = ("m",)) -> PoolAccount:
    return PoolAccount(name=name, kind="mock", base_url="", api_key=None, weight=weight, models=models)


def make_pool(weights: dict[str, float], policy: PoolPolicy | None = None, seed: int = 7) -> tuple[Pool, Clock]:
    clock = Clock()
    accounts = [account(n, w) for n, w in weights.items()]
    return Pool(accounts, policy or PoolPolicy(), clock=clock, rng=random.Random(seed)), clock


def shares(pool: Pool, draws: int, model: str = "m", exclude: tuple[str, ...] = ()) -> dict[str, float]:
    counts = Counter(pool.choose(model, exclude).name for _ in range(draws))
    return {name: counts[name] / draws for name in counts}


def state_of(pool: Pool, name: str) -> AccountHealth:
    return next(h for h in pool.snapshot() if h.name == name)


@pytest.mark.parametrize(
    ("weights", "in_flight", "expected"),
    [
        ({"a": 1, "b": 1}, {}, {"a": 0.5, "b": 0.5}),
        ({"a": 1, "b": 3, "c": 6}, {}, {"a": 0.1, "b": 0.3, "c": 0.6}),
        ({"a": 0.5, "b": 2}, {}, {"a": 0.2, "b": 0.8}),
        # busier accounts are picked less: effective weight = weight / (in_flight + 1)
        ({"a": 1, "b": 1}, {"a": 3}, {"a": 0.2, "b": 0.8}),
        ({"a": 3, "b": 1}, {"a": 2}, {"a": 0.5, "b": 0.5}),
        ({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1}, {"a": 0.25, "b": 0.25, "c": 0.5}),
    ],
)
def test_choice_follows_weight_over_in_flight(weights, in_flight, expected):
    pool, _ = make_pool(weights)
    for name, n in in_flight.items():
        for _ in range(n):
            pool.begin(name)
    got = shares(pool, 6000)
    for name, share in expected.items():
        assert got.get(name, 0.0) == pytest.approx(share, abs=0.03), (name, got)


def test_in_flight_accounting_tracks_begin_and_end():
    pool, _ = make_pool({"a": 1, "b": 1})
    for _ in range(3):
        pool.begin("a")
    pool.end("a")
    assert state_of(pool, "a").in_flight == 2
    for _ in range(3):  # one end too many never goes below zero
        pool.end("a")
    assert state_of(pool, "a").in_flight == 0
    assert shares(pool, 4000)["a"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(
    ("exclude", "allowed"),
    [
        ((), {"a", "b", "c"}),
        (("a",), {"b", "c"}),
        (("a", "c"), {"b"}),
        (("a", "b", "c"), set()),
        (("zzz",), {"a", "b", "c"}),
    ],
)
def test_choose_never_returns_an_excluded_account(exclude, allowed):
    pool, _ = make_pool({"a": 1, "b": 1, "c": 1})
    picked = {getattr(pool.choose("m", exclude), "name", None) for _ in range(300)}
    assert picked == (allowed or {None})


def test_models_and_serves_cover_every_account_whatever_its_health():
    pool = Pool(
        [account("a", models=("gpt-x", "mini")), account("b", models=("mini", "big"))],
        PoolPolicy(),
        clock=Clock(),
    )
    pool.report("b", R.AUTH_ERROR)
    assert pool.models() == ["big", "gpt-x", "mini"]
    assert [pool.serves(m) for m in ("big", "mini", "gpt-x", "other")] == [True, True, True, False]
    assert pool.choose("big") is None  # served, but only by a disabled account
    assert pool.choose("other") is None
    assert {pool.choose("mini").name for _ in range(50)} == {"a"}


@pytest.mark.parametrize(
    ("retry_after", "cooled_for"),
    [
        (10.0, 10.0),
        (2.5, 2.5),
        (None, 30.0),  # policy.cooldown_s
        (-4.0, 30.0),
        (math.inf, 30.0),
        (math.nan, 30.0),
        (3600.0, 3600.0),  # a daily quota is honoured, not shortened
    ],
)
def test_429_cools_down_for_retry_after_then_recovers(retry_after, cooled_for):
    pool, clock = make_pool({"a": 1, "b": 1})
    pool.report("a", R.RATE_LIMITED, retry_after=retry_after)
    health = state_of(pool, "a")
    assert (health.state, health.reason, health.retry_in_s) == (AccountState.COOLING, "rate_limited", cooled_for)
    assert health.consecutive_failures == 0  # a 429 is not a health failure
    assert not pool.is_healthy("a")
    assert {pool.choose("m").name for _ in range(100)} == {"b"}
    clock.advance(cooled_for - 0.01)
    assert not pool.is_healthy("a")
    clock.advance(0.02)
    assert pool.is_healthy("a")
    assert state_of(pool, "a") == AccountHealth("a", AccountState.HEALTHY, None, None, 0, 0)
    assert "a" in {pool.choose("m").name for _ in range(100)}


def test_retry_after_zero_leaves_account_in_rotation():
    pool, _ = make_pool({"a": 1})
    pool.report("a", R.RATE_LIMITED, retry_after=0)
    assert pool.choose("m").name == "a"


@pytest.mark.parametrize("result", [R.SERVER_ERROR, R.CONNECT_ERROR, R.TIMEOUT])
def test_ejection_back_off_doubles_up_to_the_cap(result):
    policy = PoolPolicy(eject_base_s=5.0, eject_max_s=300.0)
    pool, clock = make_pool({"a": 1, "b": 1, "c": 1}, policy)
    expected = [5, 10, 20, 40, 80, 160, 300, 300]
    for n, seconds in enumerate(expected, start=1):
        pool.report("a", result)
        health = state_of(pool, "a")
        assert (health.state, health.reason, health.consecutive_failures) == (AccountState.EJECTED, result.value, n)
        assert health.retry_in_s == seconds
        clock.advance(seconds - 0.01)
        assert pool.choose("m", exclude=("b", "c")) is None
        clock.advance(0.02)  # ejection over: healthy again, but the failure count remains
        assert pool.choose("m", exclude=("b", "c")).name == "a"
        assert state_of(pool, "a").consecutive_failures == n
    pool.report("a", R.SUCCESS)
    pool.report("a", result)
    assert state_of(pool, "a").retry_in_s == 5  # success reset the back-off


def test_back_off_stays_capped_after_very_many_failures():
    pool, _ = make_pool({"a": 1, "b": 1})
    for _ in range(2000):
        pool.report("a", R.SERVER_ERROR)
    assert state_of(pool, "a").retry_in_s == 300.0


def test_success_ends_an_ejection_but_not_a_cool_down():
    pool, _ = make_pool({"a": 1, "b": 1})
    pool.report("a", R.SERVER_ERROR)
    pool.report("a", R.SUCCESS)
    assert state_of(pool, "a") == AccountHealth("a", AccountState.HEALTHY, None, None, 0, 0)
    pool.report("a", R.RATE_LIMITED, retry_after=8)
    pool.report("a", R.SUCCESS)
    assert state_of(pool, "a").state is AccountState.COOLING


@pytest.mark.parametrize(
    ("size", "share", "ejectable"),
    [
        (1, 0.5, 0),  # never eject the only account
        (2, 0.5, 1),
        (3, 0.5, 1),
        (4, 0.5, 2),
        (10, 0.3, 3),
        (4, 1.0, 4),
        (4, 0.0, 0),
    ],
)
def test_max_ejected_share_keeps_part_of_the_pool_in_rotation(size, share, ejectable):
    names = [f"acct-{i}" for i in range(size)]
    pool, _ = make_pool(dict.fromkeys(names, 1.0), PoolPolicy(max_ejected_share=share))
    for name in names:
        pool.report(name, R.CONNECT_ERROR)
    snap = pool.snapshot()
    assert [h.state for h in snap].count(AccountState.EJECTED) == ejectable
    assert all(h.consecutive_failures == 1 for h in snap)  # counted even when kept in rotation
    kept = {h.name for h in snap if h.state is AccountState.HEALTHY}
    assert len(kept) == size - ejectable
    if kept:
        assert {pool.choose("m").name for _ in range(200)} == kept


def test_ejection_slot_frees_when_an_ejection_ends():
    pool, clock = make_pool({"a": 1, "b": 1}, PoolPolicy(max_ejected_share=0.5, eject_base_s=5))
    pool.report("a", R.SERVER_ERROR)
    pool.report("b", R.SERVER_ERROR)
    assert [h.state for h in pool.snapshot()] == [AccountState.EJECTED, AccountState.HEALTHY]
    clock.advance(6)
    pool.report("b", R.SERVER_ERROR)
    assert [h.state for h in pool.snapshot()] == [AccountState.HEALTHY, AccountState.EJECTED]
    assert state_of(pool, "b").retry_in_s == 10  # its second consecutive failure


def test_auth_error_disables_until_a_new_pool_is_built():
    accounts = [account("a"), account("b")]
    clock = Clock()
    pool = Pool(accounts, PoolPolicy(), clock=clock, rng=random.Random(1))
    pool.report("a", R.AUTH_ERROR)
    for event in (lambda: clock.advance(10**6), lambda: pool.report("a", R.SUCCESS)):
        event()
        assert state_of(pool, "a") == AccountHealth("a", AccountState.DISABLED, "auth_error", None, 0, 0)
        assert {pool.choose("m").name for _ in range(100)} == {"b"}
    reloaded = Pool(accounts, PoolPolicy(), clock=clock)
    assert reloaded.is_healthy("a")


def test_client_error_changes_nothing():
    pool, _ = make_pool({"a": 1, "b": 1})
    pool.report("a", R.SERVER_ERROR)
    before = pool.snapshot()
    pool.report("a", R.CLIENT_ERROR)
    pool.report("b", R.CLIENT_ERROR)
    assert pool.snapshot() == before


# Each event: (account, result, retry_after); the pool serves "m" with a, b and "other" with z.
@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("a", R.RATE_LIMITED, 10), ("b", R.RATE_LIMITED, 4)], 4.0),
        ([("a", R.RATE_LIMITED, None), ("b", R.RATE_LIMITED, 40)], 30.0),
        ([("a", R.RATE_LIMITED, 10)], None),  # b still healthy
        ([("a", R.RATE_LIMITED, 10), ("b", R.SERVER_ERROR, None)], None),  # b ejected: not only 429
        ([("a", R.RATE_LIMITED, 7), ("b", R.AUTH_ERROR, None)], 7.0),  # disabled ones are left out
        ([("a", R.AUTH_ERROR, None), ("b", R.AUTH_ERROR, None)], None),
        ([("a", R.RATE_LIMITED, 3), ("b", R.RATE_LIMITED, 5), ("z", R.RATE_LIMITED, 1)], 3.0),
        ([], None),
    ],
)
def test_soonest_retry_after_only_when_every_live_account_is_rate_limited(events, expected):
    clock = Clock()
    accounts = [account("a"), account("b"), account("z", models=("other",))]
    pool = Pool(accounts, PoolPolicy(max_ejected_share=1.0), clock=clock)
    for name, result, retry_after in events:
        pool.report(name, result, retry_after=retry_after)
    assert pool.soonest_retry_after("m") == expected
    assert pool.soonest_retry_after("unknown-model") is None


def test_soonest_retry_after_counts_down_with_the_clock():
    pool, clock = make_pool({"a": 1})
    pool.report("a", R.RATE_LIMITED, retry_after=10)
    clock.advance(4)
    assert pool.soonest_retry_after("m") == pytest.approx(6.0)
    clock.advance(6.5)
    assert pool.soonest_retry_after("m") is None


def test_snapshot_lists_every_account_in_config_order():
    pool, _ = make_pool({"a": 1, "b": 1, "c": 1, "d": 1}, PoolPolicy(max_ejected_share=1.0))
    pool.begin("a")
    pool.report("b", R.RATE_LIMITED, retry_after=12)
    pool.report("c", R.TIMEOUT)
    pool.report("d", R.AUTH_ERROR)
    assert pool.snapshot() == [
        AccountHealth("a", AccountState.HEALTHY, None, None, 1, 0),
        AccountHealth("b", AccountState.COOLING, "rate_limited", 12.0, 0, 0),
        AccountHealth("c", AccountState.EJECTED, "timeout", 5.0, 0, 1),
        AccountHealth("d", AccountState.DISABLED, "auth_error", None, 0, 0),
    ]
    assert [pool.is_healthy(n) for n in "abcd"] == [True, False, False, False]


@pytest.mark.parametrize(
    ("accounts", "message"),
    [
        ([account("a"), account("a")], "duplicate pool account names: a"),
        ([account("a", weight=0)], "weight must be > 0: a"),
        ([account("a", weight=math.nan)], "weight must be > 0: a"),
    ],
)
def test_invalid_pool_is_refused(accounts, message):
    with pytest.raises(ValueError, match=message):
        Pool(accounts, PoolPolicy())


@pytest.mark.parametrize("call", ["begin", "end", "report", "is_healthy"])
def test_unknown_account_name_is_a_key_error(call):
    pool, _ = make_pool({"a": 1})
    args = ("ghost", R.SUCCESS) if call == "report" else ("ghost",)
    with pytest.raises(KeyError, match="ghost"):
        getattr(pool, call)(*args)


def test_auth_errors_obey_the_ejection_cap():
    pool, _ = make_pool({"a": 1, "b": 1})  # default max_ejected_share 0.5: one of two may be out
    pool.report("a", R.AUTH_ERROR)
    pool.report("b", R.AUTH_ERROR)
    assert [h.state for h in pool.snapshot()] == [AccountState.DISABLED, AccountState.HEALTHY]
    pool.report("b", R.TIMEOUT)  # and a disabled account counts against ejections too
    assert pool.is_healthy("b")
