"""Config validation over a table of bad files: every refusal starts with the path of the bad
field. Pure loading from a temporary file; no event loop."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_config
from proxy.errors import ConfigError

BASE: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 0},
    "store": {"path": "okm.sqlite3"},
    "providers": {"up": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "UP_KEY"}, "mock": {"type": "mock"}},
    "lanes": {
        "cheap": {"pool": [{"name": "a", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "POOL_KEY",
                            "weight": 1, "models": ["m"]}]},
        "resale": {"models": {"m": {"upstreams": [{"provider": "up"}]}}},
        "byok": {"providers": {"openai": {"base_url": "https://api.openai.com/v1", "models": ["m"]}}},
    },
}
ENV = {"OKM_KEY_PEPPER": "pepper-0123456789abcdef", "UP_KEY": "sk-up-01234567", "POOL_KEY": "sk-pool-0123456"}
Change = Callable[[dict[str, Any]], None]


def _load(tmp_path: Path, change: Change) -> None:
    data = copy.deepcopy(BASE)
    change(data)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    load_config(path, ENV)


def _pool(d: dict[str, Any]) -> dict[str, Any]:
    account: dict[str, Any] = d["lanes"]["cheap"]["pool"][0]
    return account


def test_the_base_config_loads(tmp_path: Path) -> None:
    _load(tmp_path, lambda d: None)


BAD: dict[str, tuple[Change, str]] = {
    "unknown top-level key": (lambda d: d.update(extra=1), "extra: unknown key"),
    "port out of range": (lambda d: d["listen"].update(port=70000), "listen.port: must be <= 65535"),
    "unknown lane": (lambda d: d["lanes"].update(chepa={}), "lanes.chepa: unknown key"),
    "zero weight": (lambda d: _pool(d).update(weight=0), "lanes.cheap.pool[0].weight: must be > 0"),
    "account without models": (lambda d: _pool(d).update(models=[]), "lanes.cheap.pool[0].models: must list"),
    "account without name": (lambda d: _pool(d).update(name=""), "lanes.cheap.pool[0].name: must be a non-empty"),
    "duplicate account": (lambda d: d["lanes"]["cheap"]["pool"].append(dict(_pool(d))),
                          "lanes.cheap.pool[1].name: duplicate pool account name 'a'"),
    "undefined provider": (lambda d: d["lanes"]["resale"]["models"]["m"]["upstreams"][0].update(provider="nope"),
                           "lanes.resale.models.m.upstreams[0].provider: names undefined provider 'nope'"),
    "provider URL scheme": (lambda d: d["providers"]["up"].update(base_url="ftp://x"),
                            "providers.up.base_url: must be an http(s) URL"),
    "provider type": (lambda d: d["providers"]["up"].update(type="grpc"), "providers.up.type: must be one of"),
    "secret variable unset": (lambda d: d["providers"]["up"].update(api_key_env="NOPE_KEY"),
                              "providers.up.api_key_env: environment variable NOPE_KEY is not set"),
    "BYOK base URL": (lambda d: d["lanes"]["byok"]["providers"]["openai"].update(base_url="nope"),
                      "lanes.byok.providers.openai.base_url: must be an http(s) URL"),
    "limit below 1": (lambda d: d.update(limits={"max_body_bytes": 0}), "limits.max_body_bytes: must be >= 1"),
    "limit not a number": (lambda d: d.update(limits={"idle_timeout_s": "fast"}),
                           "limits.idle_timeout_s: must be a number"),
    "unknown limit": (lambda d: d.update(limits={"speed": 1}), "limits.speed: unknown key"),
    "pool policy share": (lambda d: d.update(pool={"max_ejected_share": 2}), "pool.max_ejected_share: must be <= 1.0"),
    "rate limit": (lambda d: d.update(rate_limits={"requests_per_minute": -1}),
                   "rate_limits.requests_per_minute: must be >= 1"),
    "log level": (lambda d: d.update(log={"level": "loud"}), "log.level: must be one of"),
    "event loop": (lambda d: d.update(event_loop="trio"), "event_loop: must be one of auto, asyncio, uvloop"),
    "drain deadline": (lambda d: d.update(drain={"deadline_s": -1}), "drain.deadline_s: must be >= 0.0"),
    "store path and url": (lambda d: d["store"].update(url="sqlite:///x.db"),
                           "store.url: give store.url or store.path, not both"),
}


@pytest.mark.parametrize(("change", "message"), BAD.values(), ids=BAD.keys())
def test_a_bad_field_is_refused_naming_its_path(tmp_path: Path, change: Change, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, change)
    assert str(refused.value).startswith(message)
