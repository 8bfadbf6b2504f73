"""Running the app: listeners, signals (SIGHUP reload; SIGTERM/SIGINT graceful drain), systemd
notifications and the exit status. It handles no request itself.

A stop: readiness fails at once, the listener closes after `drain.unready_delay_s`, requests in
flight run until `drain.deadline_s` (from the signal), streams still running then end with an
in-band error, usage is flushed, exit 0. A second SIGTERM/SIGINT skips straight to the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from proxy import appkeys
from proxy.app import build_app
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.http.limits import Limiter
from proxy.lanes.secret_guard import operator_secrets
from proxy.reload import reload_config
from proxy.store.rows import StoreError
from proxy.supervisor_env import RELOAD_ANSWER, WORKER_ENV
from proxy.telemetry.logs import configure_logging
from proxy.telemetry.metrics import metrics_handler
from proxy.telemetry.notify import notify
from proxy.types import Phase
from proxy.workspaces.crypto import MasterKeyError

log = logging.getLogger("okm.server")

CUT_GRACE_S = 5.0  # after the deadline: time for cut streams to write their error and for usage to land
CLEANUP_TIMEOUT_S = 2.0  # aiohttp then cancels whatever still runs (e.g. a non-stream request upstream)
POLL_S = 0.05
PR_SET_PDEATHSIG = 1


@dataclass(slots=True)
class _Signals:
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reload: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # a second stop signal: cut now

    def on_stop(self) -> None:
        (self.hurry if self.stop.is_set() else self.stop).set()


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for or (auto) installed: the same gateway, measurably less CPU per
    request and per event (docs/benchmarks.md); None is asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop: uvloop is not installed (pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def serve(config: Config) -> int:
    if config.workers > 1 and WORKER_ENV not in os.environ:
        from proxy.supervisor import supervise  # reason: a worker never needs the supervisor

        return supervise(config)
    configure_logging(config.log.level, operator_secrets(config))
    try:
        with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
            runner.run(_serve(config))
    except (ConfigError, MasterKeyError, StoreError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    except Exception:
        log.exception("the gateway stopped on an unexpected error")
        return 1
    return 0


async def _serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    signals = _Signals()  # installed first: a stop during start-up then drains instead of killing
    loop.add_signal_handler(signal.SIGTERM, signals.on_stop)
    loop.add_signal_handler(signal.SIGINT, signals.on_stop)
    loop.add_signal_handler(signal.SIGHUP, signals.reload.set)
    app = build_app(config)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=CLEANUP_TIMEOUT_S,
        keepalive_timeout=config.limits.client_header_timeout_s,  # see docs/operations.md: slow clients
        auto_decompress=False,  # never inflate a client body: body.read_body refuses encoded ones (415)
    )
    await runner.setup()
    metrics_runner: web.AppRunner | None = None
    worker = _worker_slot()
    refresher: asyncio.Task[None] | None = None
    try:
        port = config.listen.port if worker is None else worker[1]
        site = web.TCPSite(runner, config.listen.host, port, reuse_address=True, reuse_port=worker is not None)
        await site.start()
        metrics_runner = await _start_metrics_listener(app, config, shared=worker is not None)
        # Everything made while starting (modules, config, routes, the store) lives as long as the
        # process: frozen out of the collector's view, a full collection under load scans only what
        # requests made since.
        gc.collect()
        gc.freeze()
        if worker is not None:
            refresher = _start_worker_metrics(app, restarted=worker[2])
        log.info("serving on http://%s:%d (event loop: %s)", *runner.addresses[0][:2], type(loop).__module__.split(".")[0])
        _notify("READY=1")
        await _serve_until_stop(app, signals)
        await _drain(app, site, signals)
    finally:
        if refresher is not None:
            await _cancel(refresher)
        await runner.cleanup()  # closes what is left, then the app's cleanup contexts flush usage
        app[appkeys.METRICS].flush()  # a worker's last counts reach its multiprocess files
        if metrics_runner is not None:
            await metrics_runner.cleanup()
    log.info("stopped")


def _worker_slot() -> tuple[int, int, bool] | None:
    """(index, port, restarted) when this process is a supervisor's worker."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    _stop_with_the_supervisor()
    index, port, restarted = value.split(":")
    return int(index), int(port), restarted == "1"


