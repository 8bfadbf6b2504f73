"""The BYOK page. Not enabled: "limited rollout" and a request-access button (the operator sees
the request in `workspace list` and the admin API). Enabled: per configured provider, set,
replace or remove the key. Write-only: the page shows the last 4 characters and when it was set.
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys
from proxy.admin import ops as admin_ops
from proxy.console.access import Page, field, on_workspace, owner_only
from proxy.console.render import redirect, render
from proxy.store.rows import StoreError
from proxy.workspaces.crypto import MasterKeyError


async def _byok_page(request: web.Request, page: Page, error: str = "", status: int = 200) -> web.Response:
    store = request.config_dict[appkeys.STORE]
    config = request.config_dict[appkeys.STATE].runtime.config
    hints = await store.console.byok_hints(page.workspace.id)
    requested = (await store.console.byok_requests([page.workspace.id])).get(page.workspace.id)
    context = page.context("byok", providers=sorted(config.byok_providers.values(), key=lambda p: p.name),
                           hints=hints, requested_at=requested, error=error)
    return render(request, "byok.html", context, status=status, visitor=page.visitor)


@on_workspace
async def byok_page(request: web.Request, page: Page) -> web.StreamResponse:
    return await _byok_page(request, page)


@on_workspace
async def request_access(request: web.Request, page: Page) -> web.StreamResponse:
    owner_only(page)
    await request.config_dict[appkeys.STORE].console.request_byok_access(page.workspace.id, page.visitor.user.id)
    return redirect(f"/console/w/{page.workspace.name}/byok")


def _provider(request: web.Request, page: Page) -> str:
    provider = request.match_info["provider"]
    if provider not in request.config_dict[appkeys.STATE].runtime.config.byok_providers:
        raise web.HTTPNotFound()
    owner_only(page)
    if not page.workspace.byok_enabled:
        raise web.HTTPForbidden(text="BYOK is in limited rollout and not enabled for this workspace yet.")
    return provider


@on_workspace
async def set_key(request: web.Request, page: Page) -> web.StreamResponse:
    provider = _provider(request, page)
    app = request.config_dict
    try:
        await admin_ops.set_byok_key(app[appkeys.STORE], app[appkeys.STATE].runtime.config, page.workspace.name,
                                     provider, field(request, "key"))
    except (StoreError, MasterKeyError) as exc:
        message = str(exc) if isinstance(exc, StoreError) else "the gateway cannot store BYOK keys right now"
        return await _byok_page(request, page, message, status=400)
    app[appkeys.AUTH].invalidate()
    return redirect(f"/console/w/{page.workspace.name}/byok")


@on_workspace
async def remove_key(request: web.Request, page: Page) -> web.StreamResponse:
    provider = _provider(request, page)
    await request.config_dict[appkeys.STORE].console.delete_byok_key(page.workspace.id, provider)
    request.config_dict[appkeys.AUTH].invalidate()
    return redirect(f"/console/w/{page.workspace.name}/byok")
