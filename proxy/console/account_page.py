"""The account page: change password (every session ends; this browser gets a fresh one),
the user's sessions, and signing out the others.
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys
from proxy.console import passwords
from proxy.console.access import field, signed_in
from proxy.console.render import redirect, render
from proxy.console.sessions import Visitor, start_session
from proxy.store.rows import Workspace


async def _account_page(request: web.Request, visitor: Visitor, *, error: str = "", notice: str = "",
                        status: int = 200) -> web.Response:
    store = request.config_dict[appkeys.STORE]
    memberships = await store.accounts.memberships(visitor.user.id)
    current = next((m for m in memberships if m.workspace_id == visitor.user.current_workspace_id), None)
    context: dict[str, object] = {"page": "account", "sessions": await store.accounts.sessions(visitor.user.id),
                                  "memberships": memberships, "error": error, "notice": notice}
    if current is not None:  # keeps the workspace navigation on this user-level page
        ws: Workspace = await store.get_workspace_by_id(current.workspace_id)
        context.update(ws=ws, membership=current)
    return render(request, "account.html", context, status=status, visitor=visitor)


@signed_in
async def account_page(request: web.Request, visitor: Visitor) -> web.StreamResponse:
    notice = "Password changed. Every other session was signed out." if request.query.get("changed") else ""
    return await _account_page(request, visitor, notice=notice)


@signed_in
async def change_password(request: web.Request, visitor: Visitor) -> web.StreamResponse:
    if not await passwords.verify_password(visitor.user.password_hash, field(request, "current")):
        return await _account_page(request, visitor, error="The current password is not correct.", status=400)
    try:
        new_hash = await passwords.hash_password(field(request, "new"))
    except passwords.WeakPassword as exc:
        return await _account_page(request, visitor, error=str(exc), status=400)
    await request.config_dict[appkeys.STORE].accounts.change_password(visitor.user.id, new_hash)
    response = redirect("/console/account?changed=1")
    await start_session(request, response, visitor.user)  # the old token ended with all the others
    return response


@signed_in
async def end_other_sessions(request: web.Request, visitor: Visitor) -> web.StreamResponse:
    await request.config_dict[appkeys.STORE].accounts.end_other_sessions(visitor.user.id, visitor.session.id)
    return redirect("/console/account")
