"""SQL for billing: holds, the settlement of usage rows, the ledger, accounts, statements and exports.

Called only by store.Store, inside its transactions (or on its read connection). Portable SQL
for both backends: `?` placeholders, ON CONFLICT upserts, integer micro-units, times passed in as
epoch seconds. A hold locks one row, the workspace's `billing_accounts` row, with `tx.for_update`
(PostgreSQL: SELECT … FOR UPDATE; SQLite: BEGIN IMMEDIATE already serializes every writer).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import Any

from proxy.store.db import Params, Tx
from proxy.store.rows import BillingAccount, HoldRequest, KeySpend, LedgerEntry, UsageRow

ENSURE_ACCOUNT = "INSERT INTO billing_accounts (workspace_id) VALUES (?) ON CONFLICT (workspace_id) DO NOTHING"
ACCOUNT_COLUMNS = (
    "w.id, w.billing_mode, w.budget_micros, COALESCE(a.credits_micros, 0), COALESCE(a.charges_micros, 0), "
    "COALESCE(a.held_micros, 0), COALESCE(a.month, ''), COALESCE(a.month_charges_micros, 0)"
)
ACCOUNT = (f"SELECT {ACCOUNT_COLUMNS} FROM workspaces w LEFT JOIN billing_accounts a ON a.workspace_id = w.id "
           "WHERE w.id = ?")
ACCOUNT_FOR_HOLD = (f"SELECT {ACCOUNT_COLUMNS} FROM billing_accounts a JOIN workspaces w ON w.id = a.workspace_id "
                    "WHERE a.workspace_id = ?")
KEY_SPEND = "SELECT spend_limit_micros, spent_micros, held_micros FROM api_keys WHERE id = ?"
INSERT_HOLD = ("INSERT INTO billing_holds (request_id, workspace_id, key_id, amount_micros, owner, created_at) "
               "VALUES (?, ?, ?, ?, ?, ?)")
ADD_HELD = "UPDATE billing_accounts SET held_micros = held_micros + ? WHERE workspace_id = ?"
ADD_KEY_HELD = "UPDATE api_keys SET held_micros = held_micros + ? WHERE id = ?"
# Settlement, per final row, in the usage batch's transaction and before the row's upsert: the
# charge is the change in the row's cost and the release is its hold, if one is still there, so
# finishing a row twice charges and releases once. The month-to-date counter restarts when a
# later month's first charge arrives. (SET expressions all read the row as it was.)
_DELTA = "(? - COALESCE((SELECT u.cost_micros FROM usage u WHERE u.request_id = ?), 0))"
_HELD = "COALESCE((SELECT h.amount_micros FROM billing_holds h WHERE h.request_id = ?), 0)"
SETTLE_ACCOUNT = (
    f"UPDATE billing_accounts SET charges_micros = charges_micros + {_DELTA}, held_micros = held_micros - {_HELD}, "
    f"month_charges_micros = CASE WHEN month = ? THEN month_charges_micros + {_DELTA} "
    f"WHEN month < ? THEN {_DELTA} ELSE month_charges_micros END, "
    "month = CASE WHEN month < ? THEN ? ELSE month END WHERE workspace_id = ?"
)
SETTLE_KEY = f"UPDATE api_keys SET spent_micros = spent_micros + {_DELTA}, held_micros = held_micros - {_HELD} WHERE id = ?"
RELEASE_HOLD = "DELETE FROM billing_holds WHERE request_id = ?"

# The hold without a key limit (hold_if_covered): one transaction, one trip to the store (SQLite: one
# hop to the writer's thread). The conditional UPDATE is the check and the lock at once: on PostgreSQL
# a concurrent hold of the same workspace waits for the row and the WHERE is re-checked on the row it
# then sees. The rule is proxy.billing.holds.decide's, in SQL: prepaid needs balance - held >= hold; a
# budget needs month-to-date + held + hold <= budget. Its row count says whether the hold was taken
# (it also marks the row with the request id, `last_hold`).
HOLD_IF_COVERED = (
    "UPDATE billing_accounts SET held_micros = held_micros + ?, last_hold = ? WHERE workspace_id = ? "
    "AND ((SELECT w.billing_mode FROM workspaces w WHERE w.id = billing_accounts.workspace_id) = 'postpaid' "
    "OR credits_micros - charges_micros - held_micros >= ?) "
    "AND COALESCE((SELECT w.budget_micros FROM workspaces w WHERE w.id = billing_accounts.workspace_id) "
    "- (CASE WHEN month = ? THEN month_charges_micros ELSE 0 END) - held_micros - ?, 0) >= 0"
)
Decide = Callable[[BillingAccount, KeySpend | None], Any]
# Sums of per-request counts: rows are capped when written (at ROW_CAP, metering's own bound), and the
# CASE caps rows older code wrote with larger values, so a SUM stays inside 64-bit integers.
ROW_CAP = 100_000_000


def capped_sum(column: str) -> str:
    return f"COALESCE(SUM(CASE WHEN {column} > {ROW_CAP} THEN {ROW_CAP} ELSE {column} END), 0)"


def month_of(ts: float) -> str:
    """The UTC month ("2026-12") of an epoch time; by UTC day, memoized (a call per billed request)."""
    return _month_of_day(int(ts // 86400))


@functools.lru_cache(maxsize=64)
def _month_of_day(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86400, dt.UTC).strftime("%Y-%m")


def account_row(row: Sequence[Any]) -> BillingAccount:
    return BillingAccount(row[0], row[1], None if row[2] is None else int(row[2]), int(row[3]), int(row[4]),
                          int(row[5]), row[6], int(row[7]))


async def take_hold(tx: Tx, hold: HoldRequest, decide: Decide, now: float) -> Any:
    """Inside one transaction: lock and read the account (and key), let `decide` refuse or admit,
    record the hold. Returns decide()'s refusal, or None once held."""
    lock = tx.for_update + " OF a" if tx.for_update else ""  # PostgreSQL: the account row only, not the workspace
    row = await tx.fetchone(ACCOUNT_FOR_HOLD + lock, (hold.workspace_id,))
    if row is None:  # first request of a workspace never credited: create its row, then lock it
        await tx.execute(ENSURE_ACCOUNT, (hold.workspace_id,))
        row = await tx.fetchone(ACCOUNT_FOR_HOLD + lock, (hold.workspace_id,))
        assert row is not None  # reason: just inserted in this transaction
    key = None
    if hold.key_id is not None:
        found = await tx.fetchone(KEY_SPEND + tx.for_update, (hold.key_id,))
        key = None if found is None else KeySpend(None if found[0] is None else int(found[0]), int(found[1]),
                                                  int(found[2]))
    refusal = decide(account_row(row), key)
    if refusal is None:
        await tx.execute(INSERT_HOLD, (hold.request_id, hold.workspace_id, hold.key_id, hold.amount_micros,
                                       hold.owner, now))
        await tx.execute(ADD_HELD, (hold.amount_micros, hold.workspace_id))
        if hold.key_id is not None:
            await tx.execute(ADD_KEY_HELD, (hold.amount_micros, hold.key_id))
    return refusal


