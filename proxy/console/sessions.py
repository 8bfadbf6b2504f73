"""Console sessions and CSRF tokens.

A session is a random 256-bit token in the `okm_session` cookie (HttpOnly, SameSite=Lax,
Path=/console, Secure per config); the store keeps only its SHA-256. The CSRF token of a form
is an HMAC of the session token, so it is bound to that session and needs no storage. Forms
shown before sign-in (login, sign-up, invitations, resets) bind to a pre-session cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from proxy import appkeys
from proxy.config import ConsoleConfig
from proxy.store.rows import SessionRow, User

SESSION_COOKIE = "okm_session"
PRESESSION_COOKIE = "okm_csrf"
COOKIE_PATH = "/console"
TOKEN_BYTES = 32
TOUCH_EVERY_S = 60.0  # last-seen is written at most this often, not on every page view
_CSRF_LABEL = b"okm-console-csrf"
_NEW_PRESESSION: web.RequestKey[str] = web.RequestKey("okm_console_presession", str)


@dataclass(frozen=True, slots=True)
class Visitor:
    """The signed-in user of one request."""

    session: SessionRow
    user: User
    csrf: str


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def csrf_for(token: str) -> str:
    return hmac.new(token.encode("ascii", "replace"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def console_config(request: web.Request) -> ConsoleConfig:
    config: ConsoleConfig = request.config_dict[appkeys.STATE].runtime.config.console
    return config


def _secure(request: web.Request) -> bool:
    mode = console_config(request).secure_cookies
    return mode == "always" or (mode == "auto" and request.secure)


def _cookie_token(request: web.Request, name: str) -> str | None:
    token = request.cookies.get(name)
    return token if token and len(token) <= 100 else None


async def load_visitor(request: web.Request) -> Visitor | None:
    """The session's user, or None when there is no live session (an expired one is ended)."""
    token = _cookie_token(request, SESSION_COOKIE)
    if token is None:
        return None
    accounts = request.config_dict[appkeys.STORE].accounts
    found = await accounts.session(token_hash(token))
    if found is None:
        return None
    session, user = found
    config, now = console_config(request), time.time()
    idle = now - session.last_seen_at > config.session_idle_minutes * 60
    if user.disabled or idle or now - session.created_at > config.session_max_hours * 3600:
        await accounts.end_session(token_hash(token))
        return None
    if now - session.last_seen_at > TOUCH_EVERY_S:
        await accounts.touch_session(session.id, now)
    return Visitor(session, user, csrf_for(token))


async def start_session(request: web.Request, response: web.StreamResponse, user: User) -> None:
    token = new_token()
    config = console_config(request)
    agent = "".join(c for c in request.headers.get("User-Agent", "") if c.isprintable())
    await request.config_dict[appkeys.STORE].accounts.create_session(
        token_hash(token), user.id, agent, config.session_max_hours * 3600
    )
    response.set_cookie(SESSION_COOKIE, token, max_age=config.session_max_hours * 3600, path=COOKIE_PATH,
                        httponly=True, samesite="Lax", secure=_secure(request))


async def end_session(request: web.Request, response: web.StreamResponse) -> None:
    token = _cookie_token(request, SESSION_COOKIE)
    if token is not None:
        await request.config_dict[appkeys.STORE].accounts.end_session(token_hash(token))
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def presession_csrf(request: web.Request, response: web.StreamResponse | None = None) -> str:
    """The CSRF token for a signed-out form; sets the pre-session cookie on `response` if new."""
    token = _cookie_token(request, PRESESSION_COOKIE)
    if token is None:
        token = request.get(_NEW_PRESESSION) or new_token()
        request[_NEW_PRESESSION] = token
    if response is not None and PRESESSION_COOKIE not in request.cookies:
        response.set_cookie(PRESESSION_COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="Strict",
                            secure=_secure(request))
    return csrf_for(token)


def csrf_ok(expected: str, form_value: object) -> bool:
    return isinstance(form_value, str) and hmac.compare_digest(expected, form_value)


def presession_csrf_ok(request: web.Request, form_value: object) -> bool:
    token = _cookie_token(request, PRESESSION_COOKIE)
    return token is not None and csrf_ok(csrf_for(token), form_value)
