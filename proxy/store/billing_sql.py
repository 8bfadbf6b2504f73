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

from proxy.store.db import Tx
from proxy.store.rows import USAGE_IN_FLIGHT, BillingAccount, HoldRequest, KeySpend, LedgerEntry, UsageRow

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
ADD_HELD = "UPDATE billing_accounts SET held_micros = held_micros + ? WHERE workspace_id = ?"
ADD_KEY_HELD = "UPDATE api_keys SET held_micros = held_micros + ? WHERE id = ?"
# A hold is recorded on its request's admission usage row (`hold_micros`, outcome `in_flight`,
# `owner`), written in the hold's transaction. Settlement, per usage batch, in the batch's
# transaction and before its final rows are upserted (settle): each billed row's charge is the
# change in its stored cost, and its release is the stored row's hold while that row is still in
# flight; the upsert then ends it, so finishing a row twice charges and releases once. Then one
# update per workspace and one per key with the batch's sums. The month-to-date counter restarts
# when a later month's first charge arrives (SET expressions all read the row as it was).
# `billing_holds` is where earlier versions recorded holds: read only to release what they left.
_SETTLING = "SELECT request_id, cost_micros, hold_micros, outcome FROM usage WHERE request_id IN ({})"
CHARGE_ACCOUNT = (
    "UPDATE billing_accounts SET charges_micros = charges_micros + ?, held_micros = held_micros - ?, "
    "month_charges_micros = CASE WHEN month = ? THEN month_charges_micros + ? WHEN month < ? THEN ? "
    "ELSE month_charges_micros END, month = CASE WHEN month < ? THEN ? ELSE month END WHERE workspace_id = ?"
)
CHARGE_KEY = "UPDATE api_keys SET spent_micros = spent_micros + ?, held_micros = held_micros - ? WHERE id = ?"
IN_LIST_MAX = 256  # request ids per IN list (a batch has BATCH_ROWS = 200)

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


async def take_hold(tx: Tx, hold: HoldRequest, decide: Decide) -> Any:
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
    if refusal is None:  # the caller writes the hold's record, its admission row, in this transaction
        await tx.execute(ADD_HELD, (hold.amount_micros, hold.workspace_id))
        if hold.key_id is not None:
            await tx.execute(ADD_KEY_HELD, (hold.amount_micros, hold.key_id))
    return refusal


async def hold_if_covered(tx: Tx, hold: HoldRequest) -> bool:
    """The hold without a key limit: whether it was taken. The conditional UPDATE's row count says
    whether the account covered it; a workspace's first hold creates its account row and tries once
    more. The caller writes the hold's record, its admission row, in this transaction."""
    rid, ws, amount = hold.request_id, hold.workspace_id, hold.amount_micros
    covered = (amount, rid, ws, amount, hold.month, amount)
    taken = await tx.execute(HOLD_IF_COVERED, covered)
    if not taken and await tx.execute(ENSURE_ACCOUNT, (ws,)):  # no account row yet: created, try again
        taken = await tx.execute(HOLD_IF_COVERED, covered)
    if not taken:
        return False
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


async def settle(tx: Tx, finished: Sequence[UsageRow]) -> None:
    """Release the holds and charge the costs of a batch's final rows, inside the batch's
    transaction, before the rows are upserted. Nothing when nothing in the batch is billed."""
    last = {r.request_id: r for r in finished}  # a row finished twice in one batch is settled once, as its last
    billed = [r for r in last.values() if r.workspace_id is not None and (r.cost_micros or r.hold_micros)]
    if not billed:
        return
    ids = sorted(r.request_id for r in billed)
    prior: dict[str, int] = {}
    released: dict[str, int] = {}
    for start in range(0, len(ids), IN_LIST_MAX):
        sql_settling, params = _in_list(ids[start:start + IN_LIST_MAX])
        # Locked (PostgreSQL): a sweep marking the same rows waits, then finds them no longer in flight.
        for rid, cost, held, outcome in await tx.fetchall(sql_settling + tx.for_update, params):
            prior[rid] = int(cost or 0)
            if outcome == USAGE_IN_FLIGHT:
                released[rid] = int(held or 0)
    # Per workspace: [charge, release, latest month, that month's charge]; per key: [charge, release].
    accounts: dict[int, list[Any]] = {}
    keys: dict[str, list[int]] = {}
    for row in billed:
        charge, release = row.cost_micros - prior.get(row.request_id, 0), released.get(row.request_id, 0)
        month = month_of(row.started_at)
        account = accounts.setdefault(row.workspace_id or 0, [0, 0, month, 0])
        account[0] += charge
        account[1] += release
        if month > account[2]:
            account[2], account[3] = month, charge
        elif month == account[2]:
            account[3] += charge
        if row.key_id is not None:
            key = keys.setdefault(row.key_id, [0, 0])
            key[0] += charge
            key[1] += release
    # Rows locked in one order (workspaces, then keys, each sorted): two gateways never deadlock on PostgreSQL.
    order = sorted(accounts)
    await tx.executemany(ENSURE_ACCOUNT, [(ws,) for ws in order])
    await tx.executemany(CHARGE_ACCOUNT, [(c, r, m, mc, m, mc, m, m, ws) for ws in order
                                          for c, r, m, mc in (accounts[ws],)])
    if keys:
        await tx.executemany(CHARGE_KEY, [(keys[k][0], keys[k][1], k) for k in sorted(keys)])


@functools.lru_cache(maxsize=16)
def _in_list_sql(size: int) -> str:
    return _SETTLING.format(", ".join("?" * size))


def _in_list(ids: list[str]) -> tuple[str, list[str]]:
    """The statement for `ids`, its IN list padded (with the last id) to a power of two: a
    handful of distinct statement texts, each prepared once and cached by the driver."""
    size = 1 << (len(ids) - 1).bit_length()
    return _in_list_sql(size), ids + ids[-1:] * (size - len(ids))


LEDGER_COLUMNS = "id, workspace_id, amount_micros, kind, note, actor, created_at"
INSERT_LEDGER = ("INSERT INTO billing_ledger (workspace_id, amount_micros, kind, note, actor, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?) RETURNING id")
ADD_CREDITS = "UPDATE billing_accounts SET credits_micros = credits_micros + ? WHERE workspace_id = ?"
LEDGER_SINCE = (f"SELECT {LEDGER_COLUMNS} FROM billing_ledger WHERE workspace_id = ? AND created_at >= ? "
                "AND created_at < ? ORDER BY created_at, id")
SET_MODE = "UPDATE workspaces SET billing_mode = ? WHERE id = ?"
SET_BUDGET = "UPDATE workspaces SET budget_micros = ? WHERE id = ?"
SET_KEY_LIMIT = "UPDATE api_keys SET spend_limit_micros = ? WHERE id = ?"
HOLDS = ("SELECT count(*), COALESCE(SUM(hold_micros), 0) FROM usage WHERE workspace_id = ? AND outcome = 'in_flight' "
         "AND hold_micros > 0 AND NOT EXISTS (SELECT 1 FROM billing_holds h WHERE h.request_id = usage.request_id)")
LEGACY_HOLDS = "SELECT count(*), COALESCE(SUM(amount_micros), 0) FROM billing_holds WHERE workspace_id = ?"


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
