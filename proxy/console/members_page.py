"""The members page: everyone sees who is in the workspace; owners invite (a one-time link to
send, valid 7 days), remove members and change roles. A workspace always keeps an owner.
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys
from proxy.console.access import Page, field, on_workspace, owner_only
from proxy.console.links import create_link
from proxy.console.overview import api_base
from proxy.console.render import redirect, render
from proxy.store.rows import StoreError


async def _members_page(request: web.Request, page: Page, *, link: str = "", invited: str = "", error: str = "",
                        status: int = 200) -> web.Response:
    members = await request.config_dict[appkeys.STORE].accounts.members(page.workspace.id)
    context = page.context("members", members=members, link=link, invited=invited, error=error)
    return render(request, "members.html", context, status=status, visitor=page.visitor)


@on_workspace
async def members_page(request: web.Request, page: Page) -> web.StreamResponse:
    return await _members_page(request, page)


@on_workspace
async def invite(request: web.Request, page: Page) -> web.StreamResponse:
    owner_only(page)
    email, role = field(request, "email").strip(), field(request, "role") or "member"
    store = request.config_dict[appkeys.STORE]
    base = api_base(request).removesuffix("/v1")
    try:
        link = await create_link(store, base, "invite", email, page.workspace.id, role)
    except StoreError as exc:
        return await _members_page(request, page, error=str(exc), status=400)
    return await _members_page(request, page, link=link, invited=email.lower())


def _member_id(request: web.Request) -> int:
    try:
        return int(request.match_info["user_id"])
    except ValueError:
        raise web.HTTPNotFound() from None


async def _change(request: web.Request, page: Page, role: str | None) -> web.StreamResponse:
    owner_only(page)
    accounts = request.config_dict[appkeys.STORE].accounts
    user_id = _member_id(request)
    if all(m.user_id != user_id for m in await accounts.members(page.workspace.id)):
        raise web.HTTPNotFound()
    try:
        if role is None:
            await accounts.remove_member(page.workspace.id, user_id)
        else:
            await accounts.set_role(page.workspace.id, user_id, role)
    except StoreError as exc:
        return await _members_page(request, page, error=str(exc), status=400)
    if user_id == page.visitor.user.id and role is None:
        return redirect("/console/")
    return redirect(f"/console/w/{page.workspace.name}/members")


@on_workspace
async def set_role(request: web.Request, page: Page) -> web.StreamResponse:
    return await _change(request, page, field(request, "role"))


@on_workspace
async def remove(request: web.Request, page: Page) -> web.StreamResponse:
    return await _change(request, page, None)
