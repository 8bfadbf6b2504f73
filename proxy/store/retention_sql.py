"""Usage retention: rows older than `store.usage_retention_days` are removed and added to
`usage_daily` (UTC day, workspace, lane, model, outcome) in one transaction per window.

DELETE … RETURNING then the rollup upsert, inside one transaction: the deleted rows are the
ones counted, so two processes sweeping at once (PostgreSQL) never count a request twice.
Portable SQL only (SQLite ≥ 3.35 and PostgreSQL both have RETURNING). Rows still in flight stay.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from proxy.store.db import Database
from proxy.store.rows import USAGE_IN_FLIGHT

WINDOW_S = 3600.0  # rows removed per transaction: one hour of traffic
MAX_WINDOWS = 48  # per sweep call: a backlog is worked off over several sweeps

_OLDEST = "SELECT min(started_at) FROM usage WHERE started_at < ? AND outcome <> ?"
_TAKE = (
    "DELETE FROM usage WHERE started_at >= ? AND started_at < ? AND outcome <> ? RETURNING started_at, "
    "workspace_id, lane, public_model, outcome, prompt_tokens, completion_tokens, total_tokens, "
    "cached_input_tokens, reasoning_tokens, cost_micros"
)
_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cached_input_tokens",
           "reasoning_tokens", "cost_micros")
_ADD = (
    "INSERT INTO usage_daily (day, workspace_id, lane, public_model, outcome, " + ", ".join(_COUNTS) + ") "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, workspace_id, lane, public_model, outcome) "
    "DO UPDATE SET " + ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in _COUNTS)
)


def utc_day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


async def sweep(db: Database, cutoff: float) -> int:
    """Roll up and remove final rows started before `cutoff`; returns how many were removed."""
    found = await db.fetchone(_OLDEST, (cutoff, USAGE_IN_FLIGHT))
    if found is None or found[0] is None:
        return 0
    start, removed = float(found[0]), 0
    for _ in range(MAX_WINDOWS):
        if start >= cutoff:
            break
        end = min(start + WINDOW_S, cutoff)
        async with db.transaction() as tx:
            rows = await tx.fetchall(_TAKE, (start, end, USAGE_IN_FLIGHT))
            if rows:
                await tx.executemany(_ADD, _rollup(rows))
        removed += len(rows)
        start = end
    return removed


def _rollup(rows: list[Any]) -> list[tuple[Any, ...]]:
    totals: dict[tuple[str, int, str, str, str], list[int]] = defaultdict(lambda: [0] * len(_COUNTS))
    for started_at, workspace_id, lane, model, outcome, *counts in rows:
        key = (utc_day(float(started_at)), int(workspace_id or 0), lane or "", model or "", outcome)
        bucket = totals[key]
        bucket[0] += 1
        for i, value in enumerate(counts, start=1):
            bucket[i] += int(value or 0)
    return [(*key, *values) for key, values in totals.items()]
