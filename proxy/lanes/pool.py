"""Budget pool: which operator account takes the next cheap/* attempt, and each account's health.

Pure bookkeeping over an injected clock and rng: no I/O, no asyncio, no HTTP knowledge.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from proxy.lanes.health_share import HealthNews, Pusher, disabled_for
from proxy.store.rows import PoolHealthRow
from proxy.types import AttemptResult

if TYPE_CHECKING:
    from proxy.config import PoolAccount, PoolPolicy


class AccountState(StrEnum):
    HEALTHY = "healthy"
    COOLING = "cooling"  # answered 429: out until its Retry-After (or the policy cool-down) passes
    EJECTED = "ejected"  # 5xx / connect error / timeout: out for a back-off that doubles per failure
    DISABLED = "disabled"  # 401/403: out until a reload or restart builds a new Pool (within max_ejected_share)


@dataclass(frozen=True, slots=True)
class AccountHealth:
    name: str
    state: AccountState
    reason: str | None  # why it is not healthy (an AttemptResult value); None when healthy
    retry_in_s: float | None  # seconds until it is back; None when healthy or disabled
    in_flight: int
    consecutive_failures: int


_EJECTING = frozenset({AttemptResult.SERVER_ERROR, AttemptResult.CONNECT_ERROR, AttemptResult.TIMEOUT})
_NEVER = float("-inf")


@dataclass(slots=True)
class _Tracker:
    """Mutable health of one account; owned by exactly one Pool."""

    account: PoolAccount
    in_flight: int = 0
    consecutive_failures: int = 0
    cooling_until: float = _NEVER
    ejected_until: float = _NEVER
    eject_reason: str | None = None
    disabled: bool = False

    def state(self, now: float) -> AccountState:
        if self.disabled:
            return AccountState.DISABLED
        if self.ejected_until > now:
            return AccountState.EJECTED
        if self.cooling_until > now:
            return AccountState.COOLING
        return AccountState.HEALTHY

    def health(self, now: float) -> AccountHealth:
        state = self.state(now)
        reason = {
            AccountState.HEALTHY: None,
            AccountState.COOLING: AttemptResult.RATE_LIMITED.value,
            AccountState.EJECTED: self.eject_reason,
            AccountState.DISABLED: AttemptResult.AUTH_ERROR.value,
        }[state]
        retry_in = None
        if state in (AccountState.COOLING, AccountState.EJECTED):
            retry_in = max(self.cooling_until, self.ejected_until) - now
        return AccountHealth(
            self.account.name, state, reason, retry_in, self.in_flight, self.consecutive_failures
        )


class Pool:
    """Health and choice for the Budget pool's accounts.

    `choose` draws at random among healthy accounts serving the model, each weighted by
    weight / (in_flight + 1) (Envoy's weighted least-request rule): idle accounts share traffic
    in proportion to their weights, and a busier account is picked less often. Callers call
    `begin` right after `choose` and `end` when the attempt is over, then `report` its result.
    The max_ejected_share cap counts ejected and disabled (401/403) accounts against the whole
    pool, not per model: no run of failures, auth errors included, takes out more than that share.
    A SUCCESS also ends an ejection (the account just answered) but never a 429 cool-down.

    Sharing (proxy.lanes.shared_health): what `report` learns is also kept as news for the store
    (`take_news`), and `apply_shared` makes the merged health of every worker and host this pool's
    own. `wall` is the epoch clock those shared times are in; `clock` the one choices run on.
    """

    def __init__(
        self,
        accounts: Sequence[PoolAccount],
        policy: PoolPolicy,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        names = [a.name for a in accounts]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate pool account names: {', '.join(duplicates)}")
        unweighted = [a.name for a in accounts if not a.weight > 0]  # `not >` also catches NaN
        if unweighted:
            raise ValueError(f"pool account weight must be > 0: {', '.join(unweighted)}")
        self._policy = policy
        self._clock = clock
        self._wall = wall
        self.built_at = wall()  # a 401/403 disabling learned before this (a reload, a restart) is not ours
        self._rng = rng if rng is not None else random.Random()
        self._trackers = {a.name: _Tracker(a) for a in accounts}
        self._news: dict[str, HealthNews] = {}  # learned here since the last take_news; one per account

    def serves(self, model: str) -> bool:
        return any(model in t.account.models for t in self._trackers.values())

    def models(self) -> list[str]:
        return sorted({m for t in self._trackers.values() for m in t.account.models})

    def choose(self, model: str, exclude: Collection[str] = ()) -> PoolAccount | None:
        now = self._clock()
        candidates = [
            t
            for t in self._trackers.values()
            if model in t.account.models
            and t.account.name not in exclude
            and t.state(now) is AccountState.HEALTHY
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0].account
        weights = [t.account.weight / (t.in_flight + 1) for t in candidates]
        return self._rng.choices(candidates, weights=weights)[0].account

    def begin(self, name: str) -> None:
        self._tracker(name).in_flight += 1

    def end(self, name: str) -> None:
        tracker = self._tracker(name)
        tracker.in_flight = max(0, tracker.in_flight - 1)

    def report(self, name: str, result: AttemptResult, retry_after: float | None = None) -> None:
        tracker = self._tracker(name)
        now = self._clock()
        news = HealthNews()
        if result is AttemptResult.SUCCESS:
            if tracker.consecutive_failures == 0 and tracker.ejected_until == _NEVER:
                return  # nothing to heal: the common case records nothing
            tracker.consecutive_failures = 0
            tracker.ejected_until = _NEVER
            news.healed = True
        elif result is AttemptResult.RATE_LIMITED:
            tracker.cooling_until = now + self._cooldown(retry_after)
            news.cooling_until = self._wall() + self._cooldown(retry_after)
        elif result is AttemptResult.AUTH_ERROR:
            if not tracker.disabled and self._may_eject(tracker, now):  # a 401/403 obeys the ejection cap too
                tracker.disabled = True
                news.disabled_at = self._wall()
        elif result in _EJECTING:
            tracker.consecutive_failures += 1
            news.failures = 1
            if self._may_eject(tracker, now):
                backoff = self._backoff(tracker.consecutive_failures)
                tracker.ejected_until = now + backoff
                tracker.eject_reason = news.reason = result.value
                news.ejected_until = self._wall() + backoff
        else:
            return  # CLIENT_ERROR: the request's fault, says nothing about the account.
        known = self._news.get(name)
        self._news[name] = news if known is None else known.then(news)

    def soonest_retry_after(self, model: str) -> float | None:
        """Seconds until the first account for `model` is back, if all are merely rate-limited.

        Disabled accounts are left out (they stay out until a reload); any healthy or ejected
        account serving the model, or no live account at all, gives None.
        """
        now = self._clock()
        live = [t for t in self._trackers.values() if model in t.account.models and not t.disabled]
        if not live or any(t.state(now) is not AccountState.COOLING for t in live):
            return None
        return min(t.cooling_until for t in live) - now

    def pusher(self) -> Pusher:
        return Pusher(frozenset(self._trackers), self._policy.max_ejected_share, self.built_at)

    def take_news(self) -> dict[str, HealthNews]:
        """What this pool learned since the last call, for the store; the pool forgets it."""
        news, self._news = self._news, {}
        return news

    def give_back(self, news: Mapping[str, HealthNews]) -> None:
        """News the store did not take (it was down): sent with the next round, before newer news."""
        for name, item in news.items():
            newer = self._news.get(name)
            self._news[name] = item if newer is None else item.then(newer)

    def apply_shared(self, rows: Mapping[str, PoolHealthRow]) -> None:
        """The merged health of every process becomes this pool's view of each account, except an
        account this pool learned more about since its news was taken (the next round sends it)."""
        now, wall = self._clock(), self._wall()
        for name, tracker in self._trackers.items():
            if name in self._news:
                continue
            row = rows.get(name, PoolHealthRow(name))
            tracker.consecutive_failures = row.failures
            tracker.ejected_until = now + row.ejected_until - wall if row.ejected_until > wall else _NEVER
            tracker.eject_reason = row.eject_reason if tracker.ejected_until > now else None
            tracker.disabled = disabled_for(row, self.built_at)
            tracker.cooling_until = now + row.cooling_until - wall if row.cooling_until > wall else _NEVER

    def snapshot(self) -> list[AccountHealth]:
        now = self._clock()
        return [t.health(now) for t in self._trackers.values()]

    def is_healthy(self, name: str) -> bool:
        return self._tracker(name).state(self._clock()) is AccountState.HEALTHY

    def _tracker(self, name: str) -> _Tracker:
        try:
            return self._trackers[name]
        except KeyError:
            raise KeyError(f"unknown pool account {name!r}") from None

    def _cooldown(self, retry_after: float | None) -> float:
        if retry_after is None or not math.isfinite(retry_after) or retry_after < 0:
            return self._policy.cooldown_s
        return retry_after

    def _backoff(self, failures: int) -> float:
        exponent = min(failures - 1, 32)  # keeps 2**n a small float; the cap applies long before
        return min(self._policy.eject_base_s * 2.0**exponent, self._policy.eject_max_s)

    def _may_eject(self, tracker: _Tracker, now: float) -> bool:
        others = sum(
            1
            for t in self._trackers.values()
            if t is not tracker and (t.disabled or t.ejected_until > now)
        )
        return others + 1 <= self._policy.max_ejected_share * len(self._trackers) + 1e-9
