"""The billing part of the operator's HTTP API (documented in docs/admin-api.md): the same operations
as the billing CLI, amounts as decimal strings in and out (JSON also gives `*_micros`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web

from proxy.admin import ops as admin_ops
from proxy.admin.api import _body, _changed, _config, _json, _store, _string, admin_only
from proxy.billing import reports
from proxy.errors import InvalidRequestError

CSV_TYPE = "text/csv; charset=utf-8"
JSONL_TYPE = "application/x-ndjson"


def _currency(request: web.Request) -> str:
    return _config(request.app).billing.currency


def _optional_amount(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    return None if value is None else reports.amount(value, name, negative=False)


async def get_balance(request: web.Request) -> web.StreamResponse:
    return _json(reports.balance_json(await reports.balance(_store(request), request.match_info["name"],
                                                            _currency(request))))


async def post_credit(request: web.Request) -> web.StreamResponse:
    data = await _body(request, ("amount", "note", "kind", "actor"))
    if "amount" not in data:
        raise InvalidRequestError("'amount' is required: a decimal string such as \"25.00\".", param="amount")
    kind = data.get("kind")
    if kind is not None and kind not in ("topup", "refund", "adjustment"):
        raise InvalidRequestError("'kind' must be topup, refund or adjustment.", param="kind")
    note, actor = _string(data, "note", required=False), _string(data, "actor", required=False)
    store, workspace = _store(request), request.match_info["name"]
    entry = await reports.credit(store, workspace, data["amount"], note, f"admin-api{':' + actor if actor else ''}", kind)
    balance = await reports.balance(store, workspace, _currency(request))
    return _json({**reports.ledger_entry_json(entry), "balance": reports.balance_json(balance)}, status=201)


async def get_ledger(request: web.Request) -> web.StreamResponse:
    entries = await reports.ledger(_store(request), request.match_info["name"], request.query.get("since") or None)
    return _json({"object": "list", "workspace": request.match_info["name"], "currency": _currency(request),
                  "data": [reports.ledger_entry_json(e) for e in entries]})


async def put_budget(request: web.Request) -> web.StreamResponse:
    data = await _body(request, ("budget",))
    if "budget" not in data:
        raise InvalidRequestError("'budget' is required: a decimal string, or null for none.", param="budget")
    store, workspace = _store(request), request.match_info["name"]
    await store.set_budget(workspace, _optional_amount(data, "budget"))
    _changed(request)
    return _json(reports.balance_json(await reports.balance(store, workspace, _currency(request))))


async def put_mode(request: web.Request) -> web.StreamResponse:
    mode = _string(await _body(request, ("mode",)), "mode")
    store, workspace = _store(request), request.match_info["name"]
    await store.set_billing_mode(workspace, mode)
    _changed(request)
    return _json(reports.balance_json(await reports.balance(store, workspace, _currency(request))))


async def put_key_limit(request: web.Request) -> web.StreamResponse:
    data = await _body(request, ("limit",))
    if "limit" not in data:
        raise InvalidRequestError("'limit' is required: a decimal string, or null for none.", param="limit")
    store = _store(request)
    key = await store.set_key_limit(request.match_info["key_id"], _optional_amount(data, "limit"))
    _changed(request)
    workspace = await store.get_workspace_by_id(key.workspace_id)
    return _json(admin_ops.key_json(key, workspace.name))


async def get_prices(request: web.Request) -> web.StreamResponse:
    return _json(reports.prices_json(_config(request.app).billing))


async def get_statement(request: web.Request) -> web.StreamResponse:
    month = request.query.get("month")
    if not month:
        raise InvalidRequestError("'month' is required, as YYYY-MM.", param="month")
    statement = await reports.statement(_store(request), request.match_info["name"], month, _currency(request))
    return _json(reports.statement_json(statement))


async def get_export(request: web.Request) -> web.StreamResponse:
    fmt = request.query.get("format", "csv")
    header = reports.export_header(fmt)
    since, until = request.query.get("since") or None, request.query.get("until") or None
    reports.date_range(since, until)
    store, workspace = _store(request), request.match_info["name"]
    await store.get_workspace(workspace)  # every error is settled before the answer starts
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: CSV_TYPE if fmt == "csv" else JSONL_TYPE})
    await response.prepare(request)
    await response.write(header.encode())
    async for row in reports.export_rows(store, workspace, since, until):
        await response.write(reports.export_line(row, fmt).encode())
    await response.write_eof()
    return response


def setup_billing_routes(app: web.Application) -> None:
    routes = [
        (hdrs.METH_GET, "/admin/workspaces/{name}/billing", get_balance),
        (hdrs.METH_POST, "/admin/workspaces/{name}/billing/credit", post_credit),
        (hdrs.METH_GET, "/admin/workspaces/{name}/billing/ledger", get_ledger),
        (hdrs.METH_PUT, "/admin/workspaces/{name}/billing/budget", put_budget),
        (hdrs.METH_PUT, "/admin/workspaces/{name}/billing/mode", put_mode),
        (hdrs.METH_GET, "/admin/workspaces/{name}/billing/statement", get_statement),
        (hdrs.METH_GET, "/admin/workspaces/{name}/usage/export", get_export),
        (hdrs.METH_PUT, "/admin/keys/{key_id}/limit", put_key_limit),
        (hdrs.METH_GET, "/admin/billing/prices", get_prices),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, admin_only(handler))
