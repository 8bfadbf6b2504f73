"""Console security over real HTTP: sessions, cookies, CSRF, throttling, headers, escaping,
workspace isolation, and the wall between console sessions and API keys."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sqlite3
import time

import pytest

from proxy import appkeys
from tests.console_support import PASSWORD, console_gateway


async def _signed_up(gateway, visitors, **console):
    gw = await console_gateway(gateway, **console)
    alice = visitors(gw)
    page = await alice.signup("alice@example.com", "acme")
    assert page.status == 200 and page.url.endswith("/console/w/acme/"), page.text
    return gw, alice


async def _sql(gw, sql, params=()):
    return await gw.app[appkeys.STORE].fetchall(sql, params)


async def test_session_cookie_flags_and_only_a_hash_is_stored(gateway, visitors):
    gw = await console_gateway(gateway)
    alice = visitors(gw)
    await alice.get("/console/signup")
    form = {"email": "alice@example.com", "password": PASSWORD, "workspace": "acme"}
    page = await alice.post("/console/signup", form, redirects=False)
    assert page.status == 303
    header = next(h for h in page.headers.getall("Set-Cookie") if h.startswith("okm_session="))
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/console" in header
    assert "Secure" not in header  # auto, over plain HTTP
    token = header.split(";", 1)[0].split("=", 1)[1]
    assert len(token) >= 43  # 256 bits, base64url
    rows = await _sql(gw, "SELECT token_hash FROM sessions")
    assert [bytes(r[0]) for r in rows] == [hashlib.sha256(token.encode()).digest()]
    with contextlib.closing(sqlite3.connect(gw.store_path)) as db:  # the whole database as SQL text
        dump = "\n".join(db.iterdump())
    assert token not in dump and PASSWORD not in dump and "$argon2id$" in dump


async def test_secure_cookies_true_sets_secure(gateway, visitors):
    gw = await console_gateway(gateway, secure_cookies=True)
    alice = visitors(gw)
    page = await alice.get("/console/signup")
    presession = next(h for h in page.headers.getall("Set-Cookie") if h.startswith("okm_csrf="))
    assert "Secure" in presession
    form = {"email": "alice@example.com", "password": PASSWORD, "workspace": "acme", "csrf": page.csrf}
    cookie = {"Cookie": presession.split(";", 1)[0]}  # a client on plain HTTP would not send it back
    async with gw.session.post(gw.url + "/console/signup", data=form, headers=cookie, allow_redirects=False) as resp:
        assert resp.status == 303
        assert any(h.startswith("okm_session=") and "Secure" in h for h in resp.headers.getall("Set-Cookie"))


async def test_idle_and_absolute_expiry_end_the_session(gateway, visitors):
    gw, alice = await _signed_up(gateway, visitors, session_idle_minutes=5, session_max_hours=1)
    assert (await alice.get("/console/w/acme/keys")).url.endswith("/keys")
    await gw.app[appkeys.STORE].accounts.touch_session(1, time.time() - 301)  # idle for just over 5 minutes
    page = await alice.get("/console/w/acme/keys")
    assert "/console/login" in page.url and not await _sql(gw, "SELECT id FROM sessions")

    await alice.login("alice@example.com")
    assert (await alice.get("/console/w/acme/keys")).url.endswith("/keys")
    async with gw.app[appkeys.STORE].transaction() as db:  # created 61 minutes ago, active just now
        await db.execute("UPDATE sessions SET created_at = ?", (time.time() - 3660,))
    assert "/console/login" in (await alice.get("/console/w/acme/keys")).url


async def test_logout_ends_the_session_on_the_server(gateway, visitors):
    gw, alice = await _signed_up(gateway, visitors)
    token = alice.cookie("okm_session")
    await alice.get("/console/w/acme/")
    await alice.post("/console/logout", {})
    assert not await _sql(gw, "SELECT id FROM sessions")
    async with gw.session.get(gw.url + "/console/w/acme/", headers={"Cookie": f"okm_session={token}"},
                              allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"].startswith("/console/login")


async def test_every_post_needs_the_sessions_csrf_token(gateway, visitors):
    gw, alice = await _signed_up(gateway, visitors)
    mallory = visitors(gw)
    await mallory.signup("mallory@example.com", "evil")
    theirs = (await mallory.get("/console/w/evil/keys")).csrf
    for token in ("", "0" * 64, theirs):
        page = await alice.post("/console/w/acme/keys", {"name": "x"}, csrf=token or "-")
        assert page.status == 403
    page = await alice.post("/console/w/acme/keys", {"name": "x"}, csrf="")  # no field at all
    assert page.status == 403
    assert not await _sql(gw, "SELECT id FROM api_keys WHERE name = 'x'")
    async with alice.session.post(gw.url + "/console/logout", data={}) as resp:  # logout too
        assert resp.status == 403
    page = await alice.post("/console/w/acme/keys", {"name": "x"}, csrf=(await alice.get("/console/w/acme/keys")).csrf)
    assert page.status == 200 and len(await _sql(gw, "SELECT id FROM api_keys WHERE name = 'x'")) == 1


async def test_signed_out_forms_need_their_csrf_token(gateway, visitors):
    gw = await console_gateway(gateway)
    eve = visitors(gw)
    form = {"email": "e@example.com", "password": PASSWORD, "workspace": "eve"}
    assert (await eve.post("/console/signup", form, csrf="-")).status == 403
    assert (await eve.post("/console/login", {"email": "e@example.com", "password": PASSWORD}, csrf="-")).status == 403
    assert not await _sql(gw, "SELECT id FROM users")


async def test_login_failures_get_one_message_then_a_lock(gateway, visitors):
    gw, _alice = await _signed_up(gateway, visitors)
    guest = visitors(gw)
    unknown = await guest.login("nobody@example.com", "wrong password!!")
    wrong = await guest.login("alice@example.com", "wrong password!!")
    assert unknown.status == wrong.status == 401
    assert "Incorrect email or password." in unknown.text and "Incorrect email or password." in wrong.text
    for _ in range(3):
        page = await guest.login("alice@example.com", "wrong password!!")
    assert page.status == 429 and "locked for 15 minutes" in page.text
    page = await guest.login("alice@example.com")  # the right password, but locked
    assert page.status == 429 and "locked" in page.text and guest.cookie("okm_session") is None
    other = visitors(gw)  # the email is locked from any address
    assert (await other.login("alice@example.com")).status == 429
    async with gw.app[appkeys.STORE].transaction() as db:  # 15 minutes later
        await db.execute("UPDATE login_failures SET failed_at = failed_at - 901")
    page = await other.login("alice@example.com")
    assert page.status == 200 and page.url.endswith("/console/w/acme/")


async def test_security_headers_and_script_nonce(gateway, visitors):
    _gw, alice = await _signed_up(gateway, visitors)
    for path in ("/console/w/acme/", "/console/w/acme/keys", "/console/login", "/console/w/nope/"):
        page = await alice.get(path)
        csp = page.headers["Content-Security-Policy"]
        nonce = re.search(r"script-src 'nonce-([^']+)'", csp).group(1)
        assert "unsafe-inline" not in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Referrer-Policy"] == "same-origin"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        scripts = re.findall(r"<script([^>]*)>", page.text)
        assert scripts and all(f'nonce="{nonce}"' in s for s in scripts)
    assert (await alice.get("/console/w/acme/")).headers["Content-Security-Policy"] != csp  # fresh per response


async def test_user_text_is_escaped(gateway, visitors):
    gw, alice = await _signed_up(gateway, visitors)
    await alice.get("/console/w/acme/keys")
    page = await alice.post("/console/w/acme/keys", {"name": "<script>alert(1)</script>"})
    page = await alice.get("/console/w/acme/keys")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
    bob = visitors(gw)
    page = await bob.signup("bob@example.com", "<script>alert(1)</script>")
    assert page.status == 400 and "<script>alert" not in page.text and "&lt;script&gt;" in page.text


async def test_another_workspaces_urls_are_404(gateway, visitors):
    gw, alice = await _signed_up(gateway, visitors)
    bob = visitors(gw)
    await bob.signup("bob@example.com", "bobs")
    await bob.get("/console/w/bobs/keys")
    await bob.post("/console/w/bobs/keys", {"name": "bob's"})
    bob_key = (await _sql(gw, "SELECT id FROM api_keys WHERE name = ?", ("bob's",)))[0][0]
    for path in ("/console/w/bobs/", "/console/w/bobs/keys", "/console/w/nonexistent/keys"):
        page = await alice.get(path)
        assert page.status == 404 and "bob's" not in page.text
    csrf = (await alice.get("/console/w/acme/keys")).csrf
    for path in (f"/console/w/acme/keys/{bob_key}/revoke", f"/console/w/bobs/keys/{bob_key}/revoke"):
        assert (await alice.post(path, {}, csrf=csrf)).status == 404
    assert (await _sql(gw, "SELECT revoked_at FROM api_keys WHERE id = ?", (bob_key,)))[0][0] is None


async def test_console_sessions_and_api_keys_never_cross(gateway, visitors):
    gw, alice = await _signed_up(gateway, visitors)
    token = alice.cookie("okm_session")
    cookie = {"Cookie": f"okm_session={token}"}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/admin/workspaces")):
        async with gw.session.request(method, gw.url + path, headers=cookie, json={}) as resp:
            assert resp.status == 401, path
    for header in ({"Authorization": f"Bearer {gw.key}"}, {"api-key": gw.key}):
        async with gw.session.get(gw.url + "/console/w/ws/", headers=header, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/console/login")


async def test_a_new_key_is_shown_once(gateway, visitors):
    _gw, alice = await _signed_up(gateway, visitors)
    await alice.get("/console/w/acme/keys")
    created = await alice.post("/console/w/acme/keys", {"name": "prod"})
    key = re.search(r'<code id="new-key">(okm_[^<]+)</code>', created.text).group(1)
    assert created.headers["Cache-Control"] == "no-store"
    for path in ("/console/w/acme/keys", "/console/w/acme/", "/console/keys"):
        page = await alice.get(path)
        assert page.status == 200 and key not in page.text and key[-4:] in (await alice.get("/console/w/acme/keys")).text


async def test_nothing_of_the_console_reaches_logs_or_metrics(gateway, visitors, caplog):
    caplog.set_level(logging.INFO)  # the gateway's default level; its own loggers at DEBUG
    caplog.set_level(logging.DEBUG, logger="okm")
    gw, alice = await _signed_up(gateway, visitors)
    await alice.get("/console/w/acme/keys")
    created = await alice.post("/console/w/acme/keys", {"name": "secret-label"})
    key = re.search(r'<code id="new-key">(okm_[^<]+)</code>', created.text).group(1)
    await alice.login("alice@example.com", "a wrong password")
    text = caplog.text + (await gw.metrics())
    for secret in (key, alice.cookie("okm_session"), PASSWORD, "alice@example.com", "secret-label", "acme"):
        assert secret not in text


async def test_console_is_off_unless_enabled(gateway):
    gw = await gateway()
    async with gw.session.get(gw.url + "/console/login") as resp:
        assert resp.status == 404 and resp.content_type == "application/json"


async def test_throttling_counts_the_proxys_client_header_when_configured(gateway, visitors):
    gw, _alice = await _signed_up(gateway, visitors, client_ip_header="X-Real-IP")
    guest = visitors(gw)
    for i in range(5):
        await guest.get("/console/login")
        page = await guest.post("/console/login", {"email": f"u{i}@example.com", "password": "wrong password!!"},
                                headers={"X-Real-IP": "203.0.113.9"})
    assert page.status == 429 and "locked" in page.text  # five emails, one client address
    other = visitors(gw)
    await other.get("/console/login")
    page = await other.post("/console/login", {"email": "alice@example.com", "password": PASSWORD},
                            headers={"X-Real-IP": "198.51.100.7"})
    assert page.status == 200 and page.url.endswith("/console/w/acme/")  # another client is not locked out


async def test_v1_requests_never_run_console_code(gateway, visitors):
    gw, alice = await _signed_up(gateway, visitors, session_idle_minutes=5)
    token = alice.cookie("okm_session")
    stale = time.time() - 120  # the console would refresh this on its next page view
    await gw.app[appkeys.STORE].accounts.touch_session(1, stale)
    headers = {"Cookie": f"okm_session={token}", **gw.auth()}
    async with gw.session.get(gw.url + "/v1/models", headers=headers) as resp:
        assert resp.status == 200 and "Content-Security-Policy" not in resp.headers
    assert (await _sql(gw, "SELECT last_seen_at FROM sessions"))[0][0] == pytest.approx(stale)
    await alice.get("/console/w/acme/")
    assert (await _sql(gw, "SELECT last_seen_at FROM sessions"))[0][0] > stale + 60
