"""Billing CLI: `billing credit|balance|ledger|budget|mode|prices|statement` and `usage export`.

Parses arguments and prints; proxy.billing.reports does the work. Amounts are decimal strings
in and out; every read takes --json. A malformed amount is one `error:` line naming it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any

import orjson

from proxy.admin.cli import Command, _handled, _store, _table
from proxy.billing import reports
from proxy.billing.money import format_amount
from proxy.config import Config

if TYPE_CHECKING:
    from proxy.admin.cli import Subcommands

USAGE_EXPORT = "usage-export"  # `usage export …` is rewritten to this command (see rewrite_argv)


def rewrite_argv(argv: list[str]) -> list[str]:
    """`usage export WS …` → `usage-export WS …`: `usage [WORKSPACE]` already takes a positional."""
    for i, token in enumerate(argv[:-1]):
        if token == "usage" and argv[i + 1] == "export":
            return [*argv[:i], USAGE_EXPORT, *argv[i + 2:]]
        if not token.startswith("-") and (i == 0 or argv[i - 1] != "--config"):
            break  # the first word that is not an option is the command
    return argv


def _print_json(payload: Any) -> None:
    print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _money(micros: int | None, currency: str) -> str:
    return "none" if micros is None else f"{format_amount(micros)} {currency}"


@_handled
async def billing_credit(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        entry = await reports.credit(store, args.workspace, args.amount, args.note or "", _actor(), args.kind)
        b = await reports.balance(store, args.workspace, config.billing.currency)
    if args.json:
        _print_json({**reports.ledger_entry_json(entry), "balance": reports.balance_json(b)})
        return 0
    print(f"{entry.kind} of {_money(entry.amount_micros, b.currency)} recorded for {args.workspace} "
          f"(ledger entry {entry.id}); balance now {_money(b.balance_micros, b.currency)}")
    return 0


@_handled
async def billing_balance(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        b = await reports.balance(store, args.workspace, config.billing.currency)
    if args.json:
        _print_json(reports.balance_json(b))
        return 0
    rows = [("balance", _money(b.balance_micros, b.currency)), ("held", f"{_money(b.held_micros, b.currency)} "
            f"({b.holds} requests in progress)"), ("available", _money(b.available_micros, b.currency)),
            (f"spent in {b.month}", _money(b.month_to_date_micros, b.currency)),
            ("monthly budget", _money(b.budget_micros, b.currency)), ("mode", b.mode)]
    print(f"workspace {b.workspace}")
    print(_table(("", ""), rows).split("\n", 1)[1])
    return 0


@_handled
async def billing_ledger(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        entries = await reports.ledger(store, args.workspace, args.since)
    if args.json:
        _print_json({"object": "list", "workspace": args.workspace, "currency": config.billing.currency,
                     "data": [reports.ledger_entry_json(e) for e in entries]})
        return 0
    rows = [(e.id, reports.ledger_entry_json(e)["created_at"], e.kind, format_amount(e.amount_micros), e.actor,
             e.note or "-") for e in entries]
    print(_table(("ID", "TIME", "KIND", f"AMOUNT ({config.billing.currency})", "WHO", "NOTE"), rows)
          if rows else "no ledger entries")
    return 0


@_handled
async def billing_budget(args: argparse.Namespace, config: Config) -> int:
    micros = None if args.amount.lower() == "none" else reports.amount(args.amount, "budget", negative=False)
    async with _store(config) as store:
        await store.set_budget(args.workspace, micros)
    print(f"monthly budget of {args.workspace}: {_money(micros, config.billing.currency)}; "
          "a running gateway applies it within a few seconds")
    return 0


@_handled
async def billing_mode(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        await store.set_billing_mode(args.workspace, args.mode)
    print(f"workspace {args.workspace} is {args.mode}; a running gateway applies it within a few seconds")
    return 0


async def billing_prices(args: argparse.Namespace, config: Config) -> int:
    report = reports.prices_json(config.billing)
    if args.json:
        _print_json(report)
        return 0
    state = "enabled" if config.billing.enabled else "disabled (nothing is priced or refused for money)"
    print(f"billing {state}; prices in {config.billing.currency} per 1M tokens, request: per request; "
          f"default max output tokens {config.billing.default_max_output_tokens}")
    rows = [(p["model"], p["input"], p["cached_input"], p["output"], p["request"], p["max_output_tokens"] or "-")
            for p in report["data"]]
    print(_table(("MODEL", "INPUT", "CACHED INPUT", "OUTPUT", "REQUEST", "MAX OUTPUT"), rows) if rows else "no prices")
    return 0


@_handled
async def billing_statement(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        s = await reports.statement(store, args.workspace, args.month, config.billing.currency)
    if args.json:
        _print_json(reports.statement_json(s))
        return 0
    print(f"statement for {s.workspace}, {s.month} ({s.currency})")
    rows = [(line.lane or "-", line.model or "-", line.requests, line.input_tokens, line.cached_input_tokens,
             line.output_tokens, line.reasoning_tokens, format_amount(line.cost_micros)) for line in s.lines]
    print(_table(("PLAN", "MODEL", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "REASONING", "COST"), rows)
          if rows else "no requests")
    for label, micros in (("opening balance", s.opening_micros), ("credits", s.credits_micros),
                          ("charges", s.charges_micros), ("closing balance", s.closing_micros)):
        print(f"{label:16} {format_amount(micros)}")
    return 0


@_handled
async def usage_export(args: argparse.Namespace, config: Config) -> int:
    header = reports.export_header(args.format)
    async with _store(config) as store:
        reports.date_range(args.since, args.until)  # a bad date or workspace fails before any output
        await store.get_workspace(args.workspace)
        out = sys.stdout
        out.write(header)
        async for row in reports.export_rows(store, args.workspace, args.since, args.until):
            out.write(reports.export_line(row, args.format))
    return 0


def register(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    billing = sub.add_parser("billing", help="balances, ledger, budgets, modes, prices, statements", parents=parents)
    group = billing.add_subparsers(dest="billing_command", required=True, metavar="COMMAND")

    def leaf(name: str, func: Command, help_text: str, *, read: bool = False) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, help=help_text, parents=parents)
        parser.set_defaults(func=func)
        if read:
            parser.add_argument("--json", action="store_true", help="machine-readable output")
        return parser

    credit = leaf("credit", billing_credit, "add credit (or, negative with --note, take it away)", read=True)
    credit.add_argument("workspace")
    credit.add_argument("amount", help="a decimal such as 25.00 (at most 6 decimal places)")
    credit.add_argument("--note", default="", help="why; required for a negative amount")
    credit.add_argument("--kind", choices=("topup", "refund", "adjustment"), default=None,
                        help="ledger kind (default: topup, or adjustment when negative)")
    leaf("balance", billing_balance, "balance, holds, month-to-date spend, budget, mode", read=True).add_argument("workspace")
    ledger = leaf("ledger", billing_ledger, "the workspace's ledger entries", read=True)
    ledger.add_argument("workspace")
    ledger.add_argument("--since", metavar="YYYY-MM-DD")
    budget = leaf("budget", billing_budget, "set the monthly budget (or none)")
    budget.add_argument("workspace")
    budget.add_argument("amount", metavar="AMOUNT|none")
    mode = leaf("mode", billing_mode, "prepaid (refused when the balance cannot cover a request) or postpaid")
    mode.add_argument("workspace")
    mode.add_argument("mode", choices=("prepaid", "postpaid"))
    leaf("prices", billing_prices, "the price book in force (from the config)", read=True)
    statement = leaf("statement", billing_statement, "a month's statement", read=True)
    statement.add_argument("workspace")
    statement.add_argument("--month", required=True, metavar="YYYY-MM")

    export = sub.add_parser(USAGE_EXPORT, help="`usage export`: one line per request (CSV or JSON lines)",
                            parents=parents)
    export.add_argument("workspace")
    export.add_argument("--since", metavar="YYYY-MM-DD", help="first day (UTC), included")
    export.add_argument("--until", metavar="YYYY-MM-DD", help="last day (UTC), included")
    export.add_argument("--format", default="csv", help="csv (with a header row) or jsonl")
    export.set_defaults(func=usage_export)