def _stop_with_the_supervisor() -> None:
    """Linux PR_SET_PDEATHSIG: SIGTERM (a drain) when the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor was already gone before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _start_worker_metrics(app: web.Application, *, restarted: bool) -> asyncio.Task[None]:
    """Under a supervisor: live gauges written every second (a scrape may land on any worker)."""
    metrics = app[appkeys.METRICS]
    if restarted:
        metrics.worker_restarts.inc()

    async def refresh() -> None:
        while True:
            metrics.refresh()
            await asyncio.sleep(1.0)

    return asyncio.create_task(refresh(), name="worker-metrics")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _start_metrics_listener(app: web.Application, config: Config, *, shared: bool = False) -> web.AppRunner | None:
    if config.metrics_listen is None:
        return None
    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics_handler(app[appkeys.METRICS]))
    runner = web.AppRunner(metrics_app, access_log=None, shutdown_timeout=CLEANUP_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, config.metrics_listen.host, config.metrics_listen.port, reuse_address=True,
                       reuse_port=shared)  # workers share it: any one answers with every worker's totals
    await site.start()
    log.info("metrics on http://%s:%d/metrics", *runner.addresses[0][:2])
    return runner


async def _serve_until_stop(app: web.Application, signals: _Signals) -> None:
    reloader = asyncio.create_task(_reload_on_signal(app, signals.reload), name="config-reloader")
    try:
        await signals.stop.wait()
    finally:
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader


async def _reload_on_signal(app: web.Application, requested: asyncio.Event) -> None:
    while True:
        await requested.wait()
        requested.clear()  # SIGHUPs that arrive during a reload coalesce into one more
        _notify("RELOADING=1")
        outcome = await reload_config(app)
        answer = f"\n{RELOAD_ANSWER}={'ok' if outcome.ok else 'refused'}" if WORKER_ENV in os.environ else ""
        _notify(f"READY=1{answer}")  # a supervisor waits for the answer; systemd gets plain READY=1


async def _drain(app: web.Application, site: web.TCPSite, signals: _Signals) -> None:
    limiter, drain = app[appkeys.LIMITER], app[appkeys.DRAIN]
    config: Config = app[appkeys.STATE].runtime.config
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.drain_deadline_s
    drain.advance(Phase.DRAINING)
    _notify("STOPPING=1")
    log.info(
        "stopping: readiness fails now; %d requests in flight, drain deadline %gs",
        limiter.in_flight, config.drain_deadline_s,
    )
    await _wait_for(signals.hurry, config.drain_unready_delay_s)
    await site.stop()
    drain.advance(Phase.CLOSED)
    log.info("listener closed; waiting for %d requests (%d streams)", limiter.in_flight, drain.streams)
    await _until_idle(limiter, signals.hurry, deadline - loop.time())
    if limiter.in_flight:
        cut = drain.cut()
        log.warning(
            "%s: %d streams end with an in-band error, %d requests still in flight",
            "second stop signal" if signals.hurry.is_set() else "drain deadline reached", cut, limiter.in_flight,
        )
        await _until_idle(limiter, None, CUT_GRACE_S)
    log.info("drained (%d requests left); flushing usage", limiter.in_flight)


async def _wait_for(event: asyncio.Event, timeout: float) -> None:
    if timeout <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


async def _until_idle(limiter: Limiter, hurry: asyncio.Event | None, timeout: float) -> None:
    """Wait until no proxied request is in flight, the timeout passes, or `hurry` is set."""
    loop = asyncio.get_running_loop()
    end = loop.time() + max(0.0, timeout)
    while limiter.in_flight and loop.time() < end and not (hurry is not None and hurry.is_set()):
        await asyncio.sleep(POLL_S)


def _notify(message: str) -> None:
    notify(message)
