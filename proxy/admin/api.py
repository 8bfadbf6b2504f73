"""The operator's HTTP API under /admin/: workspaces, keys, BYOK keys and usage, as JSON.

Authenticated only by the admin token from the environment (constant-time compare); a
workspace key never works here. Every change invalidates the authenticator's cache.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import hdrs, web

from proxy import appkeys
from proxy.admin import ops as admin_ops
from proxy.billing.money import AmountError, parse_amount
from proxy.config import Config
from proxy.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ProxyError,
    ServiceUnavailableError,
)
from proxy.http.body import loads_unique
from proxy.store import Store
from proxy.store.rows import (
    KEEP,
    InvalidValue,
    KeyNotFound,
    StoreError,
    Workspace,
    WorkspaceExists,
    WorkspaceNotFound,
    check_workspace_limit,
)
from proxy.workspaces.crypto import MasterKeyError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _config(app: web.Application) -> Config:
    return app[appkeys.STATE].runtime.config  # swapped on reload: read per request


def _check_token(request: web.Request) -> None:
    config = _config(request.app)
    token = config.admin_token.reveal() if config.admin_token is not None else ""
    if not token:
        raise ServiceUnavailableError(
            f"The admin API is disabled: set {config.admin_token_env} in the gateway's environment and restart it.",
            code="admin_api_disabled",
        )
    headers = request.headers.getall(hdrs.AUTHORIZATION, [])
    scheme, _, given = headers[0].strip().partition(" ") if len(headers) == 1 else ("", "", "")
    # surrogateescape: aiohttp decodes header bytes as UTF-8 with it, so a 0xFF byte is a lone
    # surrogate that plain encode() would raise on (a 500); it can never match the token anyway
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                                             token.encode()):
        raise AuthenticationError(
            "Missing or incorrect admin token: send 'Authorization: Bearer <admin token>'.", code="invalid_admin_token"
        )


def _translate(exc: Exception) -> ProxyError:
    if isinstance(exc, WorkspaceNotFound):
        return NotFoundError(str(exc).capitalize(), code="workspace_not_found")
    if isinstance(exc, KeyNotFound):
        return NotFoundError(str(exc), code="key_not_found")
    if isinstance(exc, WorkspaceExists):
        return ConflictError(str(exc).capitalize(), code="workspace_exists")
    if isinstance(exc, InvalidValue):
        return InvalidRequestError(str(exc))
    if isinstance(exc, MasterKeyError):
        return ServiceUnavailableError(str(exc), code="byok_master_key_unavailable")
    return ServiceUnavailableError(f"The store is unavailable: {exc}", code="store_unavailable")


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def admin_only(handler: Handler) -> Handler:
    """Token check first, then the handler; store and key errors become ProxyErrors, which the
    request middleware answers like any other (OpenAI-shaped, with X-Request-Id)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        _check_token(request)
        try:
            return await handler(request)
        except (StoreError, MasterKeyError) as exc:
            raise _translate(exc) from None

    return wrapped


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = loads_unique(raw) if raw.strip() else {}  # a repeated key is refused, never "the last one wins"
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    for name in data:
        if name not in allowed:
            raise InvalidRequestError(f"Unknown field '{str(name)[:40]}' (allowed: {', '.join(allowed)}).", param=str(name)[:40])
    return data


