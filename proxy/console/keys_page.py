"""The keys page: list (name, masked key, created, last used, spend), create (the key is shown
in that one response only), revoke (the gateway refuses it within a second).
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys
from proxy.console.access import Page, field, on_workspace
from proxy.console.render import redirect, render
from proxy.store.rows import InvalidValue, KeyNotFound
from proxy.types import Secret


async def _keys_page(request: web.Request, page: Page, *, new_key: Secret | None = None, new_key_id: str = "",
                     error: str = "", status: int = 200) -> web.Response:
    store = request.config_dict[appkeys.STORE]
    keys = await store.list_api_keys(page.workspace.name)
    spend = await store.console.key_requests(page.workspace.id)
    context = page.context("keys", keys=keys, spend=spend, new_key=new_key.reveal() if new_key else None,
                           new_key_id=new_key_id, error=error)
    return render(request, "keys.html", context, status=status, visitor=page.visitor)


@on_workspace
async def keys_page(request: web.Request, page: Page) -> web.StreamResponse:
    return await _keys_page(request, page)


@on_workspace
async def create_key(request: web.Request, page: Page) -> web.StreamResponse:
    app = request.config_dict
    name = field(request, "name").strip()
    try:
        api_key, secret = await app[appkeys.STORE].create_api_key(
            page.workspace.name, app[appkeys.STATE].runtime.config.key_pepper, name)
    except InvalidValue as exc:
        return await _keys_page(request, page, error=str(exc), status=400)
    app[appkeys.AUTH].invalidate()
    return await _keys_page(request, page, new_key=secret, new_key_id=api_key.id)


@on_workspace
async def revoke_key(request: web.Request, page: Page) -> web.StreamResponse:
    app = request.config_dict
    store = app[appkeys.STORE]
    try:
        key = await store.get_api_key(request.match_info["key_id"])
    except KeyNotFound:
        raise web.HTTPNotFound() from None
    if key.workspace_id != page.workspace.id:
        raise web.HTTPNotFound()
    await store.revoke_api_key(key.id)
    app[appkeys.AUTH].invalidate()
    return redirect(f"/console/w/{page.workspace.name}/keys")
