"""Integration fixtures: a real gateway on 127.0.0.1 port 0 whose lanes point at fake upstreams.

`gateway` is a factory: each call writes a config YAML under tmp_path, creates workspaces, keys
and BYOK keys in a fresh SQLite store, starts the app with `handler_cancellation=True` (as
`serve` does) and returns a `Gateway` handle. Everything is torn down at the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import yaml
from aiohttp import web

from proxy import appkeys
from proxy.app import build_app
from proxy.config import Config, load_config
from proxy.store import Store
from proxy.workspaces.crypto import MasterKey, encrypt_provider_key, generate_master_key
from testkit.upstream import FakeUpstream
from tests.leaks import add_task_check, no_leaked_tasks, no_leaks  # noqa: F401  # reason: fixtures, registered by importing them here
from tests.pg import fresh_schema

MODEL = "gpt-test"
EMBED_MODEL = "text-embedding-test"
NOSTREAM_MODEL = "gpt-nostream"  # resale model served by a `responses_stream: false` provider
PEPPER = "test-pepper-not-a-secret"
FAST_LIMITS = {"max_body_bytes": 65536, "connect_timeout_s": 1, "first_byte_timeout_s": 2, "idle_timeout_s": 1,
               "request_deadline_s": 5}
DEFAULT_WORKSPACES: Mapping[str, Mapping[str, str] | None] = {"ws": {"openai": "sk-byok-ws-openai-0000"}}


def pool_key(i: int) -> str:
    return f"sk-pool{i}-operatorsecret{i:04d}"


def resale_key(i: int) -> str:
    return f"sk-resale{i}-operatorsecret{i:04d}"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        return self.json()["error"]


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:PORT
    base_url: str  # url + "/v1", what an SDK is given
    keys: dict[str, str]  # workspace name → its API key
    session: aiohttp.ClientSession  # raw HTTP, no auth headers preset
    store_path: Path
    config: Config
    app: web.Application
    master: MasterKey
    pool: list[FakeUpstream]
    resale: list[FakeUpstream]
    nostream: FakeUpstream  # provider "cheapai" (responses_stream: false)
    byok: dict[str, FakeUpstream]
    env: dict[str, str]  # the environment the config was loaded with (its secrets)
    client: openai.AsyncOpenAI = field(init=False)  # the official SDK, as the first workspace
    _clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = self.sdk(next(iter(self.keys))) if self.keys else self._track(
            openai.AsyncOpenAI(base_url=self.base_url, api_key="none", max_retries=0, timeout=10))

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()
        await self.session.close()

    def _track(self, client: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
        self._clients.append(client)
        return client

    @property
    def key(self) -> str:
        return next(iter(self.keys.values()))

    @property
    def upstreams(self) -> list[FakeUpstream]:
        return [*self.pool, *self.resale, self.nostream, *self.byok.values()]

    def auth(self, workspace: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[workspace] if workspace else self.key}"}

    def sdk(self, workspace: str) -> openai.AsyncOpenAI:
        """An SDK client with that workspace's key (closed at teardown)."""
        return self._track(
            openai.AsyncOpenAI(base_url=self.base_url, api_key=self.keys[workspace], max_retries=0, timeout=10))

    async def post(self, path: str, json: Any = None, *, data: bytes | None = None,
                   headers: Mapping[str, str] | None = None, workspace: str | None = None) -> Answer:
        """POST to the gateway with the workspace's key and read the whole answer."""
        body = data if data is not None else orjson.dumps(json)
        sent = {"Content-Type": "application/json", **self.auth(workspace), **(headers or {})}
        async with self.session.post(self.url + path, data=body, headers=sent) as resp:
            return Answer(resp.status, dict(resp.headers), await resp.read())

    async def get(self, path: str, *, authed: bool = True) -> Answer:
        async with self.session.get(self.url + path, headers=self.auth() if authed else {}) as resp:
            return Answer(resp.status, dict(resp.headers), await resp.read())

    async def metrics(self) -> str:
        return (await self.get("/metrics", authed=False)).body.decode()

    async def usage_rows(self, count: int | None = None, within_s: float = 2.0) -> list[dict[str, Any]]:
        """Usage rows once every row is final (and at least `count` exist), oldest first."""
        store = self.app[appkeys.STORE]
        columns = ("request_id", "workspace_id", "lane", "public_model", "upstream", "endpoint", "stream", "status",
                   "outcome", "prompt_tokens", "completion_tokens", "total_tokens", "tokens_estimated", "attempts")
        deadline = time.monotonic() + within_s
        while True:
            rows = [dict(zip(columns, r, strict=True)) for r in
                    await store.fetchall(f"SELECT {', '.join(columns)} FROM usage ORDER BY started_at, rowid")]
            settled = all(r["outcome"] != "in_flight" for r in rows) and len(rows) >= (count or 0)
            if settled or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.01)


