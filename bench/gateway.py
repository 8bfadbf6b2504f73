"""The gateway as production runs it, for the bench: a config file pointing every lane at the fake
upstream, a fresh store with one workspace and key, auth, usage, metrics and the access log on.

It writes only inside the run folder it is given; the key it makes is a throwaway.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import yaml

from proxy.store import Store
from proxy.types import Secret

WORKSPACE = "bench"
UPSTREAM_KEY_ENV = "OKM_BENCH_UPSTREAM_KEY"


@dataclass(frozen=True, slots=True)
class Profiles:
    """Stream shapes served by the fake upstream, encoded in the provider's base URL path."""

    fast_events: int
    slow_events: int
    slow_ms: int

    @property
    def fast_prefix(self) -> str:
        return f"/ev{self.fast_events}/ms0"

    @property
    def slow_prefix(self) -> str:
        return f"/ev{self.slow_events}/ms{self.slow_ms}"


@dataclass(frozen=True, slots=True)
class GatewaySetup:
    config: Path
    env: dict[str, str]
    key: str
    port: int
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `--billing`: every model priced and the workspace prepaid with ample credit, so each request takes
# a hold before its upstream call and is charged with its usage row (docs/billing.md).
BILLING = {"enabled": True, "prices": {"cheap/*": {"input": "0.50", "cached_input": "0.05", "output": "2.00"},
                                       "resale/*": {"input": "1.25", "cached_input": "0.125", "output": "10.00"}}}
BENCH_CREDIT_MICROS = 10**15


def config_data(port: int, upstream_port: int, profiles: Profiles, billing: bool = False, workers: int = 1,
                store_url: str | None = None) -> dict:
    base = f"http://127.0.0.1:{upstream_port}"
    fast, slow = base + profiles.fast_prefix + "/v1", base + profiles.slow_prefix + "/v1"
    return {
        **({"billing": BILLING} if billing else {}),
        "listen": {"host": "127.0.0.1", "port": port},
        "store": {"url": store_url} if store_url else {"path": "store.sqlite3"},
        "workers": workers,
        "key_pepper_env": "OKM_KEY_PEPPER",
        "drain": {"deadline_s": 3},
        "log": {"level": "info", "access_log": True},
        "providers": {
            "bench-fast": {"base_url": fast, "api_key_env": UPSTREAM_KEY_ENV},
            "bench-slow": {"base_url": slow, "api_key_env": UPSTREAM_KEY_ENV},
        },
        "lanes": {
            "cheap": {"pool": [
                {"name": "pool-fast", "base_url": fast, "api_key_env": UPSTREAM_KEY_ENV, "models": ["bench-fast"]},
                {"name": "pool-slow", "base_url": slow, "api_key_env": UPSTREAM_KEY_ENV, "models": ["bench-slow"]},
            ]},
            "resale": {"models": {
                "bench-fast": {"upstreams": [{"provider": "bench-fast"}]},
                "bench-slow": {"upstreams": [{"provider": "bench-slow"}]},
            }},
        },
    }


async def _issue_key(store_path: Path | str, pepper: str, billing: bool) -> str:
    store = await Store.open(store_path)
    try:
        await store.create_workspace(WORKSPACE)
        _, key = await store.create_api_key(WORKSPACE, Secret(pepper, "bench pepper"), name="bench")
        if billing:
            await store.add_ledger_entry(WORKSPACE, BENCH_CREDIT_MICROS, "topup", "bench credit", "bench")
    finally:
        await store.close()
    return key.reveal()


def prepare(run_dir: Path, upstream_port: int, profiles: Profiles, billing: bool = False, workers: int = 1,
            store_url: str | None = None) -> GatewaySetup:
    port = free_port()
    config = run_dir / "gateway.yaml"
    data = config_data(port, upstream_port, profiles, billing, workers, store_url)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    pepper = secrets.token_urlsafe(32)
    env = {**os.environ, "OKM_KEY_PEPPER": pepper, UPSTREAM_KEY_ENV: "sk-bench-" + secrets.token_hex(8)}
    key = asyncio.run(_issue_key(store_url or run_dir / "store.sqlite3", pepper, billing))
    return GatewaySetup(config, env, key, port, run_dir / "gateway.log")
