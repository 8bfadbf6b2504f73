"""Who may see what: the signed-in decorator (session + CSRF on every POST) and the workspace
decorator (membership, else 404). Handlers receive a `Page` and never look at cookies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDictProxy

from proxy import appkeys
from proxy.console.render import redirect
from proxy.console.sessions import Visitor, csrf_ok, load_visitor, presession_csrf_ok
from proxy.store.rows import Membership, Workspace

FORM: web.RequestKey[MultiDictProxy[Any]] = web.RequestKey("okm_console_form", MultiDictProxy)
MAX_FIELD = 8192


@dataclass(frozen=True, slots=True)
class Page:
    """A signed-in request on one of the visitor's workspaces."""

    visitor: Visitor
    memberships: list[Membership]
    membership: Membership
    workspace: Workspace

    @property
    def is_owner(self) -> bool:
        return self.membership.role == "owner"

    def context(self, page: str, **extra: Any) -> dict[str, Any]:
        return {"page": page, "memberships": self.memberships, "membership": self.membership,
                "ws": self.workspace, "is_owner": self.is_owner, **extra}


def form(request: web.Request) -> MultiDictProxy[Any]:
    return request[FORM]


def field(request: web.Request, name: str) -> str:
    value = form(request).get(name, "")
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def safe_next(target: str | None) -> str:
    """Only a path inside the console: never another host (no open redirect)."""
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/"


def login_redirect(request: web.Request) -> web.Response:
    return redirect("/console/login?next=" + quote(request.path_qs if request.method == "GET" else "/console/"))


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise web.HTTPForbidden(text="Forms must be sent by the console's own pages.")
    data = await request.post()
    request[FORM] = data
    return data


async def check_signed_out_form(request: web.Request) -> None:
    """A POST from a signed-out page (login, sign-up, links): pre-session CSRF, else 403."""
    data = await read_form(request)
    if not presession_csrf_ok(request, data.get("csrf")):
        raise web.HTTPForbidden()


SignedIn = Callable[[web.Request, Visitor], Awaitable[web.StreamResponse]]
OnWorkspace = Callable[[web.Request, Page], Awaitable[web.StreamResponse]]


def signed_in(handler: SignedIn) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        visitor = await load_visitor(request)
        if request.method == "POST":
            data = await read_form(request)
            if visitor is None or not csrf_ok(visitor.csrf, data.get("csrf")):
                raise web.HTTPForbidden()
        elif visitor is None:
            return login_redirect(request)
        return await handler(request, visitor)

    return wrapped


def on_workspace(handler: OnWorkspace) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The visitor's membership of the URL's workspace; any other workspace is a 404."""

    async def with_visitor(request: web.Request, visitor: Visitor) -> web.StreamResponse:
        store = request.config_dict[appkeys.STORE]
        memberships = await store.accounts.memberships(visitor.user.id)
        name = request.match_info["workspace"]
        membership = next((m for m in memberships if m.workspace == name), None)
        if membership is None:
            raise web.HTTPNotFound()
        if visitor.user.current_workspace_id != membership.workspace_id:
            await store.accounts.set_current_workspace(visitor.user.id, membership.workspace_id)
        workspace = await store.get_workspace_by_id(membership.workspace_id)
        return await handler(request, Page(visitor, memberships, membership, workspace))

    return signed_in(with_visitor)


def owner_only(page: Page) -> None:
    if not page.is_owner:
        raise web.HTTPForbidden(text="Only an owner of this workspace can do that.")
