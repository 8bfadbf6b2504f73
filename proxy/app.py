"""`build_app(config)`: the aiohttp application, its typed state, and the resources it owns
(store, usage writer, authenticator, upstream session), each opened and closed in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from proxy import appkeys
from proxy.admin.api import setup_admin_routes
from proxy.admin.billing_api import setup_billing_routes
from proxy.billing import holds
from proxy.config import Config
from proxy.http.admission import close_when_draining
from proxy.http.handlers import add_routes
from proxy.http.limits import Limiter
from proxy.http.middleware import request_context
from proxy.lanes.shared_health import SharedPoolHealth
from proxy.relay.drain import Drain
from proxy.relay.outgoing import mask_outgoing
from proxy.relay.stream_watch import STREAM_WATCH, SWEEP_EVERY_S, StreamWatch
from proxy.relay.upstream import UpstreamClient
from proxy.runtime import Runtime, State
from proxy.startup_checks import check_master_key
from proxy.store import Store
from proxy.store.instances import InstanceLease, new_instance_id
from proxy.store.retention import UsageRetention
from proxy.store.rows import StoreError
from proxy.store.usage_writer import UsageRecorder
from proxy.telemetry.accesslog import AccessLog
from proxy.telemetry.live_metrics import LiveMetrics
from proxy.telemetry.metrics import Metrics, metrics_handler
from proxy.types import Phase
from proxy.workspaces.auth import Authenticator
from proxy.workspaces.byok import ByokVault
from proxy.workspaces.shared_limits import SharedLimits

ADMIN_MAX_BODY = 1024 * 1024
log = logging.getLogger("okm.app")


def build_app(config: Config, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=ADMIN_MAX_BODY)
    app[appkeys.STATE] = State(Runtime.build(config))
    app[appkeys.METRICS] = metrics or Metrics()
    app[appkeys.LIMITER], app[appkeys.DRAIN] = Limiter(), Drain()
    app[appkeys.METRICS].on_scrape(LiveMetrics(app))
    app.on_response_prepare.append(answer_hook(app))
    app[appkeys.UPSTREAM] = UpstreamClient(config.limits)
    app[appkeys.ACCESS_LOG] = AccessLog()
    app[holds.OWNER] = new_instance_id()  # random per start: the owner of this process's rows and holds
    app.cleanup_ctx.append(_access_log_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_retention_ctx)  # after the store: stopped before it closes
    app[STREAM_WATCH] = StreamWatch()
    app.cleanup_ctx.append(_stream_watch_ctx)  # needs the authenticator
    app.cleanup_ctx.append(_upstream_ctx)
    add_routes(app)
    setup_admin_routes(app)
    setup_billing_routes(app)
    if config.console.enabled:  # jinja2 and the console's pages (~2 MiB of RSS) only when it is on
        from proxy.console.site import setup_console

        setup_console(app)
    if config.metrics_listen is None:
        app.router.add_get("/metrics", metrics_handler(app[appkeys.METRICS]))
    return app


def answer_hook(app: web.Application) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The one on_response_prepare hook (one coroutine per answer, not one per concern), bound to
    the root app's objects: sub-apps (the console) answer through it too, and no per-answer
    `request.config_dict` chain is built to find them."""
    state, metrics, drain = app[appkeys.STATE], app[appkeys.METRICS], app[appkeys.DRAIN]

    async def before_answer(request: web.Request, response: web.StreamResponse) -> None:
        """`Connection: close` while draining, then operator secrets masked in what goes out."""
        close_when_draining(drain, response)
        mask_outgoing(state.runtime.guard, metrics, response)

    return before_answer


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    state: State = app[appkeys.STATE]
    config = state.runtime.config
    store = await Store.open(config.store_url)
    try:
        await check_master_key(store, state.runtime)
        auth = Authenticator(store, config.key_pepper)
        await auth.start()
        lease = InstanceLease(store, app[holds.OWNER])
        await lease.start()  # registered before any row names it; dead processes' rows and holds swept
        usage = UsageRecorder(store, owner=lease.id)
        await usage.start()
    except BaseException:
        await store.close()
        raise
    app[appkeys.STORE], app[appkeys.AUTH], app[appkeys.USAGE] = store, auth, usage
    app[appkeys.BYOK] = ByokVault(store, auth)
    shared = app[appkeys.SHARED_LIMITS] = SharedLimits(store) if _shared(config, store) else None
    health = SharedPoolHealth(store, lambda: state.runtime.lanes.cheap.pool) if shared is not None else None
    if shared is not None and health is not None:
        shared.start()
        health.start()
    app[appkeys.DRAIN].advance(Phase.READY)
    yield
    if shared is not None and health is not None:
        await health.stop()
        await shared.stop()
    await usage.stop()
    await lease.stop()  # after the last row: nothing of this process is in flight any more
    await auth.stop()
    await store.close()


def _shared(config: Config, store: Store) -> bool:
    """Limits live in the store when more than one process may serve a workspace."""
    return config.workers > 1 or store.kind == "postgresql"


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    retention = UsageRetention(app[appkeys.STORE], app[appkeys.STATE].runtime.config.usage_retention_days)
    retention.start()
    yield
    await retention.stop()


async def _stream_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_streams(app), name="stream-watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_streams(app: web.Application) -> None:
    """Once a second, while streams run: end those whose key, workspace or BYOK access is gone."""
    watch, auth = app[STREAM_WATCH], app[appkeys.AUTH]
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        if not watch.streams:
            continue
        try:
            await auth.ensure_fresh()
        except StoreError as exc:  # the cached copy still answers; try again next second
            log.warning("stream watch: could not refresh the key table: %s", exc)
        watch.sweep(auth.still_allowed)


async def _access_log_ctx(app: web.Application) -> AsyncIterator[None]:
    access_log: AccessLog = app[appkeys.ACCESS_LOG]
    await access_log.start()
    yield
    await access_log.stop()  # last: after the store context has finished every request's record


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    client: UpstreamClient = app[appkeys.UPSTREAM]
    await client.open()
    yield
    await client.close()
