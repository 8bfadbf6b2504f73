"""YAML config → frozen, validated dataclasses, resolved once at load.

Every error names the field path (`lanes.cheap.pool[1].weight: must be > 0`). Secrets are read
here and only here, from the environment variables the file names; the file never holds them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from proxy.billing.prices import DISABLED, PriceBook, read_price_book
from proxy.config_console import CONSOLE_OFF, ConsoleConfig, read_console
from proxy.config_reader import Reader, read_env_file
from proxy.errors import ConfigError
from proxy.store_url import StoreUrl, StoreUrlError, parse_store_url
from proxy.types import Secret

PROVIDER_KINDS = ("openai", "mock")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
DEFAULT_RETENTION_DAYS = 400  # usage rows; older ones live on as daily totals (usage_daily)
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_upload_bytes: int = 25 * 1024 * 1024  # multipart bodies (image edits, audio uploads)
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 120.0
    idle_timeout_s: float = 120.0
    request_deadline_s: float = 300.0  # bounds failover before the first byte, not a healthy stream
    max_event_bytes: int = 8 * 1024 * 1024
    max_concurrent_requests: int = 2000
    client_body_timeout_s: float = 30.0
    client_stall_timeout_s: float = 120.0  # a stream whose client reads nothing this long is dropped
    upstream_connections: int = 1000
    client_header_timeout_s: float = 15.0  # also the idle keep-alive timeout (restart to change)
    max_workspace_share: float = 0.5  # of max_concurrent_requests one workspace may hold (body phase included)
    max_json_containers: int = 50_000  # objects + arrays in one request body
    max_stream_s: float = 3600.0  # longest a relayed stream may run (keep-alive comments do not extend it)


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    max_attempts: int = 3
    cooldown_s: float = 30.0
    eject_base_s: float = 5.0
    eject_max_s: float = 300.0
    max_ejected_share: float = 0.5


@dataclass(frozen=True, slots=True)
class RateLimits:
    requests_per_minute: int | None = None
    concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Provider:
    """An operator-managed upstream endpoint (Business lane)."""

    name: str
    kind: str
    base_url: str
    api_key: Secret | None
    responses_stream: bool = True


@dataclass(frozen=True, slots=True)
class PoolAccount:
    """One operator account in the Budget (cheap/*) pool."""

    name: str
    kind: str
    base_url: str
    api_key: Secret | None
    weight: float
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResaleUpstream:
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class ByokProvider:
    """A provider tenants may bring their own key for; the base URL only ever comes from here."""

    name: str
    kind: str
    base_url: str
    models: tuple[str, ...]
    responses_stream: bool = True




@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    listen: Listen
    metrics_listen: Listen | None
    store_url: StoreUrl
    admin_token: Secret | None
    admin_token_env: str
    key_pepper: Secret
    byok_master_key: Secret | None
    byok_master_key_env: str
    limits: Limits
    pool_policy: PoolPolicy
    rate_limits: RateLimits
    drain_deadline_s: float
    log: LogConfig
    providers: Mapping[str, Provider]
    cheap_pool: tuple[PoolAccount, ...]
    resale_models: Mapping[str, tuple[ResaleUpstream, ...]]
    byok_providers: Mapping[str, ByokProvider]
    drain_unready_delay_s: float = 0.0  # /readyz fails this long before the listener closes
    event_loop: str = "auto"  # auto: uvloop when installed, else asyncio's own
    byok_next_master_key: Secret | None = None  # during a rotation: also accepted for stored keys
    byok_next_master_key_env: str = "OKM_NEW_MASTER_KEY"
    usage_retention_days: int = DEFAULT_RETENTION_DAYS
    billing: PriceBook = DISABLED
    console: ConsoleConfig = CONSOLE_OFF
    workers: int = 1  # worker processes on the listen port (proxy/supervisor.py when > 1)

    def secrets(self) -> tuple[Secret, ...]:
        """Every secret value this config resolved: the one list that log redaction and the
        masking of upstream errors read."""
        found = [self.key_pepper, self.admin_token, self.byok_master_key, self.byok_next_master_key,
                 self.store_url.password]
        found += [a.api_key for a in self.cheap_pool] + [p.api_key for p in self.providers.values()]
        return tuple(s for s in found if s is not None)

    @property
    def store_path(self) -> Path:
        """The SQLite file (only meaningful when the store is SQLite)."""
        if self.store_url.path is None:
            raise ConfigError(f"store: {self.store_url.display} is not a SQLite file")
        return self.store_url.path


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve one config file; raise ConfigError naming the bad field."""
    source = Path(path).resolve()
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    root = Reader(raw if raw is not None else {}, "", source.parent)
    env = dict(environ if environ is not None else os.environ)
    env_file = root.optional_path("env_file")
    if env_file is not None and env_file.exists():
        env = {**read_env_file(env_file), **env}  # the real environment wins over the file
    root.env = env
    config = _build(root, source, env)
    root.reject_unknown()
    return config


def parse_workers(value: object, where: str = "workers") -> int:
    """`auto` (the CPU count) or a whole number from 1 to MAX_WORKERS."""
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"{where}: must be 'auto' or a whole number from 1 to {MAX_WORKERS}")
    return value


def _store_url(store: Reader) -> StoreUrl:
    if store.has("url") and store.has("path"):
        store.fail("url", "give store.url or store.path, not both")
    if store.has("url"):
        try:
            url = parse_store_url(store.string("url"), store.base_dir)
        except StoreUrlError as exc:
            store.fail("url", str(exc))
    else:
        url = StoreUrl.sqlite(store.path("path", default="var/okm.sqlite3"))
    if store.has("password_env"):
        if url.dsn is None:
            store.fail("password_env", "only a postgresql:// store takes a password")
        url = url.with_password(store.required_secret_named("password_env", store.string("password_env")))
    return url


def _build(root: Reader, source: Path, env: dict[str, str]) -> Config:
    listen = _listen(root.section("listen"), Listen("127.0.0.1", 8080))
    metrics = root.section("metrics")
    metrics_listen = _listen(metrics.section("listen"), None) if metrics.has("listen") else None
    metrics.reject_unknown()
    store = root.section("store")
    store_url = _store_url(store)
    retention_days = store.integer("usage_retention_days", default=DEFAULT_RETENTION_DAYS, minimum=1)
    store.reject_unknown()
    admin = root.section("admin")
    admin_env = admin.string("token_env", default="OKM_ADMIN_TOKEN")
    admin.reject_unknown()
    pepper_env = root.string("key_pepper_env", default="OKM_KEY_PEPPER")
    master_env = root.string("byok_master_key_env", default="OKM_MASTER_KEY")
    next_master_env = root.string("byok_next_master_key_env", default="OKM_NEW_MASTER_KEY")
    drain = root.section("drain")
    drain_deadline = drain.number("deadline_s", default=30.0, minimum=0.0)
    unready_delay = drain.number("unready_delay_s", default=0.0, minimum=0.0)
    drain.reject_unknown()
    providers = _providers(root.section("providers"))
    lanes = root.section("lanes")
    pool = _pool(lanes.section("cheap"))
    resale = _resale(lanes.section("resale"), providers)
    byok = _byok(lanes.section("byok"))
    lanes.reject_unknown()
    routed = {f"cheap/{m}" for a in pool for m in a.models} | {f"resale/{m}" for m in resale}
    billing = read_price_book(root.section("billing"), routed)
    return Config(
        source=source,
        listen=listen,
        metrics_listen=metrics_listen,
        store_url=store_url,
        usage_retention_days=retention_days,
        admin_token=root.optional_secret_named(admin_env),
        admin_token_env=admin_env,
        key_pepper=root.required_secret_named("key_pepper_env", pepper_env),
        byok_master_key=root.optional_secret_named(master_env),
        byok_master_key_env=master_env,
        limits=_limits(root.section("limits")),
        pool_policy=_pool_policy(root.section("pool")),
        rate_limits=_rate_limits(root.section("rate_limits")),
        drain_deadline_s=drain_deadline,
        log=_log(root.section("log")),
        providers=MappingProxyType(providers),
        cheap_pool=pool,
        resale_models=MappingProxyType(resale),
        byok_providers=MappingProxyType(byok),
        drain_unready_delay_s=unready_delay,
        event_loop=root.choice("event_loop", EVENT_LOOPS, default="auto"),
        workers=parse_workers(root._get("workers", 1)),
        byok_next_master_key=root.optional_secret_named(next_master_env),
        byok_next_master_key_env=next_master_env,
        billing=billing,
        console=read_console(root.section("console")),
    )


def _listen(r: Reader, default: Listen | None) -> Listen:
    fallback = default or Listen("127.0.0.1", 0)
    listen = Listen(r.string("host", default=fallback.host), r.integer("port", default=fallback.port, minimum=0, maximum=65535))
    r.reject_unknown()
    return listen


def _limits(r: Reader) -> Limits:
    defaults = Limits()
    values: dict[str, Any] = {}
    for name in (f.name for f in fields(Limits)):
        current = getattr(defaults, name)
        if isinstance(current, int) and not isinstance(current, bool):
            values[name] = r.integer(name, default=current, minimum=1)
        else:
            values[name] = r.number(name, default=current, minimum=0.001)
    r.reject_unknown()
    return Limits(**values)


def _pool_policy(r: Reader) -> PoolPolicy:
    policy = PoolPolicy(
        max_attempts=r.integer("max_attempts", default=3, minimum=1),
        cooldown_s=r.number("cooldown_s", default=30.0, minimum=0.0),
        eject_base_s=r.number("eject_base_s", default=5.0, minimum=0.0),
        eject_max_s=r.number("eject_max_s", default=300.0, minimum=0.0),
        max_ejected_share=r.number("max_ejected_share", default=0.5, minimum=0.0, maximum=1.0),
    )
    r.reject_unknown()
    return policy


def _rate_limits(r: Reader) -> RateLimits:
    limits = RateLimits(
        requests_per_minute=r.optional_integer("requests_per_minute", minimum=1),
        concurrent_streams=r.optional_integer("concurrent_streams", minimum=1),
    )
    r.reject_unknown()
    return limits


def _log(r: Reader) -> LogConfig:
    level = r.choice("level", ("debug", "info", "warning", "error"), default="info")
    log = LogConfig(level=level, access_log=r.boolean("access_log", default=True))
    r.reject_unknown()
    return log


def _endpoint(r: Reader) -> tuple[str, str, Secret | None]:
    """The kind, base URL and key of an upstream entry; `mock` needs neither URL nor key."""
    kind = r.choice("type", PROVIDER_KINDS, default="openai")
    if kind == "mock":
        return kind, r.string("base_url", default="mock://local"), r.optional_secret("api_key_env")
    return kind, r.url("base_url"), r.required_secret("api_key_env")


def _providers(r: Reader) -> dict[str, Provider]:
    providers = {}
    for name, entry in r.entries():
        kind, base_url, key = _endpoint(entry)
        providers[name] = Provider(name, kind, base_url, key, entry.boolean("responses_stream", default=True))
        entry.reject_unknown()
    return providers


def _pool(r: Reader) -> tuple[PoolAccount, ...]:
    accounts: list[PoolAccount] = []
    for entry in r.items("pool"):
        name = entry.string("name")
        if any(a.name == name for a in accounts):
            entry.fail("name", f"duplicate pool account name '{name}'")
        kind, base_url, key = _endpoint(entry)
        weight = entry.number("weight", default=1.0, minimum=None)
        if weight <= 0:
            entry.fail("weight", "must be > 0")
        models = entry.string_list("models", required=True)
        accounts.append(PoolAccount(name, kind, base_url, key, weight, models))
        entry.reject_unknown()
    r.reject_unknown()
    return tuple(accounts)


def _resale(r: Reader, providers: Mapping[str, Provider]) -> dict[str, tuple[ResaleUpstream, ...]]:
    models: dict[str, tuple[ResaleUpstream, ...]] = {}
    for model, entry in r.section("models").entries():
        upstreams = []
        for up in entry.items("upstreams", required=True):
            provider = up.string("provider")
            if provider not in providers:
                known = ", ".join(sorted(providers)) or "none defined"
                up.fail("provider", f"names undefined provider '{provider}' (providers: {known})")
            upstreams.append(ResaleUpstream(provider, up.string("model", default=model)))
            up.reject_unknown()
        models[model] = tuple(upstreams)
        entry.reject_unknown()
    r.reject_unknown()
    return models


def _byok(r: Reader) -> dict[str, ByokProvider]:
    providers = {}
    for name, entry in r.section("providers").entries():
        if "/" in name:
            entry.fail("", "a BYOK provider name cannot contain '/'")
        kind = entry.choice("type", PROVIDER_KINDS, default="openai")
        base_url = entry.string("base_url", default="mock://local") if kind == "mock" else entry.url("base_url")
        providers[name] = ByokProvider(
            name, kind, base_url, entry.string_list("models"), entry.boolean("responses_stream", default=True)
        )
        entry.reject_unknown()
    r.reject_unknown()
    return providers
