"""Pool-account health shared by every worker and host on one store: the merge rule. Pure: no I/O.

A Pool records what its own attempts teach it as HealthNews (one per account, so bounded). Every
sync round a process hands its news to the store, which runs `merge` on the shared rows under one
lock; the process then takes the merged rows as its view of every account (Pool.apply_shared).
Only news is pushed: health a process read from the store is never written back as if learned,
so an ejection is not re-spread (nor lengthened) by the processes that merely heard of it.

The rules, per account, in the order the store receives the news:
- a success ends an ejection and resets the failure count, for everyone (never a cool-down or a
  401/403 disabling);
- failures add up over all processes (the back-off exponent is the pool's, not one process's);
- an ejection or a 401/403 disabling is recorded only if, counting every account already out
  for the pusher, it keeps within `max_ejected_share` of the pool: a process that ejected
  locally before it heard of the others' ejections is overruled and re-admits the account;
- an ejection or cool-down keeps whichever end is later.
Times are epoch seconds, shared by hosts (keep NTP on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from proxy.store.rows import PoolHealthRow

SLACK = 1e-9  # float rounding in share × size


@dataclass(slots=True)
class HealthNews:
    """What one process learned about one account since its last sync."""

    healed: bool = False  # a success ended any ejection and reset the failures (applies first)
    failures: int = 0  # failed attempts (5xx, connect error, timeout) since then
    ejected_until: float | None = None  # the last ejection decided here since then
    reason: str | None = None  # its AttemptResult value
    disabled_at: float | None = None  # a 401/403 took the account out then
    cooling_until: float | None = None  # a 429 cooled it until then

    def then(self, later: HealthNews) -> HealthNews:
        """This news followed by `later` (news handed back after a failed sync meets newer news)."""
        if later.healed:
            head = HealthNews(True, later.failures, later.ejected_until, later.reason)
        else:
            ejected = later.ejected_until is not None
            head = HealthNews(self.healed, self.failures + later.failures,
                              later.ejected_until if ejected else self.ejected_until,
                              later.reason if ejected else self.reason)
        head.disabled_at = _later(self.disabled_at, later.disabled_at)
        head.cooling_until = _later(self.cooling_until, later.cooling_until)
        return head


@dataclass(frozen=True, slots=True)
class Pusher:
    """The pushing pool's side of the cap: its accounts, its share, when it was built."""

    accounts: frozenset[str]
    max_ejected_share: float
    built_at: float


def disabled_for(row: PoolHealthRow, built_at: float) -> bool:
    """A 401/403 disabling holds for pools built before it; a reload or restart tries again."""
    return row.disabled_at is not None and row.disabled_at >= built_at


def is_out(row: PoolHealthRow, now: float, built_at: float) -> bool:
    return row.ejected_until > now or disabled_for(row, built_at)


def merge(rows: Mapping[str, PoolHealthRow], news: Mapping[str, HealthNews], pusher: Pusher,
          now: float) -> dict[str, PoolHealthRow]:
    """The rows `news` changes, merged by the rules above (`rows`: every shared row)."""
    state = dict(rows)
    changed: dict[str, PoolHealthRow] = {}
    for name, item in news.items():
        row = state.get(name, PoolHealthRow(name))
        if item.healed:
            row = replace(row, failures=0, ejected_until=0.0, eject_reason=None)
        row = replace(row, failures=row.failures + item.failures)
        if item.ejected_until is not None and item.ejected_until > row.ejected_until \
                and _may_take_out(state, row, pusher, now):
            row = replace(row, ejected_until=item.ejected_until, eject_reason=item.reason)
        if item.disabled_at is not None and (disabled_for(row, pusher.built_at) or _may_take_out(state, row, pusher, now)):
            row = replace(row, disabled_at=_later(row.disabled_at, item.disabled_at))
        if item.cooling_until is not None and item.cooling_until > row.cooling_until:
            row = replace(row, cooling_until=item.cooling_until)
        if row != state.get(name, PoolHealthRow(name)):
            state[name] = changed[name] = row
    return changed


def _may_take_out(state: Mapping[str, PoolHealthRow], row: PoolHealthRow, pusher: Pusher, now: float) -> bool:
    if is_out(row, now, pusher.built_at):
        return True  # already out: a longer ejection takes no one else out
    others = sum(1 for name in pusher.accounts
                 if name != row.account and name in state and is_out(state[name], now, pusher.built_at))
    return others + 1 <= pusher.max_ejected_share * len(pusher.accounts) + SLACK


def _later(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)
