"""The billing page: balance, holds, month-to-date spend, budget (owners set it), ledger,
monthly statements and how to add credit (`console.topup_text`).

Built on proxy.billing.reports (what `billing balance|ledger|statement` print); money is
integer micro-units shown with six decimals, never through a float.
"""

from __future__ import annotations

import datetime as dt
import re

from aiohttp import web

from proxy import appkeys
from proxy.billing import reports
from proxy.billing.money import AmountError, parse_amount
from proxy.console.access import Page, field, on_workspace, owner_only
from proxy.console.render import redirect, render
from proxy.console.sessions import console_config
from proxy.store.rows import StoreError, Workspace

MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
STATEMENT_MONTHS = 12


def _months(created_at: float, now: dt.datetime) -> list[str]:
    """Months from the workspace's creation to now, newest first (at most STATEMENT_MONTHS)."""
    first = dt.datetime.fromtimestamp(created_at, dt.UTC)
    out: list[str] = []
    year, month = now.year, now.month
    while (year, month) >= (first.year, first.month) and len(out) < STATEMENT_MONTHS:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out


async def billing_summary(request: web.Request, workspace: Workspace) -> reports.Balance | None:
    """Balance, holds, month-to-date spend and budget, or None when the gateway prices nothing."""
    book = request.config_dict[appkeys.STATE].runtime.config.billing
    if not book.enabled:
        return None
    return await reports.balance(request.config_dict[appkeys.STORE], workspace.name, book.currency)


async def _billing_page(request: web.Request, page: Page, *, error: str = "", status: int = 200) -> web.Response:
    store = request.config_dict[appkeys.STORE]
    summary = await billing_summary(request, page.workspace)
    months = _months(page.workspace.created_at, dt.datetime.now(dt.UTC))
    month = request.query.get("month", "")
    month = month if MONTH.fullmatch(month) and month in months else months[0]
    statement = None
    if summary is not None:
        statement = await reports.statement(store, page.workspace.name, month, summary.currency)
    context = page.context(
        "billing", billing=summary, topup_text=console_config(request).topup_text, error=error,
        ledger=await store.ledger(page.workspace.name) if summary else [], statement=statement, months=months,
    )
    return render(request, "billing.html", context, status=status, visitor=page.visitor)


@on_workspace
async def billing_page(request: web.Request, page: Page) -> web.StreamResponse:
    return await _billing_page(request, page)


@on_workspace
async def set_budget(request: web.Request, page: Page) -> web.StreamResponse:
    owner_only(page)
    text = field(request, "budget").strip()
    try:
        budget = None if text in ("", "none") else parse_amount(text, what="budget", negative=False)
        await request.config_dict[appkeys.STORE].set_budget(page.workspace.name, budget)
    except (AmountError, StoreError) as exc:
        return await _billing_page(request, page, error=str(exc), status=400)
    request.config_dict[appkeys.AUTH].invalidate()
    return redirect(f"/console/w/{page.workspace.name}/billing")
