"""Signed-out pages: login (with throttling), sign-up, logout, invitations and password resets.

Login failures get one generic message; 5 failures for an email or a client address within
15 minutes lock both out for 15 minutes, and the page says so.
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys
from proxy.console import passwords
from proxy.console.access import check_signed_out_form, field, read_form, safe_next, signed_in
from proxy.console.links import link_token_hash
from proxy.console.render import redirect, render
from proxy.console.sessions import (
    Visitor,
    console_config,
    csrf_ok,
    end_session,
    load_visitor,
    presession_csrf_ok,
    start_session,
)
from proxy.store.rows import StoreError

LOCK_FAILURES = 5
LOCK_WINDOW_S = 15 * 60
MSG_LOGIN = "Incorrect email or password."
MSG_LOCKED = "Too many failed sign-in attempts. Sign-in is locked for 15 minutes; try again later."


def client_address(request: web.Request) -> str:
    """The peer, or (behind a proxy) the last value of `console.client_ip_header` it sets."""
    header = console_config(request).client_ip_header
    if header:
        values = request.headers.getall(header, [])
        if values:
            return values[-1].split(",")[-1].strip()[:64]
    return request.remote or "?"


def _subjects(request: web.Request, email: str) -> list[str]:
    return [f"email:{email.strip().lower()[:254]}", f"ip:{client_address(request)}"]


def _login_page(request: web.Request, email: str = "", error: str = "", status: int = 200) -> web.Response:
    context = {"email": email, "error": error, "next": safe_next(request.query.get("next")),
               "signup": console_config(request).signup}
    return render(request, "login.html", context, status=status)


async def login_form(request: web.Request) -> web.StreamResponse:
    if await load_visitor(request) is not None:
        return redirect(safe_next(request.query.get("next")))
    return _login_page(request)


async def login(request: web.Request) -> web.StreamResponse:
    await check_signed_out_form(request)
    email, password = field(request, "email").strip(), field(request, "password")
    accounts = request.config_dict[appkeys.STORE].accounts
    subjects = _subjects(request, email)
    if await accounts.login_failures(subjects, LOCK_WINDOW_S) >= LOCK_FAILURES:
        return _login_page(request, email, MSG_LOCKED, status=429)
    user = await accounts.user_by_email(email) if email else None
    ok = await passwords.verify_password(user.password_hash if user else None, password)
    if user is None or not ok or user.disabled:
        await accounts.record_login_failure(subjects, LOCK_WINDOW_S)
        locked = await accounts.login_failures(subjects, LOCK_WINDOW_S) >= LOCK_FAILURES
        return _login_page(request, email, MSG_LOCKED if locked else MSG_LOGIN, status=429 if locked else 401)
    await accounts.clear_login_failures(subjects[0])
    response = redirect(safe_next(field(request, "next")))
    await start_session(request, response, user)
    return response


@signed_in
async def logout(request: web.Request, visitor: Visitor) -> web.StreamResponse:
    response = redirect("/console/login")
    await end_session(request, response)
    return response


def _signup_page(request: web.Request, error: str = "", status: int = 200, **values: str) -> web.Response:
    context = {"mode": console_config(request).signup, "error": error, **values}
    return render(request, "signup.html", context, status=status)


async def signup_form(request: web.Request) -> web.StreamResponse:
    return _signup_page(request, status=200 if console_config(request).signup == "open" else 403)


async def signup(request: web.Request) -> web.StreamResponse:
    await check_signed_out_form(request)
    if console_config(request).signup != "open":
        return _signup_page(request, status=403)
    email, workspace = field(request, "email").strip(), field(request, "workspace").strip()
    try:
        password_hash = await passwords.hash_password(field(request, "password"))
        config = request.config_dict[appkeys.STATE].runtime.config
        credit = config.console.signup_credit_micros if config.billing.enabled else 0
        user, ws = await request.config_dict[appkeys.STORE].accounts.sign_up(email, password_hash, workspace, credit)
    except (passwords.WeakPassword, StoreError) as exc:
        return _signup_page(request, str(exc), status=400, email=email, workspace=workspace)
    request.config_dict[appkeys.AUTH].invalidate()
    response = redirect(f"/console/w/{ws.name}/")
    await start_session(request, response, user)
    return response


async def invite_page(request: web.Request) -> web.StreamResponse:
    return await _invite(request)


async def _invite(request: web.Request, error: str = "", status: int = 200) -> web.StreamResponse:
    store = request.config_dict[appkeys.STORE]
    link = await store.accounts.link(link_token_hash(request.match_info["token"]), "invite")
    visitor = await load_visitor(request)
    if link is None:
        return render(request, "link.html", {"kind": "invite", "invalid": True}, status=404, visitor=visitor)
    workspace = await store.get_workspace_by_id(link.workspace_id) if link.workspace_id is not None else None
    existing = await store.accounts.user_by_email(link.email)
    context = {"kind": "invite", "link": link, "workspace": workspace, "existing": existing is not None,
               "error": error, "closed": console_config(request).signup == "closed"}
    return render(request, "link.html", context, status=status, visitor=visitor)


async def accept_invite(request: web.Request) -> web.StreamResponse:
    visitor = await load_visitor(request)
    data = await read_form(request)
    expected_ok = csrf_ok(visitor.csrf, data.get("csrf")) if visitor else presession_csrf_ok(request, data.get("csrf"))
    if not expected_ok:
        raise web.HTTPForbidden()
    accounts = request.config_dict[appkeys.STORE].accounts
    token = link_token_hash(request.match_info["token"])
    try:
        if visitor is not None:
            user = await accounts.accept_invite(token, visitor.user.id, None)
        elif console_config(request).signup == "closed":
            raise web.HTTPForbidden(text="New accounts are closed on this gateway; ask the operator.")
        else:
            password_hash = await passwords.hash_password(field(request, "password"))
            user = await accounts.accept_invite(token, None, password_hash)
    except (passwords.WeakPassword, StoreError) as exc:
        return await _invite(request, str(exc), 400)
    current = [m.workspace for m in await accounts.memberships(user.id) if m.workspace_id == user.current_workspace_id]
    response = redirect(f"/console/w/{current[0]}/" if current else "/console/")
    if visitor is None:
        await start_session(request, response, user)
    return response


async def reset_page(request: web.Request) -> web.StreamResponse:
    return await _reset(request)


async def _reset(request: web.Request, error: str = "", status: int = 200) -> web.StreamResponse:
    link = await request.config_dict[appkeys.STORE].accounts.link(link_token_hash(request.match_info["token"]), "reset")
    context = {"kind": "reset", "link": link, "invalid": link is None, "error": error}
    return render(request, "link.html", context, status=status if link else 404)


async def reset_password(request: web.Request) -> web.StreamResponse:
    await check_signed_out_form(request)
    try:
        password_hash = await passwords.hash_password(field(request, "password"))
        await request.config_dict[appkeys.STORE].accounts.reset_password(
            link_token_hash(request.match_info["token"]), password_hash)
    except (passwords.WeakPassword, StoreError) as exc:
        return await _reset(request, str(exc), 400)
    return redirect("/console/login?reset=1")
