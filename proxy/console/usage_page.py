"""The usage page: 30 days of requests, tokens and cost per day by plan (server-drawn SVG), the
latest requests, plan and model filters, and a CSV download with the columns of `usage export`.
"""

from __future__ import annotations

import datetime as dt
import time

from aiohttp import web

from proxy import appkeys
from proxy.billing import reports
from proxy.console.access import Page, on_workspace
from proxy.console.charts import stacked_bars
from proxy.console.render import count, money, render
from proxy.store.console_sql import DAY_S
from proxy.types import Lane

DAYS = 30
LATEST = 25
PLANS = (Lane.CHEAP.value, Lane.RESALE.value, Lane.BYOK.value)
CSV_COLUMNS = reports.EXPORT_FIELDS


def window_start(now: float) -> float:
    """Midnight UTC, DAYS - 1 days ago: the window is today and the 29 days before."""
    return (int(now) // DAY_S - (DAYS - 1)) * DAY_S


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    lane = request.query.get("plan") or None
    model = (request.query.get("model") or "")[:200] or None
    return (lane if lane in PLANS else None), model


@on_workspace
async def usage_page(request: web.Request, page: Page) -> web.StreamResponse:
    store = request.config_dict[appkeys.STORE]
    lane, model = _filters(request)
    first_day = window_start(time.time())
    days = [dt.datetime.fromtimestamp(first_day + i * DAY_S, dt.UTC).date().isoformat() for i in range(DAYS)]
    series = {kind: {plan: [0] * DAYS for plan in PLANS} for kind in ("requests", "tokens", "cost")}
    totals = {plan: {"requests": 0, "tokens": 0, "cost": 0} for plan in PLANS}
    daily = await store.console.daily(page.workspace.id, first_day, DAYS, lane, model)
    for row in daily:
        if row.lane not in totals:
            continue
        for kind, value in (("requests", row.requests), ("tokens", row.tokens), ("cost", row.cost_micros)):
            series[kind][row.lane][row.day] += value
            totals[row.lane][kind] += value
    charts = {
        "requests": stacked_bars("Requests per day", days, series["requests"], count),
        "tokens": stacked_bars("Tokens per day", days, series["tokens"], count),
        "cost": stacked_bars("Cost per day", days, series["cost"], lambda v: money(v)[:-4] if v else "0"),
    }
    context = page.context(
        "usage", charts=charts, totals=totals, plans=PLANS, lane=lane, model=model, days=days,
        latest=await store.console.latest(page.workspace.id, first_day, LATEST, lane, model),
        # the day totals name every model used, unless a model filter narrowed them to one
        models=await store.console.models_used(page.workspace.id, first_day) if model else
        sorted({r.model for r in daily if r.model}),
        query=request.query_string,
    )
    return render(request, "usage.html", context, visitor=page.visitor)


@on_workspace
async def usage_csv(request: web.Request, page: Page) -> web.StreamResponse:
    """Every finished request of the 30-day window (filters applied), oldest first, in the
    columns and format of `usage export` (one source: proxy.billing.reports)."""
    lane, model = _filters(request)
    since = dt.datetime.fromtimestamp(window_start(time.time()), dt.UTC).date().isoformat()
    parts = [reports.export_header("csv")]
    async for row in reports.export_rows(request.config_dict[appkeys.STORE], page.workspace.name, since):
        if (lane is None or row["lane"] == lane) and (model is None or row["model"] == model):
            parts.append(reports.export_line(row, "csv"))
    name = f"usage-{page.workspace.name}-{dt.datetime.now(dt.UTC).date().isoformat()}.csv"
    return web.Response(body="".join(parts).encode(), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
