"""Page rendering: the template context every page shares, formatting filters, redirects.

Templates autoescape everything; nothing here marks user text as safe.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from proxy.console.sessions import PRESESSION_COOKIE, Visitor, presession_csrf

NONCE: web.RequestKey[str] = web.RequestKey("okm_console_nonce", str)


def nonce(request: web.Request) -> str:
    value = request.get(NONCE)
    if value is None:
        value = request[NONCE] = secrets.token_urlsafe(18)
    return value


def when(ts: float | None, empty: str = "never") -> str:
    return empty if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def money(micros: int | None, currency: str = "") -> str:
    """Integer micro-units as a decimal with six places (`12.345678`), never through a float."""
    if micros is None:
        return "—"
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(int(micros)), 1_000_000)
    return f"{sign}{whole:,}.{frac:06d}{' ' + currency if currency else ''}"


def decimal(micros: int) -> str:
    """`12.345678`: the plain form of `money`, as CSV and JSON carry it."""
    return money(micros).replace(",", "")


def count(value: int | None) -> str:
    return "0" if not value else f"{int(value):,}"


FILTERS: dict[str, Callable[..., str]] = {"when": when, "money": money, "count": count, "decimal": decimal}


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def render(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200,
           visitor: Visitor | None = None) -> web.Response:
    """Render with the shared context: nonce, CSRF token, the visitor (or None)."""
    base = {"nonce": nonce(request), "visitor": visitor, "request_path": request.path}
    base["csrf"] = visitor.csrf if visitor is not None else presession_csrf(request)
    response = aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)
    if visitor is None:
        presession_csrf(request, response)  # sets the pre-session cookie when it is new
    elif PRESESSION_COOKIE in request.cookies:
        response.del_cookie(PRESESSION_COOKIE, path="/console")
    return response