async def hold_if_covered(tx: Tx, hold: HoldRequest, now: float) -> bool:
    """The hold without a key limit: whether it was taken. The conditional UPDATE's row count says
    whether the account covered it; a workspace's first hold creates its account row and tries once more."""
    rid, ws, amount = hold.request_id, hold.workspace_id, hold.amount_micros
    covered = (amount, rid, ws, amount, hold.month, amount)
    taken = await tx.execute(HOLD_IF_COVERED, covered)
    if not taken and await tx.execute(ENSURE_ACCOUNT, (ws,)):  # no account row yet: created, try again
        taken = await tx.execute(HOLD_IF_COVERED, covered)
    if not taken:
        return False
    await tx.execute(INSERT_HOLD, (rid, ws, hold.key_id, amount, hold.owner, now))
    if hold.key_id is not None:
        await tx.execute(ADD_KEY_HELD, (amount, hold.key_id))
    return True


async def explain_refusal(db: Any, hold: HoldRequest, decide: Decide) -> Any:
    """Why a one-trip hold was refused, from the account as it is now (read after the fact)."""
    row = await db.fetchone(ACCOUNT, (hold.workspace_id,))
    key = None
    if hold.key_id is not None:
        found = await db.fetchone(KEY_SPEND, (hold.key_id,))
        key = None if found is None else KeySpend(None, int(found[1]), int(found[2]))  # no limit on this path
    return decide(account_row(row), key) if row is not None else None


