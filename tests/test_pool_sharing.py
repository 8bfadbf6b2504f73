"""Pool-account health shared between processes, as policy: two Pools ("workers") and one dict of
rows standing in for the store, merged by the rule the store runs (proxy.lanes.health_share)."""

from __future__ import annotations

import random

from proxy.config import PoolAccount, PoolPolicy
from proxy.lanes.health_share import HealthNews, merge
from proxy.lanes.pool import AccountState, Pool
from proxy.store.rows import PoolHealthRow
from proxy.types import AttemptResult as R


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # one epoch clock for choices and shared times alike

    def __call__(self) -> float:
        return self.now


def _pool(clock: Clock, names: tuple[str, ...] = ("a", "b"), share: float = 0.5) -> Pool:
    accounts = [PoolAccount(name=n, kind="mock", base_url="", api_key=None, weight=1.0, models=("m",)) for n in names]
    policy = PoolPolicy(max_ejected_share=share, eject_base_s=5.0, eject_max_s=300.0, cooldown_s=30.0)
    return Pool(accounts, policy, clock=clock, rng=random.Random(1), wall=clock)


def sync(pool: Pool, shared: dict[str, PoolHealthRow], clock: Clock) -> None:
    """One SharedPoolHealth round against `shared`."""
    news = pool.take_news()
    shared.update(merge(shared, news, pool.pusher(), clock()))
    pool.apply_shared(shared)


def state(pool: Pool, name: str) -> tuple[AccountState, float | None, int]:
    health = next(h for h in pool.snapshot() if h.name == name)
    return health.state, health.retry_in_s, health.consecutive_failures


def test_an_ejection_one_worker_learns_keeps_the_account_out_of_the_others_until_it_ends() -> None:
    clock, shared = Clock(), {}
    one, two = _pool(clock), _pool(clock)
    one.report("a", R.SERVER_ERROR)
    sync(one, shared, clock)
    sync(two, shared, clock)
    assert state(two, "a") == (AccountState.EJECTED, 5.0, 1)
    assert all(two.choose("m").name == "b" for _ in range(50))
    assert two.take_news() == {}  # heard, not learned: never pushed back as its own
    clock.now += 5.0
    assert two.is_healthy("a") and one.is_healthy("a")  # the same end for both


def test_failures_add_up_over_processes_so_the_back_off_doubles_for_the_pool() -> None:
    clock, shared = Clock(), {}
    one, two = _pool(clock), _pool(clock)
    one.report("a", R.TIMEOUT)
    sync(one, shared, clock)
    sync(two, shared, clock)
    clock.now += 5.0
    two.report("a", R.CONNECT_ERROR)  # the second failure in a row, wherever it happens
    sync(two, shared, clock)
    sync(one, shared, clock)
    assert state(one, "a") == (AccountState.EJECTED, 10.0, 2)
    assert shared["a"].eject_reason == "connect_error"


def test_a_success_anywhere_re_admits_the_account_everywhere() -> None:
    clock, shared = Clock(), {}
    one, two = _pool(clock), _pool(clock)
    one.report("a", R.SERVER_ERROR)
    sync(one, shared, clock)
    sync(two, shared, clock)
    two.report("a", R.SUCCESS)  # an attempt that started before the ejection answered fine
    sync(two, shared, clock)
    sync(one, shared, clock)
    for pool in (one, two):
        assert state(pool, "a") == (AccountState.HEALTHY, None, 0)
    assert shared["a"].failures == 0 and shared["a"].ejected_until == 0.0


def test_a_success_on_a_healthy_account_and_a_content_refusal_teach_nothing() -> None:
    clock = Clock()
    pool = _pool(clock)
    pool.report("a", R.SUCCESS)
    pool.report("b", R.CLIENT_ERROR)  # a content refusal: the request's fault
    assert pool.take_news() == {}
    assert merge({}, {"a": HealthNews(healed=True)}, pool.pusher(), clock()) == {}  # no row for nothing


def test_max_ejected_share_holds_over_all_processes() -> None:
    clock, shared = Clock(), {}
    one, two = _pool(clock), _pool(clock)
    one.report("a", R.SERVER_ERROR)  # each ejects a different account before hearing of the other
    two.report("b", R.SERVER_ERROR)
    assert not one.is_healthy("a") and not two.is_healthy("b")
    sync(one, shared, clock)
    sync(two, shared, clock)  # the store refuses the second: half of two accounts is one
    sync(one, shared, clock)
    for pool in (one, two):
        assert [state(pool, n)[0] for n in ("a", "b")] == [AccountState.EJECTED, AccountState.HEALTHY]
    assert shared["b"].failures == 1  # the failure still counts toward the back-off
    two.report("b", R.SERVER_ERROR)  # now two knows: its own cap refuses too
    assert two.is_healthy("b")


def test_a_401_disables_for_every_process_within_the_cap_until_a_reload() -> None:
    clock, shared = Clock(), {}
    one, two = _pool(clock, ("a", "b", "c", "d")), _pool(clock, ("a", "b", "c", "d"))
    one.report("a", R.AUTH_ERROR)
    one.report("b", R.AUTH_ERROR)
    two.report("c", R.AUTH_ERROR)  # a third would pass half of four: refused at the store
    for pool in (one, two, one):
        sync(pool, shared, clock)
    for pool in (one, two):
        assert [state(pool, n)[0] for n in "abcd"] == [AccountState.DISABLED] * 2 + [AccountState.HEALTHY] * 2
    clock.now += 1000.0
    assert two.snapshot()[0].state is AccountState.DISABLED  # no time limit
    reloaded = _pool(clock, ("a", "b", "c", "d"))  # a reload builds a new pool: it tries them again
    sync(reloaded, shared, clock)
    assert all(reloaded.is_healthy(n) for n in "abcd")
    reloaded.report("a", R.AUTH_ERROR)  # and a disabling learned after that reload holds for all
    sync(reloaded, shared, clock)
    sync(two, shared, clock)
    assert not reloaded.is_healthy("a") and not two.is_healthy("a")


def test_a_cool_down_is_shared_and_a_success_does_not_end_it() -> None:
    clock, shared = Clock(), {}
    one, two = _pool(clock), _pool(clock)
    one.report("a", R.RATE_LIMITED, retry_after=12)
    sync(one, shared, clock)
    two.report("a", R.SUCCESS)
    sync(two, shared, clock)
    assert state(two, "a") == (AccountState.COOLING, 12.0, 0)
    clock.now += 12.0
    assert two.is_healthy("a")


def test_news_the_store_did_not_take_goes_first_in_the_next_round() -> None:
    clock, shared = Clock(), {}
    one, two = _pool(clock), _pool(clock)
    one.report("a", R.SERVER_ERROR)
    lost = one.take_news()  # the store was down this round
    one.report("a", R.SUCCESS)
    one.report("a", R.SERVER_ERROR)
    one.give_back(lost)
    sync(one, shared, clock)
    sync(two, shared, clock)
    assert state(two, "a") == (AccountState.EJECTED, 5.0, 1)  # fail, heal, fail: one failure in a row


def test_what_a_pool_learns_during_a_round_is_not_overwritten_by_that_round() -> None:
    clock, shared = Clock(), {}
    one = _pool(clock)
    news = one.take_news()
    one.report("a", R.SERVER_ERROR)  # learned while the round's store call was under way
    shared.update(merge(shared, news, one.pusher(), clock()))
    one.apply_shared(shared)
    assert not one.is_healthy("a")
    sync(one, shared, clock)
    assert shared["a"].failures == 1 and not one.is_healthy("a")
