"""The store's billing face: thin `Store` methods over billing_sql (holds, ledger, modes, limits, reports).

A mixin so sqlite.py stays one concern; every write is one transaction, every amount micro-units.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from proxy.store import billing_sql as sql
from proxy.store import usage_sql
from proxy.store.db import Database, Params, Row, Tx
from proxy.store.rows import (
    ApiKey,
    BillingAccount,
    HoldRequest,
    InvalidValue,
    KeyNotFound,
    LedgerEntry,
    Workspace,
    WorkspaceNotFound,
)

LEDGER_KINDS = ("topup", "refund", "adjustment")
BILLING_MODES = ("prepaid", "postpaid")
NOTE_MAX = 500
FAR_FUTURE = float(2**40)  # an `until` later than any request


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(min(ts, 253402300799.0)))  # FAR_FUTURE stays a valid date


_EMPTY = BillingAccount(0, "prepaid", None, 0, 0, 0, "", 0)  # explains a refusal whose account vanished


class BillingStore:
    """Mixed into Store, which provides transactions, reads and the workspace/key getters."""

    db: Database  # reason: provided by Store

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        raise NotImplementedError  # reason: provided by Store

    async def fetchall(self, query: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError  # reason: provided by Store

    async def get_workspace(self, name: str) -> Workspace:
        raise NotImplementedError  # reason: provided by Store

    async def get_api_key(self, key_id: str) -> ApiKey:
        raise NotImplementedError  # reason: provided by Store

    async def take_hold(self, hold: HoldRequest, decide: sql.Decide) -> Any:
        """Check and hold in one transaction; returns decide()'s refusal, or None once held.

        The hold is recorded on the request's admission row (written in the same transaction).
        Without a key limit: a conditional update of the account row (the check and the lock at
        once) and, where it landed, the admission row; only when refused, a read to explain why.
        With one: a transaction that locks the account and the key rows and lets `decide` rule.
        Both as one `run_transaction` (SQLite: one hop to the writer's thread, group-committed
        with the holds queued meanwhile)."""
        record = usage_sql.held_admission(hold.admission)
        if hold.key_limited:
            async def locked(tx: Tx) -> Any:
                refusal = await sql.take_hold(tx, hold, decide)
                if refusal is None:
                    await tx.execute(*record)
                return refusal

            return await self.db.run_transaction(locked)

        async def one_trip(tx: Tx) -> bool:
            taken = await sql.hold_if_covered(tx, hold)
            if taken:
                await tx.execute(*record)
            return taken

        if await self.db.run_transaction(one_trip):
            return None
        refusal = await sql.explain_refusal(self.db, hold, decide)
        return refusal if refusal is not None else decide(_EMPTY, None)

    async def billing_account(self, workspace_name: str) -> BillingAccount:
        workspace = await self.get_workspace(workspace_name)
        rows = await self.fetchall(sql.ACCOUNT, (workspace.id,))
        return sql.account_row(rows[0])

    async def holds_of(self, workspace_id: int) -> tuple[int, int]:
        """(number of holds, micro-units held) for a workspace, counted from the holds themselves:
        its in-flight admission rows, and any hold an earlier version left in billing_holds."""
        count = held = 0
        for query in (sql.HOLDS, sql.LEGACY_HOLDS):
            row = (await self.fetchall(query, (workspace_id,)))[0]
            count, held = count + int(row[0]), held + int(row[1])
        return count, held

    async def add_ledger_entry(self, workspace_name: str, amount_micros: int, kind: str, note: str,
                               actor: str) -> LedgerEntry:
        """Append a top-up, refund or adjustment and move the balance, in one transaction."""
        if kind not in LEDGER_KINDS:
            raise InvalidValue(f"ledger kind must be one of {', '.join(LEDGER_KINDS)}, got '{kind[:20]}'")
        if len(note) > NOTE_MAX or not note.isprintable():
            raise InvalidValue(f"a ledger note must be printable text of at most {NOTE_MAX} characters")
        if amount_micros == 0:
            raise InvalidValue("a ledger entry's amount must not be zero")
        async with self.transaction() as tx:
            found = await tx.fetchone("SELECT id FROM workspaces WHERE name = ?", (workspace_name,))
            if found is None:
                raise WorkspaceNotFound(workspace_name)
            workspace_id, now = int(found[0]), time.time()
            await tx.execute(sql.ENSURE_ACCOUNT, (workspace_id,))
            entry = await tx.fetchone(sql.INSERT_LEDGER, (workspace_id, amount_micros, kind, note, actor, now))
            await tx.execute(sql.ADD_CREDITS, (amount_micros, workspace_id))
        return LedgerEntry(int(entry[0]) if entry else 0, workspace_id, amount_micros, kind, note, actor, now)

    async def ledger(self, workspace_name: str, since: float | None = None,
                     until: float | None = None) -> list[LedgerEntry]:
        workspace = await self.get_workspace(workspace_name)
        params = (workspace.id, since or 0.0, until if until is not None else FAR_FUTURE)
        return [sql.ledger_row(r) for r in await self.fetchall(sql.LEDGER_SINCE, params)]

    async def set_billing_mode(self, workspace_name: str, mode: str) -> Workspace:
        if mode not in BILLING_MODES:
            raise InvalidValue(f"billing mode must be prepaid or postpaid, got '{mode[:20]}'")
        return await self._set_workspace(workspace_name, sql.SET_MODE, mode)

    async def set_budget(self, workspace_name: str, budget_micros: int | None) -> Workspace:
        if budget_micros is not None and budget_micros < 0:
            raise InvalidValue("a monthly budget must not be negative")
        return await self._set_workspace(workspace_name, sql.SET_BUDGET, budget_micros)

    async def _set_workspace(self, workspace_name: str, statement: str, value: Any) -> Workspace:
        workspace = await self.get_workspace(workspace_name)
        async with self.transaction() as tx:
            await tx.execute(statement, (value, workspace.id))
        return await self.get_workspace(workspace_name)

    async def set_key_limit(self, key_id: str, limit_micros: int | None) -> ApiKey:
        if limit_micros is not None and limit_micros < 0:
            raise InvalidValue("a key's spend limit must not be negative")
        async with self.transaction() as tx:
            if await tx.execute(sql.SET_KEY_LIMIT, (limit_micros, key_id)) == 0:
                raise KeyNotFound(key_id)
        return await self.get_api_key(key_id)

    async def statement_lines(self, workspace_id: int, start: float, end: float) -> list[tuple[Any, ...]]:
        """Per (lane, model): requests, input, cached input, output, reasoning tokens, cost; from the
        usage rows and the daily totals of rows retention removed. `start`/`end` are UTC midnights."""
        lines: dict[tuple[Any, Any], list[int]] = {}
        days = (_day(start), _day(end))
        for query, params in ((sql.STATEMENT_LINES, (workspace_id, start, end)),
                              (sql.DAILY_LINES, (workspace_id, *days))):
            for r in await self.fetchall(query, params):
                totals = lines.setdefault((r[0], r[1]), [0] * 6)
                for i, value in enumerate(r[2:]):
                    totals[i] += int(value or 0)
        return [(*key, *totals) for key, totals in sorted(lines.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))]

    async def balance_before(self, workspace_id: int, when: float) -> tuple[int, int]:
        """(credits, charges) of everything before `when` (a UTC midnight): ledger, usage rows, daily totals."""
        credits = (await self.fetchall(sql.CREDITS_BEFORE, (workspace_id, when)))[0][0]
        charges = (await self.fetchall(sql.CHARGES_BEFORE, (workspace_id, when)))[0][0]
        rolled = (await self.fetchall(sql.DAILY_CHARGES_BEFORE, (workspace_id, _day(when))))[0][0]
        return int(credits or 0), int(charges or 0) + int(rolled or 0)

    async def export_usage(self, workspace_id: int, since: float, until: float) -> AsyncIterator[tuple[Any, ...]]:
        """One tuple per finished request, oldest first, in billing_sql.EXPORT_COLUMNS order."""
        for row in await self.fetchall(sql.EXPORT, (workspace_id, since, until)):
            yield tuple(row)
