"""Console accounts: sign-up modes, the `user` CLI's one-time links, password rules, disabling."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import pytest

from proxy import appkeys
from tests.console_support import PASSWORD, console_gateway

ROOT = Path(__file__).resolve().parents[1]


async def _cli(gw, *args: str) -> tuple[int, str, str]:
    env = {**gw.env, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, "--config", str(gw.config.source), env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def _path(link_output: str) -> str:
    return re.search(r"https?://[^/\s]+(/console/(?:invite|reset)/\S+)", link_output).group(1)


async def test_cli_invite_creates_a_member_once(gateway, visitors):
    gw = await console_gateway(gateway, signup="invite")
    code, out, _ = await _cli(gw, "user", "invite", "New@Example.com", "--workspace", "ws", "--role", "owner")
    assert code == 0 and "valid 7 days" in out
    link = _path(out)
    assert (await gw.app[appkeys.STORE].fetchall("SELECT count(*) FROM account_links"))[0][0] == 1
    assert link.rsplit("/", 1)[1] not in str(await gw.app[appkeys.STORE].fetchall("SELECT * FROM account_links"))
    newcomer = visitors(gw)
    page = await newcomer.get(link)
    assert page.status == 200 and "new@example.com" in page.text
    assert (await newcomer.post(link, {"password": "short"})).status == 400  # the 12-character rule
    page = await newcomer.post(link, {"password": PASSWORD})
    assert page.status == 200 and page.url.endswith("/console/w/ws/")
    assert (await visitors(gw).get(link)).status == 404  # single use
    code, out, _ = await _cli(gw, "user", "list")
    assert code == 0 and re.search(r"new@example.com\s+active\s+ws \(owner\)", out)


async def test_invitation_for_an_existing_user_needs_their_sign_in(gateway, visitors):
    gw = await console_gateway(gateway)
    alice = visitors(gw)
    await alice.signup("alice@example.com", "acme")
    _, out, _ = await _cli(gw, "user", "invite", "alice@example.com", "--workspace", "ws")
    link = _path(out)
    stranger = visitors(gw)
    page = await stranger.get(link)
    assert "Sign in" in page.text
    assert (await stranger.post(link, {"password": PASSWORD})).status == 400  # no new account for a used email
    await alice.get(link)
    page = await alice.post(link, {})
    assert page.url.endswith("/console/w/ws/")
    assert 'href="/console/w/acme/"' in page.text  # the switcher lists both workspaces


async def test_expired_links_are_refused(gateway, visitors):
    gw = await console_gateway(gateway)
    _, out, _ = await _cli(gw, "user", "invite", "late@example.com", "--workspace", "ws")
    async with gw.app[appkeys.STORE].transaction() as db:
        await db.execute("UPDATE account_links SET expires_at = ?", (time.time() - 1,))
    late = visitors(gw)
    assert (await late.get(_path(out))).status == 404
    page = await late.post(_path(out), {"password": PASSWORD})
    assert page.status == 404 and not await gw.app[appkeys.STORE].accounts.user_by_email("late@example.com")


async def test_reset_password_link_ends_sessions(gateway, visitors):
    gw = await console_gateway(gateway)
    alice = visitors(gw)
    await alice.signup("alice@example.com", "acme")
    code, out, _ = await _cli(gw, "user", "reset-password", "alice@example.com")
    assert code == 0
    helper = visitors(gw)
    await helper.get(_path(out))
    page = await helper.post(_path(out), {"password": "a brand new password"})
    assert "/console/login" in page.url
    assert "/console/login" in (await alice.get("/console/w/acme/")).url  # the old session ended
    assert (await visitors(gw).login("alice@example.com")).status == 401
    assert (await visitors(gw).login("alice@example.com", "a brand new password")).url.endswith("/console/w/acme/")
    code, _, err = await _cli(gw, "user", "reset-password", "nobody@example.com")
    assert code == 1 and "no user" in err


async def test_disable_ends_sessions_and_sign_in(gateway, visitors):
    gw = await console_gateway(gateway)
    alice = visitors(gw)
    await alice.signup("alice@example.com", "acme")
    code, out, _ = await _cli(gw, "user", "disable", "alice@example.com")
    assert code == 0 and "disabled" in out
    assert "/console/login" in (await alice.get("/console/w/acme/")).url
    page = await visitors(gw).login("alice@example.com")
    assert page.status == 401 and "Incorrect email or password." in page.text
    assert (await _cli(gw, "user", "enable", "alice@example.com"))[0] == 0
    assert (await visitors(gw).login("alice@example.com")).url.endswith("/console/w/acme/")


@pytest.mark.parametrize("mode", ["invite", "closed"])
async def test_signup_only_when_open(gateway, visitors, mode):
    gw = await console_gateway(gateway, signup=mode)
    guest = visitors(gw)
    page = await guest.get("/console/signup")
    assert page.status == 403 and ("by invitation" in page.text if mode == "invite" else "closed" in page.text)
    form = {"email": "x@example.com", "password": PASSWORD, "workspace": "xx"}
    assert (await guest.post("/console/signup", form)).status == 403
    assert not await gw.app[appkeys.STORE].accounts.user_by_email("x@example.com")
    if mode == "closed":
        _, out, _ = await _cli(gw, "user", "invite", "new@example.com", "--workspace", "ws")
        await guest.get(_path(out))
        assert (await guest.post(_path(out), {"password": PASSWORD})).status == 403


async def test_signup_errors_are_plain(gateway, visitors):
    gw = await console_gateway(gateway)
    guest = visitors(gw)
    assert "at least 12" in (await guest.signup("a@example.com", "acme", password="short")).text
    assert "valid email" in (await guest.signup("not-an-email", "acme")).text
    await visitors(gw).signup("a@example.com", "acme")
    assert "already exists" in (await guest.signup("a@example.com", "other")).text
    assert "already exists" in (await guest.signup("b@example.com", "acme")).text