def settle_statements(finished: Sequence[UsageRow]) -> list[tuple[str, Sequence[Params]]]:
    """The statements that release holds and charge costs for a batch's final rows; they run in the
    batch's transaction before the rows are upserted. Empty when nothing in the batch is billed."""
    last = {r.request_id: r for r in finished}  # a row finished twice in one batch is settled once, as its last
    billed = [r for r in last.values() if r.workspace_id is not None and (r.cost_micros or r.hold_micros)]
    if not billed:
        return []
    accounts, keys = [], []
    # Rows locked in one order (workspace, then key): two gateways' batches never deadlock on PostgreSQL.
    billed.sort(key=lambda r: (r.workspace_id or 0, r.key_id or "", r.request_id))
    for row in billed:
        rid, cost, month = row.request_id, row.cost_micros, month_of(row.started_at)
        accounts.append((cost, rid, rid, month, cost, rid, month, cost, rid, month, month, row.workspace_id))
        if row.key_id is not None:
            keys.append((cost, rid, rid, row.key_id))
    return [
        (ENSURE_ACCOUNT, sorted({(r.workspace_id,) for r in billed})),
        (SETTLE_ACCOUNT, accounts),
        (SETTLE_KEY, sorted(keys, key=lambda k: (k[3], k[1]))),
        (RELEASE_HOLD, [(r.request_id,) for r in billed if r.hold_micros]),
    ]


LEDGER_COLUMNS = "id, workspace_id, amount_micros, kind, note, actor, created_at"
INSERT_LEDGER = ("INSERT INTO billing_ledger (workspace_id, amount_micros, kind, note, actor, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?) RETURNING id")
ADD_CREDITS = "UPDATE billing_accounts SET credits_micros = credits_micros + ? WHERE workspace_id = ?"
LEDGER_SINCE = (f"SELECT {LEDGER_COLUMNS} FROM billing_ledger WHERE workspace_id = ? AND created_at >= ? "
                "AND created_at < ? ORDER BY created_at, id")
SET_MODE = "UPDATE workspaces SET billing_mode = ? WHERE id = ?"
SET_BUDGET = "UPDATE workspaces SET budget_micros = ? WHERE id = ?"
SET_KEY_LIMIT = "UPDATE api_keys SET spend_limit_micros = ? WHERE id = ?"
HOLDS = "SELECT count(*), COALESCE(SUM(amount_micros), 0) FROM billing_holds WHERE workspace_id = ?"


def ledger_row(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(int(row[0]), int(row[1]), int(row[2]), row[3], row[4], row[5], float(row[6]))


# Statement and export: computed from the usage rows themselves (the ground truth), never from
# the running totals, so an export's rows always add up to its statement.
_SPEND = "SUM(cost_micros)"
STATEMENT_LINES = (
    f"SELECT lane, public_model, count(*), {capped_sum('prompt_tokens')}, {capped_sum('cached_input_tokens')}, "
    f"{capped_sum('completion_tokens')}, {capped_sum('reasoning_tokens')}, COALESCE({_SPEND}, 0) FROM usage WHERE workspace_id = ? AND started_at >= ? AND started_at < ? "
    "AND outcome <> 'in_flight' GROUP BY lane, public_model ORDER BY lane, public_model"
)
CHARGES_BEFORE = f"SELECT COALESCE({_SPEND}, 0) FROM usage WHERE workspace_id = ? AND started_at < ?"
# Rows past store.usage_retention_days live on as usage_daily totals (by UTC day): statements and
# opening balances add them, so an old month's statement still adds up.
DAILY_CHARGES_BEFORE = "SELECT COALESCE(SUM(cost_micros), 0) FROM usage_daily WHERE workspace_id = ? AND day < ?"
DAILY_LINES = (
    "SELECT lane, public_model, SUM(requests), SUM(prompt_tokens), SUM(cached_input_tokens), SUM(completion_tokens), "
    "SUM(reasoning_tokens), SUM(cost_micros) FROM usage_daily WHERE workspace_id = ? AND day >= ? AND day < ? "
    "GROUP BY lane, public_model"
)
CREDITS_BEFORE = "SELECT COALESCE(SUM(amount_micros), 0) FROM billing_ledger WHERE workspace_id = ? AND created_at < ?"
EXPORT_COLUMNS = (
    "started_at, request_id, key_id, public_model, lane, status, outcome, prompt_tokens, cached_input_tokens, "
    "completion_tokens, reasoning_tokens, cost_micros, tokens_estimated"
)
EXPORT = (f"SELECT {EXPORT_COLUMNS} FROM usage WHERE workspace_id = ? AND started_at >= ? AND started_at < ? "
          "AND outcome <> 'in_flight' ORDER BY started_at, request_id")
