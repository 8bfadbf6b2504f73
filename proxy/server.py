"""Running the app: listeners, signal handling (SIGHUP reload, SIGTERM drain) and exit status."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from proxy import appkeys
from proxy.accesslog import configure_logging
from proxy.app import build_app
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.metrics import metrics_handler

log = logging.getLogger("okm.server")


def serve(config: Config) -> int:
    configure_logging(config.log.level)
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def _serve(config: Config) -> None:
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=config.drain_deadline_s)
    await runner.setup()
    site = web.TCPSite(runner, config.listen.host, config.listen.port, reuse_address=True)
    await site.start()
    metrics_runner = None
    if config.metrics_listen is not None:
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", metrics_handler(app[appkeys.METRICS]))
        metrics_runner = web.AppRunner(metrics_app, access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, config.metrics_listen.host, config.metrics_listen.port).start()
    log.info("serving on http://%s:%d", config.listen.host, config.listen.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    app[appkeys.STATE].draining = True
    log.info("draining (deadline %.0fs)", config.drain_deadline_s)
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    log.info("stopped")