def _config(tmp_path: Path, pool: list[FakeUpstream], weights: tuple[float, ...], resale: list[FakeUpstream],
            nostream: FakeUpstream, byok: dict[str, FakeUpstream], limits: Mapping[str, Any],
            pool_policy: Mapping[str, Any], billing: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    env = {"OKM_KEY_PEPPER": PEPPER, "OKM_MASTER_KEY": generate_master_key(), "OKM_ADMIN_TOKEN": "admin-test-token",
           "CHEAPAI_KEY": "sk-cheapai-operatorsecret"}
    providers: dict[str, Any] = {"cheapai": {"base_url": nostream.url, "api_key_env": "CHEAPAI_KEY",
                                             "responses_stream": False}}
    for i, fake in enumerate(resale):
        env[f"RESALE_{i}_KEY"] = resale_key(i)
        providers[f"resale-{i}"] = {"base_url": fake.url, "api_key_env": f"RESALE_{i}_KEY"}
    accounts = []
    for i, fake in enumerate(pool):
        env[f"POOL_{i}_KEY"] = pool_key(i)
        accounts.append({"name": f"pool-{i}", "base_url": fake.url, "api_key_env": f"POOL_{i}_KEY",
                         "weight": weights[i] if i < len(weights) else 1, "models": [MODEL, EMBED_MODEL]})
    upstreams = [{"provider": f"resale-{i}"} for i in range(len(resale))]
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(tmp_path / "okm.sqlite3")},
        "log": {"level": "warning", "access_log": False},
        "limits": {**FAST_LIMITS, **limits},
        "pool": dict(pool_policy),
        "providers": providers,
        "lanes": {
            "cheap": {"pool": accounts},
            "resale": {"models": {MODEL: {"upstreams": upstreams}, EMBED_MODEL: {"upstreams": upstreams},
                                  NOSTREAM_MODEL: {"upstreams": [{"provider": "cheapai", "model": MODEL}]}}},
            "byok": {"providers": {name: {"base_url": fake.url, "models": [MODEL]} for name, fake in byok.items()}},
        },
    }
    if billing is not None:
        config["billing"] = dict(billing)
    return config, env


async def _create_workspaces(config: Config, master: MasterKey,
                             workspaces: Mapping[str, Mapping[str, str] | None]) -> dict[str, str]:
    """name → key. A None value leaves BYOK off; a mapping enables it and stores those provider keys."""
    store = await Store.open(config.store_path)
    keys = {}
    try:
        for name, byok_keys in workspaces.items():
            workspace = await store.create_workspace(name)
            _, key = await store.create_api_key(name, config.key_pepper)
            keys[name] = key.reveal()
            if byok_keys is not None:
                await store.set_byok_enabled(name, True)
                for provider, secret in byok_keys.items():
                    blob = encrypt_provider_key(master, workspace.id, provider, secret)
                    await store.put_byok_key(workspace.id, provider, blob, master.key_id)
    finally:
        await store.close()
    return keys


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """`await gateway(pool=2, resale=1, byok=("openai", "acme"), workspaces=..., limits=..., pool_weights=...,
    billing=..., extra={"console": {...}})` (billing: the config's `billing:` section; extra: more top-level
    config sections)."""
    stack = contextlib.AsyncExitStack()

    async def fake(name: str) -> FakeUpstream:
        upstream = await FakeUpstream(name).start()
        stack.push_async_callback(upstream.stop)
        return upstream

    async def make(*, pool: int = 2, resale: int = 1, byok: tuple[str, ...] = ("openai", "acme"),
                   workspaces: Mapping[str, Mapping[str, str] | None] = DEFAULT_WORKSPACES,
                   limits: Mapping[str, Any] | None = None, pool_policy: Mapping[str, Any] | None = None,
                   pool_weights: tuple[float, ...] = (), billing: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> Gateway:
        pool_fakes = [await fake(f"pool-{i}") for i in range(pool)]
        resale_fakes = [await fake(f"resale-{i}") for i in range(resale)]
        nostream = await fake("cheapai")
        byok_fakes = {name: await fake(f"byok-{name}") for name in byok}
        raw, env = _config(tmp_path, pool_fakes, pool_weights, resale_fakes, nostream, byok_fakes, limits or {},
                           pool_policy or {}, billing)
        raw.update(extra or {})  # further top-level config sections, e.g. console
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        config = load_config(path, environ=env)
        master = MasterKey.from_base64(env["OKM_MASTER_KEY"], "OKM_MASTER_KEY")
        keys = await _create_workspaces(config, master, workspaces)
        app = build_app(config)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5,
                               auto_decompress=False)  # as proxy.server runs it
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        gw = Gateway(url, url + "/v1", keys, session, config.store_path, config, app, master,
                     pool_fakes, resale_fakes, nostream, byok_fakes, env)
        stack.push_async_callback(gw.aclose)
        return gw

    async with stack:
        yield make


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store location on each backend: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'okm.sqlite3'}"
        return
    async with fresh_schema() as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    add_task_check(items)


@pytest.fixture
async def visitors() -> AsyncIterator[Callable[[Any], Any]]:
    """Console browsers-without-a-browser (cookie-keeping HTTP clients), each closed after the test."""
    from tests.console_support import ConsoleClient  # it imports this module: a top-level import would cycle

    made: list[ConsoleClient] = []

    def make(gw: Any) -> ConsoleClient:
        made.append(ConsoleClient(gw))
        return made[-1]

    yield make
    for client in made:
        await client.close()
