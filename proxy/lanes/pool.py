"""Budget pool: which operator account takes the next cheap/* attempt, and each account's health.

Pure bookkeeping over an injected clock and rng: no I/O, no asyncio, no HTTP knowledge.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from proxy.types import AttemptResult

if TYPE_CHECKING:
    from proxy.config import PoolAccount, PoolPolicy


class AccountState(StrEnum):
    HEALTHY = "healthy"
    COOLING = "cooling"  # answered 429: out until its Retry-After (or the policy cool-down) passes
    EJECTED = "ejected"  # 5xx / connect error / timeout: out for a back-off that doubles per failure
    DISABLED = "disabled"  # 401/403: out until a config reload builds a new Pool (within max_ejected_share)


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
    """

    def __init__(
        self,
        accounts: Sequence[PoolAccount],
        policy: PoolPolicy,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
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
        self._rng = rng if rng is not None else random.Random()
        self._trackers = {a.name: _Tracker(a) for a in accounts}
        self.learned: dict[str, float] = {}  # cool-downs learned here, as seconds from now, for SharedPoolHealth

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
        if result is AttemptResult.SUCCESS:
            tracker.consecutive_failures = 0
            tracker.ejected_until = _NEVER
        elif result is AttemptResult.RATE_LIMITED:
            tracker.cooling_until = now + self._cooldown(retry_after)
            self.learned[name] = self._cooldown(retry_after)
        elif result is AttemptResult.AUTH_ERROR:
            if tracker.disabled or self._may_eject(tracker, now):  # a 401/403 obeys the ejection cap too
                tracker.disabled = True
        elif result in _EJECTING:
            tracker.consecutive_failures += 1
            if self._may_eject(tracker, now):
                tracker.ejected_until = now + self._backoff(tracker.consecutive_failures)
                tracker.eject_reason = result.value
        # CLIENT_ERROR: the request's fault, says nothing about the account.

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

    def cool(self, name: str, for_s: float) -> None:
        """A cool-down another process learned: out for `for_s` seconds unless already out longer."""
        tracker = self._trackers.get(name)
        if tracker is not None and for_s > 0:
            tracker.cooling_until = max(tracker.cooling_until, self._clock() + for_s)

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
