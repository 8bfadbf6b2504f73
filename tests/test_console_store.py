"""The console's store methods on both backends (SQLite and PostgreSQL): accounts, sessions,
one-time links, throttling, and the usage reads behind the pages."""

from __future__ import annotations

import time

import pytest

from proxy.console.usage_page import window_start
from proxy.store import Store
from proxy.store.rows import AccountError, InvalidValue, UsageRow, WorkspaceExists
from proxy.types import Secret

PEPPER = Secret("test-pepper", "OKM_KEY_PEPPER")


@pytest.fixture
async def store(store_url):
    s = await Store.open(store_url)
    yield s
    await s.close()


async def test_sign_up_sessions_and_roles(store):
    user, ws = await store.accounts.sign_up(" Ada@Example.com ", "$argon2id$fake", "acme", credit_micros=5_000_000)
    assert user.email == "ada@example.com" and user.current_workspace_id == ws.id
    assert (await store.billing_account("acme")).credits_micros == 5_000_000
    with pytest.raises(AccountError):
        await store.accounts.sign_up("ada@example.com", "h", "other")
    with pytest.raises(WorkspaceExists):
        await store.accounts.sign_up("bob@example.com", "h", "acme")
    with pytest.raises(InvalidValue):
        await store.accounts.sign_up("not-an-email", "h", "third")
    assert await store.accounts.user_by_email("bob@example.com") is None  # nothing half-made

    await store.accounts.create_session(b"t1" * 16, user.id, "UA", 3600)
    await store.accounts.create_session(b"t2" * 16, user.id, "UA2", 3600)
    session, found = await store.accounts.session(b"t1" * 16)
    assert found.id == user.id and session.user_agent == "UA"
    await store.accounts.touch_session(session.id, time.time() + 5)
    assert await store.accounts.end_other_sessions(user.id, session.id) == 1
    assert await store.accounts.session(b"t2" * 16) is None
    await store.accounts.change_password(user.id, "$argon2id$new")
    assert await store.accounts.session(b"t1" * 16) is None

    with pytest.raises(AccountError):
        await store.accounts.set_role(ws.id, user.id, "member")  # the only owner
    members = await store.accounts.members(ws.id)
    assert [(m.email, m.role) for m in members] == [("ada@example.com", "owner")]


async def test_links_are_single_use_and_expire(store):
    _owner, ws = await store.accounts.sign_up("owner@example.com", "h", "acme")
    await store.accounts.create_link(b"i" * 32, "invite", "New@Example.com", ws.id, "member", 60)
    assert (await store.accounts.link(b"i" * 32, "invite")).email == "new@example.com"
    assert await store.accounts.link(b"i" * 32, "reset") is None
    newcomer = await store.accounts.accept_invite(b"i" * 32, None, "$argon2id$x")
    assert [m.role for m in await store.accounts.memberships(newcomer.id)] == ["member"]
    with pytest.raises(AccountError):
        await store.accounts.accept_invite(b"i" * 32, None, "$argon2id$x")
    await store.accounts.create_link(b"r" * 32, "reset", "owner@example.com", None, None, -1)
    with pytest.raises(AccountError):
        await store.accounts.reset_password(b"r" * 32, "$argon2id$y")
    await store.accounts.create_link(b"s" * 32, "reset", "owner@example.com", None, None, 60)
    assert (await store.accounts.reset_password(b"s" * 32, "$argon2id$y")).password_hash == "$argon2id$y"
    users = await store.accounts.list_users()
    assert [(u.email, [m.workspace for m in ms]) for u, ms in users] == [
        ("new@example.com", ["acme"]), ("owner@example.com", ["acme"])]
    await store.accounts.remove_member(ws.id, newcomer.id)
    assert await store.accounts.memberships(newcomer.id) == []
    assert (await store.accounts.set_disabled("owner@example.com")).disabled


async def test_login_failures_window(store):
    subjects = ["email:a@example.com", "ip:203.0.113.1"]
    for _ in range(3):
        await store.accounts.record_login_failure(subjects, 900)
    assert await store.accounts.login_failures(subjects, 900) == 3
    await store.accounts.clear_login_failures(subjects[0])
    assert await store.accounts.login_failures(subjects[:1], 900) == 0
    assert await store.accounts.login_failures(subjects, 900) == 3  # the address keeps its count


async def test_usage_reads_and_byok_hints(store):
    ws = await store.create_workspace("acme")
    other = await store.create_workspace("other")
    key, _ = await store.create_api_key("acme", PEPPER)
    now = time.time()
    first = window_start(now)
    rows = [UsageRow(f"r{i}", first + 3600 + i * 86400, ws.id, key.id, lane, f"{lane}/m", "u", "chat/completions",
                     False, 200, "ok", 10, 5, 15, cost_micros=7) for i, lane in enumerate(["cheap", "resale", "cheap"])]
    rows.append(UsageRow("x", first + 10, other.id, None, "cheap", "cheap/m", "u", "chat/completions", False, 200, "ok",
                         1, 1, 2))
    await store.write_usage([], rows)
    daily = await store.console.daily(ws.id, first, 30)
    assert [(d.day, d.lane, d.model, d.requests, d.tokens, d.cost_micros) for d in sorted(daily, key=lambda d: d.day)] == [
        (0, "cheap", "cheap/m", 1, 15, 7), (1, "resale", "resale/m", 1, 15, 7), (2, "cheap", "cheap/m", 1, 15, 7)]
    assert [d.day for d in await store.console.daily(ws.id, first, 30, lane="resale")] == [1]
    latest = await store.console.latest(ws.id, first, 2)
    assert [r.request_id for r in latest] == ["r2", "r1"] and latest[0].cost_micros == 7
    assert await store.console.models_used(ws.id, first) == ["cheap/m", "resale/m"]
    assert await store.console.key_requests(ws.id) == {key.id: 3}
    assert await store.console.first_request_at(ws.id) == pytest.approx(first + 3600)

    await store.put_byok_key(ws.id, "openai", b"blob", "mk1", last4="abcd")
    assert (await store.console.byok_hints(ws.id))["openai"].last4 == "abcd"
    assert await store.console.delete_byok_key(ws.id, "openai") and not await store.console.byok_hints(ws.id)
    await store.console.request_byok_access(ws.id, None)
    await store.console.request_byok_access(ws.id, None)  # a second press changes nothing
    assert list(await store.console.byok_requests()) == [ws.id]
