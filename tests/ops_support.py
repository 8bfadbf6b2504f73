"""Shared pieces for the operations tests: config files, keys in a fresh store, the fake upstream
answering as each request names it, and the gateway as an in-process app or as a real
`python -m proxy serve` subprocess (testkit.gateway; for signals, logs and exit status).

Upstream model names (testkit.profiles): `fast` answers at once; `slow-N-MS` streams N content
events MS ms apart. Upstream base paths: `/ok/v1` serves; `/limited/v1` answers every request with
429 (Retry-After 30).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from proxy.app import build_app
from proxy.config import load_config
from proxy.store import Store
from proxy.types import Secret
from testkit.gateway import GatewayProcess
from testkit.upstream import FakeUpstream, Profiled

PEPPER = "ops-test-pepper-value-0123456789"
ADMIN_TOKEN = "ops-admin-token-canary-5f1d2c"
POOL_KEY = "pool-account-key-canary-77aa31"
RESALE_KEY = "resale-provider-key-canary-9c02e4"
ENV = {"OKM_KEY_PEPPER": PEPPER, "OKM_ADMIN_TOKEN": ADMIN_TOKEN, "POOL_KEY": POOL_KEY, "RESALE_KEY": RESALE_KEY}
MODELS = ("fast", "slow-3-50", "slow-10-50", "slow-10-100", "slow-20-100", "slow-40-100", "slow-80-100")


# --- the fake upstream ------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def fake_upstream() -> AsyncIterator[str]:
    """The one fake upstream answering as each request names (testkit.profiles); yields its root URL."""
    async with FakeUpstream("ops", Profiled()) as up:
        yield up.root


# --- config and store -------------------------------------------------------------------------

def config_data(upstream: str, **sections: Any) -> dict[str, Any]:
    """A config whose Business lane (`resale/<model>`) and pool point at the fake upstream."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "store": {"path": "okm.sqlite3"},
        "limits": {"connect_timeout_s": 2, "first_byte_timeout_s": 5, "idle_timeout_s": 5},
        "providers": {"fake": {"base_url": f"{upstream}/ok/v1", "api_key_env": "RESALE_KEY"}},
        "lanes": {
            "cheap": {"pool": [{"name": "pool-ok", "base_url": f"{upstream}/ok/v1", "api_key_env": "POOL_KEY",
                                "models": list(MODELS)}]},
            "resale": {"models": {m: {"upstreams": [{"provider": "fake"}]} for m in MODELS}},
        },
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


def write_config(folder: Path, data: dict[str, Any], name: str = "gateway.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def make_keys(
    store_path: Path | str, *workspaces: str, limits: dict[str, dict[str, int]] | None = None
) -> dict[str, str]:
    """Create each workspace with one key (and optional per-workspace limits); returns name → key."""
    store = await Store.open(store_path)
    try:
        keys = {}
        for name in workspaces:
            await store.create_workspace(name)
            if limits and name in limits:
                await store.set_workspace_limits(name, **limits[name])
            _, key = await store.create_api_key(name, Secret(PEPPER))
            keys[name] = key.reveal()
        return keys
    finally:
        await store.close()


def usage_rows(store_path: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(store_path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM usage ORDER BY started_at")]


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when the labelled series does not exist yet)."""
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series, _, label_text = head.partition("{")
        if series != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if found == labels:
            return float(value)
    return 0.0


async def read_stream(response: aiohttp.ClientResponse) -> list[bytes]:
    """The `data:` payloads of an SSE answer, in order."""
    text = await response.read()
    return [line[6:] for line in text.split(b"\n") if line.startswith(b"data: ")]


# --- the gateway, in process ------------------------------------------------------------------

@contextlib.asynccontextmanager
async def app_gateway(config_path: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """build_app on 127.0.0.1:0 with the runner options `serve` uses; yields (url, app)."""
    app = build_app(load_config(config_path, environ=ENV))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


# --- the gateway, as a process ----------------------------------------------------------------

def process_gateway(config_path: Path, notify_socket: Path | None = None,
                    extra_env: dict[str, str] | None = None, workers: int | str | None = None) -> GatewayProcess:
    """`python -m proxy serve --config …` with this file's secrets in its environment (use `async with`).

    Ready once it logs `serving on` (no /readyz probe, so request counts stay the test's own).
    """
    return GatewayProcess(config_path, {**ENV, **(extra_env or {})}, workers=workers, notify_socket=notify_socket,
                          readyz=False)
