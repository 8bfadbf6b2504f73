"""Workspace-key authentication through a real aiohttp server, against a real SQLite store."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from proxy.errors import ProxyError, auth_failure
from proxy.store import Store, keys
from proxy.types import AuthFailure, Secret
from proxy.workspaces.auth import Authenticator

PEPPER = Secret("test-pepper", "OKM_KEY_PEPPER")
AUTH = web.AppKey("auth", Authenticator)


class FrozenClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(store_url):
    s = await Store.open(store_url)
    yield s
    await s.close()


@pytest.fixture
async def issued(store):
    await store.create_workspace("acme")
    api_key, key = await store.create_api_key("acme", PEPPER, "ci")
    return api_key, key.reveal()


async def whoami(request: web.Request) -> web.Response:
    try:
        principal = await request.app[AUTH].authenticate(request)
    except ProxyError as exc:
        reason = auth_failure(exc)
        return web.json_response(exc.to_openai_body(), status=exc.status, headers={"X-Reason": str(reason)})
    return web.json_response({"workspace": principal.workspace_name, "key_id": principal.key_id})


async def _client(aiohttp_client, auth: Authenticator):
    app = web.Application()
    app[AUTH] = auth
    app.router.add_get("/v1/models", whoami)
    return await aiohttp_client(app)


@pytest.fixture
async def client(aiohttp_client, store, issued):
    auth = Authenticator(store, PEPPER)
    await auth.start()
    return await _client(aiohttp_client, auth)


async def _call(client, headers=None, path="/v1/models"):
    resp = await client.get(path, headers=headers or {})
    return resp.status, await resp.json(), resp.headers.get("X-Reason")


async def test_bearer_and_api_key_headers_authenticate(client, issued):
    api_key, key = issued
    for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": f"bearer  {key} "}, {"api-key": key},
                    {"Authorization": f"Bearer {key}", "api-key": key}):
        status, body, _ = await _call(client, headers)
        assert (status, body) == (200, {"workspace": "acme", "key_id": api_key.id}), headers


@pytest.mark.parametrize(
    "headers, path, reason, says",
    [
        ({}, "/v1/models", "missing", "didn't provide an API key"),
        ({"Authorization": "Bearer "}, "/v1/models", "missing", "didn't provide an API key"),
        ({"Authorization": "Bearer sk-not-ours-0123456789"}, "/v1/models", "malformed", "malformed"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "/v1/models", "malformed", "Bearer scheme"),
        ({"Authorization": "Bearer {key}"}, "/v1/models?api_key={key}", "malformed", "not accepted in the URL"),
        ({}, "/v1/models?key={key}", "malformed", "not accepted in the URL"),
        ([("Authorization", "Bearer {key}"), ("Authorization", "Bearer {key}")], "/v1/models", "malformed", "more than one"),
        ({"Authorization": "Bearer {key}", "api-key": "{other}"}, "/v1/models", "malformed", "different keys"),
        ({"Authorization": "Bearer {typo}"}, "/v1/models", "malformed", "malformed"),
        ({"Authorization": "Bearer {other}"}, "/v1/models", "unknown", "Incorrect API key"),
    ],
)
async def test_refusals_are_401_openai_shaped_and_never_echo_the_key(client, issued, headers, path, reason, says):
    _, key = issued
    other = keys.generate_api_key()[1]
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    fill = {"key": key, "other": other, "typo": typo}
    pairs = headers.items() if isinstance(headers, dict) else headers
    status, body, got_reason = await _call(client, [(k, v.format(**fill)) for k, v in pairs], path.format(**fill))
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "authentication_error"
    assert says in body["error"]["message"]
    assert got_reason == reason
    text = str(body)
    for secret in (key, other, typo, key[20:40]):
        assert secret not in text


async def test_revoked_key_is_401_and_disabled_workspace_is_403(client, store, issued):
    api_key, key = issued
    auth = client.app[AUTH]
    await store.set_workspace_disabled("acme", True)
    auth.invalidate()
    status, body, reason = await _call(client, {"Authorization": f"Bearer {key}"})
    assert (status, body["error"]["code"], reason) == (403, "workspace_disabled", "disabled")
    assert "acme" in body["error"]["message"] and key not in str(body)
    await store.set_workspace_disabled("acme", False)
    await store.revoke_api_key(api_key.id)
    auth.invalidate()
    status, body, reason = await _call(client, {"Authorization": f"Bearer {key}"})
    assert (status, body["error"]["code"], reason) == (401, "invalid_api_key", "revoked")


async def test_changes_from_another_process_apply_within_the_bound(client, store, issued):
    api_key, key = issued
    other_process = await Store.open(store.url)  # stands in for the CLI (or another host)
    try:
        assert (await _call(client, {"Authorization": f"Bearer {key}"}))[0] == 200
        for disabled, expected in ((True, 403), (False, 200)):
            await other_process.set_workspace_disabled("acme", disabled)
            started = time.monotonic()
            while (await _call(client, {"Authorization": f"Bearer {key}"}))[0] != expected:
                assert time.monotonic() - started < 5, "change not seen within 5 s"
                await asyncio.sleep(0.05)
        await other_process.revoke_api_key(api_key.id)
        started = time.monotonic()
        while (await _call(client, {"Authorization": f"Bearer {key}"}))[0] != 401:
            await asyncio.sleep(0.05)
        assert time.monotonic() - started < 5
        # a key created elsewhere works at once (a miss forces a version check, rate-limited)
        _, fresh = await other_process.create_api_key("acme", PEPPER)
        await asyncio.sleep(0.15)
        assert (await _call(client, {"Authorization": f"Bearer {fresh.reveal()}"}))[0] == 200
    finally:
        await other_process.close()


async def test_hot_path_does_no_sqlite_round_trip(aiohttp_client, tmp_path):
    store = await Store.open(tmp_path / "okm.sqlite3")
    await store.create_workspace("acme")
    await store.set_workspace_limits("acme", rpm_limit=30, stream_limit=2)
    api_key, key = await store.create_api_key("acme", PEPPER)
    clock = FrozenClock()
    auth = Authenticator(store, PEPPER, clock=clock)
    await auth.start()
    await store.close()  # any SQL from here on would fail
    client = await _client(aiohttp_client, auth)
    for _ in range(50):
        assert (await _call(client, {"Authorization": f"Bearer {key.reveal()}"}))[0] == 200
    assert (await _call(client, {"Authorization": f"Bearer {keys.generate_api_key()[1]}"}))[0] == 401
    limits = auth.principal_limits(api_key.workspace_id)
    assert (limits.rpm_limit, limits.stream_limit) == (30, 2)
    assert auth.principal_limits(999) is None


async def test_store_failures_keep_the_cache_and_a_first_load_failure_is_503(store_url):
    store = await Store.open(store_url)
    await store.create_workspace("acme")
    _, key = await store.create_api_key("acme", PEPPER)
    clock = FrozenClock()
    auth = Authenticator(store, PEPPER, clock=clock)
    await auth.start()
    await store.close()
    clock.now += 5  # a version check is due, and fails
    assert (await auth.authenticate_key(key.reveal())).workspace_name == "acme"
    cold = Authenticator(store, PEPPER)
    with pytest.raises(ProxyError) as raised:
        await cold.authenticate_key(key.reveal())
    assert raised.value.status == 503 and "store cannot be read" in raised.value.message


def test_failure_reasons_are_a_small_bounded_set():
    assert [r.value for r in AuthFailure] == ["missing", "malformed", "unknown", "revoked", "disabled"]


async def test_a_key_seen_before_is_remembered_only_for_itself_and_its_snapshot(client, store, issued):
    api_key, key = issued
    assert (await _call(client, {"Authorization": f"Bearer {key}"}))[0] == 200  # now verified
    body = key[: len(keys.PREFIX) + keys.KEY_ID_LEN + 1] + "x" * keys.SECRET_LEN  # same key id, other secret
    forged = body + keys._checksum(body)
    assert keys.key_id_of(forged) == api_key.id
    assert (await _call(client, {"Authorization": f"Bearer {forged}"}))[:3:2] == (401, "unknown")
    assert (await _call(client, {"Authorization": f"Bearer {key}"}))[0] == 200
    await store.revoke_api_key(api_key.id)
    client.app[AUTH].invalidate()
    assert (await _call(client, {"Authorization": f"Bearer {key}"}))[:3:2] == (401, "revoked")


async def test_while_a_check_runs_a_known_key_is_served_but_an_invalidated_copy_never(store, issued):
    _, key = issued
    clock = FrozenClock()
    auth = Authenticator(store, PEPPER, clock=clock)
    await auth.start()
    assert (await auth.authenticate_key(key)).workspace_name == "acme"  # verified
    clock.now += 5  # a version check is due
    async with auth._lock:  # another request's check is running
        assert (await asyncio.wait_for(auth.authenticate_key(key), 1)).workspace_name == "acme"
        auth.invalidate()  # e.g. the admin API revoked something: the next answer must wait for the reload
        waiting = asyncio.ensure_future(auth.authenticate_key(key))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    assert (await asyncio.wait_for(waiting, 5)).workspace_name == "acme"