def _string(data: dict[str, Any], name: str, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidRequestError(f"'{name}' must be a non-empty string.", param=name)
    return value


def _store(request: web.Request) -> Store:
    return request.app[appkeys.STORE]


def _changed(request: web.Request) -> None:
    request.app[appkeys.AUTH].invalidate()


async def list_workspaces(request: web.Request) -> web.StreamResponse:
    store = _store(request)
    workspaces, requests = await store.list_workspaces(), await store.console.byok_requests()
    data = [admin_ops.workspace_json(w, byok_requested_at=requests.get(w.id)) for w in workspaces]
    return _json({"object": "list", "data": data})


async def create_workspace(request: web.Request) -> web.StreamResponse:
    name = _string(await _body(request, ("name",)), "name")
    workspace = await _store(request).create_workspace(name)
    _changed(request)
    return _json(admin_ops.workspace_json(workspace, []), status=201)


async def get_workspace(request: web.Request) -> web.StreamResponse:
    store = _store(request)
    workspace = await store.get_workspace(request.match_info["name"])
    requested = (await store.console.byok_requests([workspace.id])).get(workspace.id)
    return _json(admin_ops.workspace_json(workspace, await store.list_byok_providers(workspace.id), requested))


def _flag_handler(change: Callable[[Store, str], Awaitable[Workspace]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await _body(request, ())
        workspace = await change(_store(request), request.match_info["name"])
        _changed(request)
        return _json(admin_ops.workspace_json(workspace))

    return handler


def _limit(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        return KEEP
    try:
        return check_workspace_limit(name, data[name])
    except InvalidValue as exc:
        raise InvalidRequestError(str(exc), param=name) from None


async def set_limits(request: web.Request) -> web.StreamResponse:
    data = await _body(request, ("rpm_limit", "stream_limit"))
    workspace = await _store(request).set_workspace_limits(
        request.match_info["name"], rpm_limit=_limit(data, "rpm_limit"), stream_limit=_limit(data, "stream_limit")
    )
    _changed(request)
    return _json(admin_ops.workspace_json(workspace))


async def create_key(request: web.Request) -> web.StreamResponse:
    data = await _body(request, ("name", "limit"))
    name, workspace = _string(data, "name", required=False), request.match_info["name"]
    limit = None
    if data.get("limit") is not None:
        try:
            limit = parse_amount(data["limit"], what="limit", negative=False)
        except AmountError as exc:
            raise InvalidRequestError(str(exc), param="limit") from None
    api_key, key = await _store(request).create_api_key(workspace, _config(request.app).key_pepper, name, limit)
    _changed(request)
    return _json({**admin_ops.key_json(api_key, workspace), "key": key.reveal()}, status=201)


async def list_keys(request: web.Request) -> web.StreamResponse:
    workspace = request.match_info["name"]
    api_keys = await _store(request).list_api_keys(workspace)
    return _json({"object": "list", "data": [admin_ops.key_json(k, workspace) for k in api_keys]})


async def revoke_key(request: web.Request) -> web.StreamResponse:
    await _body(request, ())
    store = _store(request)
    api_key = await store.revoke_api_key(request.match_info["key_id"])
    _changed(request)
    workspace = await store.get_workspace_by_id(api_key.workspace_id)
    return _json(admin_ops.key_json(api_key, workspace.name))


async def list_byok(request: web.Request) -> web.StreamResponse:
    store = _store(request)
    workspace = await store.get_workspace(request.match_info["name"])
    return _json({"object": "list", "workspace": workspace.name, "data": await store.list_byok_providers(workspace.id)})


async def put_byok(request: web.Request) -> web.StreamResponse:
    plaintext = _string(await _body(request, ("key",)), "key")
    provider = request.match_info["provider"]
    workspace = await admin_ops.set_byok_key(
        _store(request), _config(request.app), request.match_info["name"], provider, plaintext
    )
    _changed(request)
    return _json({"object": "byok_key", "workspace": workspace.name, "provider": provider, "stored": True})


async def usage(request: web.Request) -> web.StreamResponse:
    since = admin_ops.parse_since(request.query.get("since"))
    workspace = request.query.get("workspace") or None
    totals = await _store(request).usage_summary(since=since, workspace=workspace)
    return _json(admin_ops.usage_json(totals, since))


async def pool_health(request: web.Request) -> web.StreamResponse:
    """Budget pool accounts with their state, reason and in-flight count (names only, never keys)."""
    pool = request.app[appkeys.STATE].runtime.lanes.cheap.pool
    data = [
        {"account": h.name, "state": h.state.value, "healthy": h.state.value == "healthy", "reason": h.reason,
         "retry_in_s": None if h.retry_in_s is None else round(h.retry_in_s, 3), "in_flight": h.in_flight,
         "consecutive_failures": h.consecutive_failures}
        for h in pool.snapshot()
    ]
    return _json({"object": "list", "data": data})


def setup_admin_routes(app: web.Application) -> None:
    """Add every /admin/ route; handlers read STORE, AUTH and STATE (its runtime.config) from the app."""
    routes = [
        (hdrs.METH_GET, "/admin/workspaces", list_workspaces),
        (hdrs.METH_POST, "/admin/workspaces", create_workspace),
        (hdrs.METH_GET, "/admin/workspaces/{name}", get_workspace),
        (hdrs.METH_POST, "/admin/workspaces/{name}/disable", _flag_handler(lambda store, name: store.set_workspace_disabled(name, True))),
        (hdrs.METH_POST, "/admin/workspaces/{name}/enable", _flag_handler(lambda store, name: store.set_workspace_disabled(name, False))),
        (hdrs.METH_POST, "/admin/workspaces/{name}/byok-enable", _flag_handler(lambda store, name: store.set_byok_enabled(name, True))),
        (hdrs.METH_POST, "/admin/workspaces/{name}/byok-disable", _flag_handler(lambda store, name: store.set_byok_enabled(name, False))),
        (hdrs.METH_PATCH, "/admin/workspaces/{name}/limits", set_limits),
        (hdrs.METH_GET, "/admin/workspaces/{name}/keys", list_keys),
        (hdrs.METH_POST, "/admin/workspaces/{name}/keys", create_key),
        (hdrs.METH_POST, "/admin/keys/{key_id}/revoke", revoke_key),
        (hdrs.METH_GET, "/admin/workspaces/{name}/byok", list_byok),
        (hdrs.METH_PUT, "/admin/workspaces/{name}/byok/{provider}", put_byok),
        (hdrs.METH_GET, "/admin/usage", usage),
        (hdrs.METH_GET, "/admin/pool", pool_health),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, admin_only(handler))
