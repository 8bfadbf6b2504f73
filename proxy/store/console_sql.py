"""Read queries behind the console pages (usage by day, latest requests, key spend), BYOK key
hints and BYOK access requests. Reached as `store.console`.

Every usage query is bounded by the (workspace_id, started_at) index: a page never scans other
workspaces' rows nor rows outside its window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: the store imports this module
    from proxy.store.store import Store

DAY_S = 86400


@dataclass(frozen=True, slots=True)
class DayTotal:
    day: int  # index into the window's days, 0 = the first
    lane: str
    model: str | None
    requests: int
    tokens: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class RecentRequest:
    request_id: str
    started_at: float
    key_id: str | None
    model: str | None
    lane: str | None
    status: int
    outcome: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    total_tokens: int
    estimated: bool
    cost_micros: int | None


@dataclass(frozen=True, slots=True)
class ByokHint:
    provider: str
    last4: str | None
    updated_at: float


def _filters(lane: str | None, model: str | None) -> tuple[str, list[Any]]:
    sql, params = "", []
    if lane:
        sql += " AND u.lane = ?"
        params.append(lane)
    if model:
        sql += " AND u.public_model = ?"
        params.append(model)
    return sql, params


class ConsoleReads:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def first_request_at(self, workspace_id: int) -> float | None:
        rows = await self._store.fetchall("SELECT min(started_at) FROM usage WHERE workspace_id = ?", (workspace_id,))
        return rows[0][0] if rows and rows[0][0] is not None else None

    async def daily(self, workspace_id: int, first_day: float, days: int, lane: str | None = None,
                    model: str | None = None) -> list[DayTotal]:
        """Requests, tokens and cost per day, lane and model over `days` UTC days from `first_day` on.

        The day bounds are our own integers, written into the SQL as a VALUES list, so each day
        is one range on the index (and the SQL runs unchanged on SQLite and PostgreSQL).
        """
        bounds = ", ".join(f"({d}, {int(first_day) + d * DAY_S}, {int(first_day) + (d + 1) * DAY_S})" for d in range(days))
        where, params = _filters(lane, model)
        sql = (
            f"WITH days (d, lo, hi) AS (VALUES {bounds}) "
            "SELECT days.d, u.lane, u.public_model, count(*), sum(u.total_tokens), sum(u.cost_micros) "
            "FROM days JOIN usage u ON u.workspace_id = ? AND u.started_at >= days.lo AND u.started_at < days.hi "
            f"WHERE u.lane IS NOT NULL{where} GROUP BY days.d, u.lane, u.public_model"
        )
        rows = await self._store.fetchall(sql, (workspace_id, *params))
        return [DayTotal(int(r[0]), r[1], r[2], int(r[3]), int(r[4] or 0), int(r[5] or 0)) for r in rows]

    async def latest(self, workspace_id: int, since: float, limit: int, lane: str | None = None,
                     model: str | None = None) -> list[RecentRequest]:
        where, params = _filters(lane, model)
        sql = (
            "SELECT u.request_id, u.started_at, u.key_id, u.public_model, u.lane, u.status, u.outcome, "
            "u.prompt_tokens, u.cached_input_tokens, u.completion_tokens, u.reasoning_tokens, u.total_tokens, "
            "u.tokens_estimated, u.cost_micros FROM usage u "
            f"WHERE u.workspace_id = ? AND u.started_at >= ?{where} ORDER BY u.started_at DESC LIMIT ?"
        )
        rows = await self._store.fetchall(sql, (workspace_id, since, *params, limit))
        return [RecentRequest(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], int(r[7]), int(r[8]), int(r[9]),
                              int(r[10]), int(r[11]), bool(r[12]), r[13]) for r in rows]

    async def models_used(self, workspace_id: int, since: float) -> list[str]:
        sql = (
            "SELECT DISTINCT public_model FROM usage WHERE workspace_id = ? AND started_at >= ? "
            "AND public_model IS NOT NULL ORDER BY public_model"
        )
        return [r[0] for r in await self._store.fetchall(sql, (workspace_id, since))]

    async def key_requests(self, workspace_id: int) -> dict[str, int]:
        """key id → requests over the key's whole life (its spend is on the key's row)."""
        sql = "SELECT key_id, count(*) FROM usage WHERE workspace_id = ? AND key_id IS NOT NULL GROUP BY key_id"
        return {r[0]: int(r[1]) for r in await self._store.fetchall(sql, (workspace_id,))}

    # --- BYOK ------------------------------------------------------------------------------

    async def byok_hints(self, workspace_id: int) -> dict[str, ByokHint]:
        sql = "SELECT provider, last4, updated_at FROM byok_keys WHERE workspace_id = ? ORDER BY provider"
        return {r[0]: ByokHint(*r) for r in await self._store.fetchall(sql, (workspace_id,))}

    async def delete_byok_key(self, workspace_id: int, provider: str) -> bool:
        async with self._store.transaction() as db:
            sql = "DELETE FROM byok_keys WHERE workspace_id = ? AND provider = ?"
            return bool(await db.execute(sql, (workspace_id, provider)))

    async def request_byok_access(self, workspace_id: int, user_id: int | None) -> None:
        async with self._store.transaction() as db:
            await db.execute(
                "INSERT INTO byok_access_requests (workspace_id, requested_at, requested_by) VALUES (?, ?, ?) "
                "ON CONFLICT (workspace_id) DO NOTHING",
                (workspace_id, time.time(), user_id),
            )

    async def byok_requests(self, workspace_ids: Sequence[int] | None = None) -> dict[int, float]:
        """workspace id → when BYOK access was requested (all workspaces when ids is None)."""
        rows = await self._store.fetchall("SELECT workspace_id, requested_at FROM byok_access_requests")
        wanted = None if workspace_ids is None else set(workspace_ids)
        return {r[0]: r[1] for r in rows if wanted is None or r[0] in wanted}
