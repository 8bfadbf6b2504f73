"""`setup_console(app)`: the console as a sub-application mounted at /console/, with its own
middleware, templates and stylesheet. Nothing is added to the main app but the mount, so
/v1 requests never touch console code.
"""

from __future__ import annotations

from importlib import resources

import aiohttp_jinja2
import jinja2
from aiohttp import web

from proxy import appkeys
from proxy.console import (
    account_page,
    auth_pages,
    billing_page,
    byok_page,
    keys_page,
    members_page,
    overview,
    usage_page,
)
from proxy.console.guard import console_guard
from proxy.console.render import FILTERS, redirect

PREFIX = "/console/"
_CSS = resources.files("proxy.console").joinpath("static/console.css").read_bytes()


async def stylesheet(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_CSS, content_type="text/css", headers={"Cache-Control": "public, max-age=3600"})


async def not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


def _routes(console: web.Application) -> None:
    r = console.router
    r.add_get("/static/console.css", stylesheet)
    r.add_get("/", overview.home)
    r.add_get("/login", auth_pages.login_form)
    r.add_post("/login", auth_pages.login)
    r.add_post("/logout", auth_pages.logout)
    r.add_get("/signup", auth_pages.signup_form)
    r.add_post("/signup", auth_pages.signup)
    r.add_get("/invite/{token}", auth_pages.invite_page)
    r.add_post("/invite/{token}", auth_pages.accept_invite)
    r.add_get("/reset/{token}", auth_pages.reset_page)
    r.add_post("/reset/{token}", auth_pages.reset_password)
    short = "|".join(overview.SHORT_FORMS)
    r.add_get(f"/{{page:{short}}}", overview.short_form)
    w = "/w/{workspace}"
    r.add_get(f"{w}/", overview.overview)
    r.add_get(f"{w}/keys", keys_page.keys_page)
    r.add_post(f"{w}/keys", keys_page.create_key)
    r.add_post(f"{w}/keys/{{key_id}}/revoke", keys_page.revoke_key)
    r.add_get(f"{w}/byok", byok_page.byok_page)
    r.add_post(f"{w}/byok/request", byok_page.request_access)
    r.add_post(f"{w}/byok/{{provider}}", byok_page.set_key)
    r.add_post(f"{w}/byok/{{provider}}/remove", byok_page.remove_key)
    r.add_get(f"{w}/usage", usage_page.usage_page)
    r.add_get(f"{w}/usage.csv", usage_page.usage_csv)
    r.add_get(f"{w}/billing", billing_page.billing_page)
    r.add_post(f"{w}/billing/budget", billing_page.set_budget)
    r.add_get(f"{w}/members", members_page.members_page)
    r.add_post(f"{w}/members/invite", members_page.invite)
    r.add_post(f"{w}/members/{{user_id}}/role", members_page.set_role)
    r.add_post(f"{w}/members/{{user_id}}/remove", members_page.remove)
    r.add_get("/account", account_page.account_page)
    r.add_post("/account/password", account_page.change_password)
    r.add_post("/account/sessions/end-others", account_page.end_other_sessions)
    r.add_route("*", "/{tail:.*}", not_found)


def setup_console(app: web.Application) -> None:
    """Mount the console when `console.enabled`; a no-op otherwise (restart to change)."""
    if not app[appkeys.STATE].runtime.config.console.enabled:
        return
    console = web.Application(middlewares=[console_guard])
    aiohttp_jinja2.setup(console, loader=jinja2.PackageLoader("proxy.console", "templates"), autoescape=True,
                         filters=FILTERS, default_helpers=False)
    _routes(console)
    app.add_subapp(PREFIX, console)
    app.router.add_get("/console", _to_console)


async def _to_console(request: web.Request) -> web.StreamResponse:
    return redirect(PREFIX)
