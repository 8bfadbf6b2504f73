"""The usage page: 30 days of requests, tokens and cost per day by plan (server-drawn SVG), the
latest requests, plan and model filters, and a CSV download with the columns of `usage export`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time

from aiohttp import web

from proxy import appkeys
from proxy.console.access import Page, on_workspace
from proxy.console.charts import stacked_bars
from proxy.console.render import count, decimal, money, render
from proxy.store.console_sql import DAY_S
from proxy.types import Lane

DAYS = 30
LATEST = 25
CSV_LIMIT = 100_000
PLANS = (Lane.CHEAP.value, Lane.RESALE.value, Lane.BYOK.value)
CSV_COLUMNS = ("time", "request_id", "key_id", "model", "lane", "status", "outcome", "input_tokens",
               "cached_input_tokens", "output_tokens", "reasoning_tokens", "cost", "estimated")


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
    for row in await store.console.daily(page.workspace.id, first_day, DAYS, lane, model):
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
        models=await store.console.models_used(page.workspace.id, first_day),
        query=request.query_string,
    )
    return render(request, "usage.html", context, visitor=page.visitor)


@on_workspace
async def usage_csv(request: web.Request, page: Page) -> web.StreamResponse:
    """Every request of the 30-day window (filters applied), oldest first."""
    store = request.config_dict[appkeys.STORE]
    lane, model = _filters(request)
    rows = await store.console.latest(page.workspace.id, window_start(time.time()), CSV_LIMIT, lane, model)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in reversed(rows):
        when = dt.datetime.fromtimestamp(r.started_at, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        writer.writerow((when, r.request_id, r.key_id or "", r.model or "", r.lane or "", r.status, r.outcome,
                         r.input_tokens, r.cached_input_tokens, r.output_tokens, r.reasoning_tokens,
                         decimal(r.cost_micros) if r.cost_micros is not None else "", str(r.estimated).lower()))
    name = f"usage-{page.workspace.name}-{dt.datetime.now(dt.UTC).date().isoformat()}.csv"
    return web.Response(body=out.getvalue().encode(), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
