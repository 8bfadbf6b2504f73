"""SQL for usage rows: batched upserts, crash recovery and the summary query.

Called only by store.Store, inside its transactions or on its database facade (it imports
nothing of the Store itself); no other module writes SQL for usage. Portable: the same text runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.store import billing_sql
from proxy.store.db import Database, Tx
from proxy.store.rows import USAGE_IN_FLIGHT, UsageRow, UsageTotal
from proxy.types import Outcome

_COLUMNS = (
    "request_id, started_at, workspace_id, key_id, lane, public_model, upstream, endpoint, stream, status, "
    "outcome, prompt_tokens, completion_tokens, total_tokens, tokens_estimated, ttfb_s, duration_s, attempts, "
    "cached_input_tokens, reasoning_tokens, cost_micros, price_input, price_cached_input, price_output, "
    "price_request, hold_micros, owner"
)
_PLACEHOLDERS = ", ".join("?" for _ in _COLUMNS.split(", "))
# What a final row may change on its admission row. Not the columns fixed before admission (the
# request's start, workspace, key, lane, model, endpoint): three of the table's indexes cover them,
# and SQLite rewrites an index's entry for every column in the SET list, changed or not.
_FIXED = {"request_id", "started_at", "workspace_id", "key_id", "lane", "public_model", "endpoint"}
_UPDATES = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ") if c not in _FIXED)
# An admission row holds what is known before the upstream call (who, what, when, the prices, the
# hold and its owner); every measured column (upstream, status, tokens, times, attempts, cost) keeps
# its default until the final row. Fewer parameters, and no NULLs to bind (sqlite3 binds each None
# through its adaptation lookup: ~0.25 us apiece).
_ADMIT_COLUMNS = ("request_id, started_at, workspace_id, key_id, lane, public_model, endpoint, stream, outcome, "
                  "price_input, price_cached_input, price_output, price_request, hold_micros, owner")
_ADMIT_VALUES = ", ".join("?" for _ in _ADMIT_COLUMNS.split(", "))
_ADMIT = f"INSERT INTO usage ({_ADMIT_COLUMNS}) VALUES ({_ADMIT_VALUES}) ON CONFLICT (request_id) DO NOTHING"
_FINISH = f"INSERT INTO usage ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) ON CONFLICT (request_id) DO UPDATE SET {_UPDATES}"


def _params(row: UsageRow) -> tuple[Any, ...]:
    # Spelled out: dataclasses.astuple deep-copies every field and costs ~15 us a row.
    return (
        row.request_id, row.started_at, row.workspace_id, row.key_id, row.lane, row.public_model, row.upstream,
        row.endpoint, int(row.stream), row.status, row.outcome, row.prompt_tokens, row.completion_tokens,
        row.total_tokens, int(row.tokens_estimated), row.ttfb_s, row.duration_s, row.attempts,
        row.cached_input_tokens, row.reasoning_tokens, row.cost_micros, row.price_input, row.price_cached_input,
        row.price_output, row.price_request, row.hold_micros, row.owner,
    )


_sum = billing_sql.capped_sum  # overflow-safe: every row's count is bounded
_TOUCH = "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)"


_ADMIT_HELD = f"INSERT INTO usage ({_ADMIT_COLUMNS}) VALUES ({_ADMIT_VALUES})"  # a hold's record: never silently skipped


def _admission_params(row: UsageRow) -> tuple[Any, ...]:
    return (row.request_id, row.started_at, row.workspace_id, row.key_id, row.lane, row.public_model, row.endpoint,
            int(row.stream), row.outcome, row.price_input, row.price_cached_input, row.price_output, row.price_request,
            row.hold_micros, row.owner)


def held_admission(row: UsageRow) -> tuple[str, tuple[Any, ...]]:
    """A held request's admission row as a statement, for the hold's own transaction: it is the
    hold's record (its `hold_micros` and `owner`), so a conflict fails the hold instead of losing it."""
    return _ADMIT_HELD, _admission_params(row)


async def touch_keys(db: Tx, last_used: Mapping[str, float]) -> None:
    await db.executemany(_TOUCH, [(ts, key_id, ts) for key_id, ts in last_used.items()])


async def write(tx: Tx, admitted: Sequence[UsageRow], finished: Sequence[UsageRow]) -> None:
    """One usage batch, inside one transaction (Database.run_batch).

    Admissions first, then finals: a final row always wins, whatever order they were queued in.
    """
    last_used: dict[str, float] = {}
    for row in (*admitted, *finished):
        if row.key_id is not None and row.started_at > last_used.get(row.key_id, 0.0):
            last_used[row.key_id] = row.started_at
    if admitted:
        await tx.executemany(_ADMIT, [_admission_params(r) for r in admitted])
    if finished:
        await billing_sql.settle(tx, finished)  # hold releases and charges commit with the rows
        await tx.executemany(_FINISH, [_params(r) for r in finished])
    if last_used:
        await tx.executemany(_TOUCH, [(ts, key_id, ts) for key_id, ts in sorted(last_used.items())])  # one lock order


async def get_row(db: Database, request_id: str) -> UsageRow | None:
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM usage WHERE request_id = ?", (request_id,))
    if not rows:
        return None
    values = list(rows[0])
    values[8] = bool(values[8])
    values[14] = bool(values[14])
    return UsageRow(*values)


async def summary(db: Database, since: float | None, workspace: str | None) -> list[UsageTotal]:
    where, params = "u.started_at >= ?", [Outcome.OK.value, USAGE_IN_FLIGHT, since if since is not None else 0.0]
    if workspace is not None:
        where += " AND w.name = ?"
        params.append(workspace)
    sql = (
        "SELECT w.name, u.lane, u.public_model, count(*), "
        "sum(CASE WHEN u.outcome NOT IN (?, ?) THEN 1 ELSE 0 END), "
        f"{_sum('u.prompt_tokens')}, {_sum('u.completion_tokens')}, {_sum('u.total_tokens')}, "
        f"sum(u.tokens_estimated), {_sum('u.cached_input_tokens')}, {_sum('u.reasoning_tokens')}, "
        "COALESCE(sum(u.cost_micros), 0) "
        f"FROM usage u LEFT JOIN workspaces w ON w.id = u.workspace_id WHERE {where} "
        "GROUP BY w.name, u.lane, u.public_model"
    )
    # int(): PostgreSQL's sum() of BIGINT is NUMERIC (a Decimal in Python)
    totals = [UsageTotal(*row[:3], *(int(v) for v in row[3:])) for row in await db.fetchall(sql, params)]
    # Sorted here, not in SQL: the backends order NULLs (and collate text) differently.
    return sorted(totals, key=lambda t: tuple((v is not None, v or "") for v in (t.workspace, t.lane, t.model)))
