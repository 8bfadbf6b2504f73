"""What operators, the admin API and the console read and change about a workspace's money.

The functions the console's billing page uses: `balance`, `credit`, `ledger`, `statement`,
`export_rows` (and the `*_json` shapes). Amounts in as decimal strings, out as decimals plus
`*_micros` integers. Statements and exports are computed from the usage rows themselves.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.billing.money import AmountError, format_amount, money_json, parse_amount
from proxy.billing.prices import PriceBook, price_json
from proxy.store import Store
from proxy.store.billing_sql import month_of
from proxy.store.rows import InvalidValue, LedgerEntry

EXPORT_FIELDS = ("time", "request_id", "key_id", "model", "lane", "status", "outcome", "input_tokens",
                 "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost", "estimated")
EXPORT_FORMATS = ("csv", "jsonl")
FAR_FUTURE = float(2**40)


class BillingInputError(InvalidValue):
    """A malformed amount, month, date or combination; the message names it."""


def amount(text: object, what: str = "amount", negative: bool = True) -> int:
    try:
        return parse_amount(text, what=what, negative=negative)
    except AmountError as exc:
        raise BillingInputError(str(exc)) from None


def _day(text: str, what: str) -> float:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise BillingInputError(f"{what} must be a date as YYYY-MM-DD, got '{text[:40]}'") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def date_range(since: str | None, until: str | None) -> tuple[float, float]:
    """[since's midnight, the midnight after `until`): both days included, UTC."""
    start = _day(since, "since") if since else 0.0
    end = _day(until, "until") + 86400 if until else FAR_FUTURE
    return start, end


def month_range(text: str) -> tuple[float, float]:
    try:
        first = dt.datetime.strptime(text, "%Y-%m").replace(tzinfo=dt.UTC)
    except ValueError:
        raise BillingInputError(f"month must be YYYY-MM, got '{text[:20]}'") from None
    following = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    return first.timestamp(), following.timestamp()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Balance:
    workspace: str
    mode: str
    currency: str
    credits_micros: int
    charges_micros: int
    held_micros: int
    holds: int
    month: str
    month_to_date_micros: int
    budget_micros: int | None

    @property
    def balance_micros(self) -> int:
        return self.credits_micros - self.charges_micros

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.held_micros


async def balance(store: Store, workspace: str, currency: str) -> Balance:
    """Balance, holds, month-to-date spend (calendar month, UTC), budget and mode."""
    account = await store.billing_account(workspace)
    holds, held = await store.holds_of(account.workspace_id)
    month = month_of(dt.datetime.now(dt.UTC).timestamp())
    spent = account.month_charges_micros if account.month == month else 0
    return Balance(workspace, account.mode, currency, account.credits_micros, account.charges_micros, held, holds,
                   month, spent, account.budget_micros)


def balance_json(b: Balance) -> dict[str, Any]:
    return {"object": "billing.balance", "workspace": b.workspace, "mode": b.mode, "currency": b.currency,
            **money_json(b.balance_micros, "balance"), **money_json(b.held_micros, "held"), "holds": b.holds,
            **money_json(b.available_micros, "available"), **money_json(b.credits_micros, "credits"),
            **money_json(b.charges_micros, "charges"), "month": b.month,
            **money_json(b.month_to_date_micros, "month_to_date"),
            "budget": None if b.budget_micros is None else format_amount(b.budget_micros),
            "budget_micros": b.budget_micros}


async def credit(store: Store, workspace: str, amount_text: object, note: str, actor: str,
                 kind: str | None = None) -> LedgerEntry:
    """Append a ledger entry: a top-up by default; a negative amount is an adjustment and needs a note."""
    micros = amount(amount_text)
    if micros == 0:
        raise BillingInputError("amount must not be zero")
    if micros < 0 and not note.strip():
        raise BillingInputError("a negative amount needs a note saying why (--note)")
    chosen = kind or ("topup" if micros > 0 else "adjustment")
    if chosen in ("topup", "refund") and micros < 0:
        raise BillingInputError(f"a {chosen} must be positive; use kind adjustment to take credit away")
    return await store.add_ledger_entry(workspace, micros, chosen, note.strip(), actor)


async def ledger(store: Store, workspace: str, since: str | None = None) -> list[LedgerEntry]:
    start, end = date_range(since, None)
    return await store.ledger(workspace, start, end)


def ledger_entry_json(entry: LedgerEntry) -> dict[str, Any]:
    return {"object": "billing.ledger_entry", "id": entry.id, "kind": entry.kind,
            **money_json(entry.amount_micros, "amount"), "note": entry.note, "actor": entry.actor,
            "created_at": _iso(entry.created_at)}


@dataclass(frozen=True, slots=True)
class StatementLine:
    lane: str | None
    model: str | None
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class Statement:
    workspace: str
    month: str
    currency: str
    lines: tuple[StatementLine, ...]
    opening_micros: int
    credits_micros: int
    charges_micros: int

    @property
    def closing_micros(self) -> int:
        return self.opening_micros + self.credits_micros - self.charges_micros


async def statement(store: Store, workspace: str, month: str, currency: str) -> Statement:
    """Per plan (lane) and model: requests, tokens by kind, cost; opening and closing balance."""
    start, end = month_range(month)
    ws = await store.get_workspace(workspace)
    lines = tuple(StatementLine(r[0], r[1], *(int(v) for v in r[2:])) for r in await store.statement_lines(ws.id, start, end))
    credits_before, charges_before = await store.balance_before(ws.id, start)
    credits_in = sum(e.amount_micros for e in await store.ledger(workspace, start, end))
    return Statement(workspace, month, currency, lines, credits_before - charges_before, credits_in,
                     sum(line.cost_micros for line in lines))


def statement_json(s: Statement) -> dict[str, Any]:
    lines = [{"plan": line.lane, "model": line.model, "requests": line.requests, "input_tokens": line.input_tokens,
              "cached_input_tokens": line.cached_input_tokens, "output_tokens": line.output_tokens,
              "reasoning_tokens": line.reasoning_tokens, **money_json(line.cost_micros, "cost")} for line in s.lines]
    return {"object": "billing.statement", "workspace": s.workspace, "month": s.month, "currency": s.currency,
            "lines": lines, **money_json(s.opening_micros, "opening_balance"), **money_json(s.credits_micros, "credits"),
            **money_json(s.charges_micros, "charges"), **money_json(s.closing_micros, "closing_balance")}


async def export_rows(store: Store, workspace: str, since: str | None = None,
                      until: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """One dict per finished request, oldest first, keys in EXPORT_FIELDS order (plus cost_micros)."""
    start, end = date_range(since, until)
    ws = await store.get_workspace(workspace)
    async for r in store.export_usage(ws.id, start, end):
        values = (_iso(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6], int(r[7]), int(r[8]), int(r[9]), int(r[10]),
                  format_amount(int(r[11])), bool(r[12]))
        yield {**dict(zip(EXPORT_FIELDS, values, strict=True)), "cost_micros": int(r[11])}


def export_header(fmt: str) -> str:
    if fmt not in EXPORT_FORMATS:
        raise BillingInputError(f"format must be csv or jsonl, got '{fmt[:20]}'")
    return _csv_line(EXPORT_FIELDS) if fmt == "csv" else ""


def export_line(row: dict[str, Any], fmt: str) -> str:
    if fmt == "jsonl":
        return orjson.dumps(row).decode() + "\n"
    return _csv_line(["true" if v is True else "false" if v is False else "" if v is None else v
                      for v in (row[f] for f in EXPORT_FIELDS)])


def _csv_line(values: Any) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def prices_json(book: PriceBook) -> dict[str, Any]:
    return {"object": "billing.prices", "enabled": book.enabled, "currency": book.currency,
            "default_max_output_tokens": book.default_max_output_tokens, "unit": "per 1M tokens; request: per request",
            "data": [price_json(p) for p in book.entries()]}
