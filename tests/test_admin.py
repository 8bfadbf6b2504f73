"""The /admin/ HTTP API through a real aiohttp server, with a real store and authenticator."""

from __future__ import annotations

import time

import pytest
from aiohttp import web

from proxy import appkeys
from proxy.admin.api import setup_admin_routes
from proxy.config import Config, load_config
from proxy.errors import ProxyError
from proxy.http.middleware import request_context
from proxy.runtime import Runtime, State
from proxy.store import Store
from proxy.store.rows import UsageRow
from proxy.types import AttemptResult
from proxy.workspaces.auth import Authenticator
from proxy.workspaces.crypto import MasterKey, decrypt_provider_key, generate_master_key

ADMIN_TOKEN = "admin-token-0123456789abcdef"
MASTER = generate_master_key()
CONFIG_YAML = """
store: {path: okm.sqlite3}
lanes:
  cheap:
    pool:
      - {name: pool-a, type: mock, models: [gpt-5.4]}
      - {name: pool-b, type: mock, models: [gpt-5.4]}
  byok:
    providers:
      openai: {type: mock, models: [gpt-5.4]}
      mistral: {type: mock}
"""


def make_config(tmp_path, **env: str | None) -> Config:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG_YAML)
    environ = {"OKM_KEY_PEPPER": "pepper", "OKM_ADMIN_TOKEN": ADMIN_TOKEN, "OKM_MASTER_KEY": MASTER, **env}
    return load_config(path, {k: v for k, v in environ.items() if v is not None})


async def v1_models(request: web.Request) -> web.Response:
    try:
        principal = await request.app[appkeys.AUTH].authenticate(request)
    except ProxyError as exc:
        return web.json_response(exc.to_openai_body(), status=exc.status)
    return web.json_response({"workspace": principal.workspace_name})


async def _client(aiohttp_client, config: Config):
    store = await Store.open(config.store_path)
    auth = Authenticator(store, config.key_pepper)
    await auth.start()
    app = web.Application(middlewares=[request_context])  # the gateway's error mapping
    app[appkeys.STATE] = State(Runtime.build(config))
    app[appkeys.STORE] = store
    app[appkeys.AUTH] = auth

    async def close(_app: web.Application) -> None:
        await store.close()

    app.on_cleanup.append(close)
    setup_admin_routes(app)
    app.router.add_get("/v1/models", v1_models)
    return await aiohttp_client(app)


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await _client(aiohttp_client, make_config(tmp_path))


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def call(client, method, path, json=None, headers=ADMIN, data=None):
    resp = await client.request(method, path, json=json, headers=headers, data=data)
    return resp.status, await resp.json()


def _is_openai_error(body, code):
    return set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == code


async def test_admin_api_is_disabled_without_a_token(aiohttp_client, tmp_path):
    client = await _client(aiohttp_client, make_config(tmp_path, OKM_ADMIN_TOKEN=None))
    for headers in (ADMIN, {}, {"Authorization": "Bearer "}):
        status, body = await call(client, "GET", "/admin/workspaces", headers=headers)
        assert status == 503 and _is_openai_error(body, "admin_api_disabled")
        assert "OKM_ADMIN_TOKEN" in body["error"]["message"]


async def test_token_is_required_and_tokens_do_not_cross_over(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN},
                    [("Authorization", ADMIN["Authorization"])] * 2):
        status, body = await call(client, "GET", "/admin/workspaces", headers=headers)
        assert status == 401 and _is_openai_error(body, "invalid_admin_token")
        assert ADMIN_TOKEN not in str(body)
    await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    _, created = await call(client, "POST", "/admin/workspaces/acme/keys", {"name": "ci"})
    key = created["key"]
    status, body = await call(client, "GET", "/admin/workspaces", headers={"Authorization": f"Bearer {key}"})
    assert status == 401 and key not in str(body)
    status, body = await call(client, "GET", "/v1/models", headers=ADMIN)
    assert status == 401 and _is_openai_error(body, "invalid_api_key") and ADMIN_TOKEN not in str(body)
    assert await call(client, "GET", "/v1/models", headers={"Authorization": f"Bearer {key}"}) == (200, {"workspace": "acme"})


