"""Config reload (SIGHUP): read and validate the file, build a new Runtime, check it against the
store, then swap it in with one assignment. An invalid file changes nothing; requests in flight
keep the Runtime they started with. It never restarts listeners or reopens the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy import appkeys
from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.lanes.secret_guard import operator_secrets
from proxy.runtime import Runtime
from proxy.startup_checks import check_master_key
from proxy.telemetry.logs import set_known_secrets
from proxy.workspaces.crypto import MasterKeyError

log = logging.getLogger("okm.reload")

# Settings bound to sockets, the store or the upstream session when the process starts.
RESTART_ONLY: tuple[tuple[str, Callable[[Config], Any]], ...] = (
    ("listen", lambda c: c.listen),
    ("metrics.listen", lambda c: c.metrics_listen),
    ("store", lambda c: c.store_url),
    ("key_pepper_env (its value)", lambda c: c.key_pepper),
    ("limits.connect_timeout_s", lambda c: c.limits.connect_timeout_s),
    ("limits.upstream_connections", lambda c: c.limits.upstream_connections),
    ("limits.client_header_timeout_s", lambda c: c.limits.client_header_timeout_s),
)


@dataclass(frozen=True, slots=True)
class Reload:
    ok: bool
    message: str  # the bad field's path and reason when refused
    restart_needed: tuple[str, ...] = ()


def restart_only_changes(old: Config, new: Config) -> tuple[str, ...]:
    return tuple(name for name, get in RESTART_ONLY if get(old) != get(new))


async def reload_config(app: web.Application) -> Reload:
    """Reload the running config file; on any error keep the current Runtime and say why."""
    state, metrics = app[appkeys.STATE], app[appkeys.METRICS]
    old: Config = state.runtime.config
    try:
        new = load_config(old.source)
        runtime = Runtime.build(new)
        await check_master_key(app[appkeys.STORE], runtime)
    except (ConfigError, MasterKeyError) as exc:
        metrics.config_reloads.labels("failed").inc()
        log.error("config reload refused, still serving the previous config: %s", exc)
        return Reload(False, str(exc))
    state.runtime = runtime  # the swap: new requests see it, running ones keep theirs
    app[appkeys.UPSTREAM].limits = new.limits  # per-attempt timeouts apply to the next attempt
    logging.getLogger().setLevel(new.log.level.upper())
    set_known_secrets(operator_secrets(new))
    metrics.config_reloads.labels("ok").inc()
    pending = restart_only_changes(old, new)
    for name in pending:
        log.warning("config reload: %s changed; it takes effect only after a restart", name)
    log.info(
        "config reloaded from %s (%d pool accounts, %d Business models, %d BYOK providers)",
        new.source, len(new.cheap_pool), len(new.resale_models), len(new.byok_providers),
    )
    return Reload(True, "reloaded", pending)
