"""The billing page: balance, holds, month-to-date spend, budget (owners set it), ledger,
monthly statements and how to add credit (`console.topup_text`).
"""

from __future__ import annotations

from aiohttp import web

from proxy.console.access import Page, on_workspace, owner_only
from proxy.console.render import render
from proxy.console.sessions import console_config


@on_workspace
async def billing_page(request: web.Request, page: Page) -> web.StreamResponse:
    context = page.context("billing", topup_text=console_config(request).topup_text, billing=None)
    return render(request, "billing.html", context, visitor=page.visitor)


@on_workspace
async def set_budget(request: web.Request, page: Page) -> web.StreamResponse:
    owner_only(page)
    raise web.HTTPNotFound()