@pytest.mark.parametrize(("method", "path", "payload", "status"), [
    ("GET", "/admin/workspaces", None, 401),  # no token
    ("POST", "/admin/workspaces", {"name": "Bad Name"}, 400),
    ("GET", "/admin/workspaces/nobody", None, 404),
])
async def test_admin_errors_carry_the_request_id(client, method, path, payload, status):
    headers = {} if status == 401 else ADMIN
    resp = await client.request(method, path, json=payload, headers=headers)
    body = await resp.json()
    assert resp.status == status and set(body["error"]) == {"message", "type", "param", "code"}
    assert resp.headers["X-Request-Id"].startswith("req_")


async def test_workspaces(client):
    status, body = await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    assert status == 201 and body["name"] == "acme" and body["disabled"] is False and body["byok_providers"] == []
    status, body = await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    assert status == 409 and _is_openai_error(body, "workspace_exists") and "acme" in body["error"]["message"]
    status, body = await call(client, "POST", "/admin/workspaces", {"name": "Bad Name"})
    assert status == 400 and "invalid workspace name" in body["error"]["message"]
    for payload in ({}, {"name": 3}, {"name": "x", "extra": 1}):
        assert (await call(client, "POST", "/admin/workspaces", payload))[0] == 400
    status, body = await call(client, "POST", "/admin/workspaces", data=b"{not json", headers={**ADMIN, "Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = await call(client, "GET", "/admin/workspaces")
    assert status == 200 and [w["name"] for w in body["data"]] == ["acme"]
    status, body = await call(client, "GET", "/admin/workspaces/nope")
    assert status == 404 and _is_openai_error(body, "workspace_not_found")
    assert (await call(client, "POST", "/admin/workspaces/nope/disable"))[0] == 404
    status, body = await call(client, "POST", "/admin/workspaces/acme/byok-enable")
    assert status == 200 and body["byok_enabled"] is True


async def test_keys_disable_and_revoke_take_effect_at_once(client):
    await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    status, created = await call(client, "POST", "/admin/workspaces/acme/keys", {"name": "ci"})
    assert status == 201 and created["key"].startswith("okm_") and created["name"] == "ci"
    key, v1 = created["key"], {"Authorization": f"Bearer {created['key']}"}
    status, listed = await call(client, "GET", "/admin/workspaces/acme/keys")
    assert status == 200 and [k["id"] for k in listed["data"]] == [created["id"]]
    assert key not in str(listed) and listed["data"][0]["masked"] == created["masked"]
    assert (await call(client, "GET", "/v1/models", headers=v1))[0] == 200

    assert (await call(client, "POST", "/admin/workspaces/acme/disable"))[0] == 200
    status, body = await call(client, "GET", "/v1/models", headers=v1)
    assert status == 403 and _is_openai_error(body, "workspace_disabled")
    assert (await call(client, "POST", "/admin/workspaces/acme/enable"))[0] == 200
    assert (await call(client, "GET", "/v1/models", headers=v1))[0] == 200

    status, body = await call(client, "POST", f"/admin/keys/{created['id']}/revoke")
    assert status == 200 and body["revoked"] is True and body["workspace"] == "acme"
    status, body = await call(client, "GET", "/v1/models", headers=v1)
    assert status == 401 and _is_openai_error(body, "invalid_api_key")
    status, body = await call(client, "POST", "/admin/keys/nothere/revoke")
    assert status == 404 and _is_openai_error(body, "key_not_found")
    assert (await call(client, "POST", "/admin/workspaces/nope/keys", {}))[0] == 404


async def test_limits(client):
    await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    _, created = await call(client, "POST", "/admin/workspaces/acme/keys")
    await call(client, "GET", "/v1/models", headers={"Authorization": f"Bearer {created['key']}"})
    status, body = await call(client, "PATCH", "/admin/workspaces/acme/limits", {"rpm_limit": 60, "stream_limit": 3})
    assert status == 200 and (body["rpm_limit"], body["stream_limit"]) == (60, 3)
    await call(client, "GET", "/v1/models", headers={"Authorization": f"Bearer {created['key']}"})
    limits = client.app[appkeys.AUTH].principal_limits(body["id"])
    assert (limits.rpm_limit, limits.stream_limit) == (60, 3)
    status, body = await call(client, "PATCH", "/admin/workspaces/acme/limits", {"rpm_limit": None})
    assert status == 200 and (body["rpm_limit"], body["stream_limit"]) == (None, 3)
    for bad in ({"rpm_limit": 0}, {"stream_limit": "5"}, {"rpm_limit": True}, {"burst": 1}):
        status, body = await call(client, "PATCH", "/admin/workspaces/acme/limits", bad)
        assert status == 400 and body["error"]["param"] in ("rpm_limit", "stream_limit", "burst")


async def test_byok_key_is_stored_encrypted(client, tmp_path):
    await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    plaintext = "sk-proj-BYOKplaintext0123456789"
    status, body = await call(client, "PUT", "/admin/workspaces/acme/byok/openai", {"key": plaintext})
    assert status == 200 and body == {"object": "byok_key", "workspace": "acme", "provider": "openai", "stored": True}
    status, body = await call(client, "PUT", "/admin/workspaces/acme/byok/anthropic", {"key": plaintext})
    assert status == 400 and "mistral, openai" in body["error"]["message"]
    assert (await call(client, "PUT", "/admin/workspaces/nope/byok/openai", {"key": plaintext}))[0] == 404
    assert (await call(client, "PUT", "/admin/workspaces/acme/byok/openai", {"key": "two words"}))[0] == 400
    assert (await call(client, "GET", "/admin/workspaces/acme/byok"))[1]["data"] == ["openai"]
    assert (await call(client, "GET", "/admin/workspaces/acme"))[1]["byok_providers"] == ["openai"]
    store = client.app[appkeys.STORE]
    ws = await store.get_workspace("acme")
    blob = await store.get_byok_key(ws.id, "openai")
    assert decrypt_provider_key(MasterKey.from_base64(MASTER, "m"), ws.id, "openai", blob).reveal() == plaintext
    data = b"".join(p.read_bytes() for p in tmp_path.glob("okm.sqlite3*"))
    assert plaintext.encode() not in data


async def test_byok_without_master_key_is_refused(aiohttp_client, tmp_path):
    client = await _client(aiohttp_client, make_config(tmp_path, OKM_MASTER_KEY=None))
    await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    status, body = await call(client, "PUT", "/admin/workspaces/acme/byok/openai", {"key": "sk-x"})
    assert status == 503 and "OKM_MASTER_KEY" in body["error"]["message"] and "sk-x" not in str(body)


async def test_usage_summary(client):
    await call(client, "POST", "/admin/workspaces", {"name": "acme"})
    ws = await client.app[appkeys.STORE].get_workspace("acme")
    row = UsageRow("req-1", time.time(), ws.id, "k", "cheap", "cheap/gpt-5.4", "pool-a", "chat/completions", False,
                   200, "ok", prompt_tokens=7, completion_tokens=2, total_tokens=9, cached_input_tokens=3,
                   reasoning_tokens=1, cost_micros=42)
    await client.app[appkeys.STORE].write_usage([], [row])
    status, body = await call(client, "GET", "/admin/usage")
    assert status == 200 and body["data"] == [{
        "workspace": "acme", "lane": "cheap", "model": "cheap/gpt-5.4", "requests": 1, "errors": 0,
        "prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9, "estimated_requests": 0,
        "cached_input_tokens": 3, "reasoning_tokens": 1, "cost_micros": 42,
    }]
    assert body["since"] is None and body["total"]["total_tokens"] == 9
    status, body = await call(client, "GET", "/admin/usage?workspace=acme&since=2999-01-01")
    assert status == 200 and body["data"] == []
    status, body = await call(client, "GET", "/admin/usage?workspace=acme&since=2024-01-01")
    assert status == 200 and body["since"] == "2024-01-01" and body["total"]["requests"] == 1
    status, body = await call(client, "GET", "/admin/usage?since=yesterday")
    assert status == 400 and "YYYY-MM-DD" in body["error"]["message"]
    assert (await call(client, "GET", "/admin/usage?workspace=nope"))[0] == 404


async def test_pool_health_lists_accounts_with_state_and_reason(client):
    pool = client.app[appkeys.STATE].runtime.lanes.cheap.pool
    pool.report("pool-b", AttemptResult.RATE_LIMITED, 30)
    status, body = await call(client, "GET", "/admin/pool")
    assert status == 200
    by_name = {a["account"]: a for a in body["data"]}
    assert by_name["pool-a"]["state"] == "healthy" and by_name["pool-a"]["healthy"] is True
    assert by_name["pool-b"]["state"] == "cooling" and by_name["pool-b"]["healthy"] is False
    assert by_name["pool-b"]["reason"] and 0 < by_name["pool-b"]["retry_in_s"] <= 30
    status, body = await call(client, "GET", "/admin/pool", headers={})
    assert status == 401
