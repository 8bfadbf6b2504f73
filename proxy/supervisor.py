"""N worker processes on one port: start, watch, restart, reload and stop them. No request work.

Each worker is `python -m proxy serve` with OKM_WORKER set, binding the listen port with
SO_REUSEPORT (the kernel spreads connections). The supervisor holds a bound, non-listening
socket on the port, so port 0 resolves once and a restarted worker gets the same port. Workers
report READY/RELOADING/STOPPING to the supervisor's own notify socket (sender pid from
SO_PASSCRED); the supervisor tells systemd READY once every worker is ready, and after a reload
once every worker has answered it (X_OKM_RELOAD, bounded by RELOAD_WAIT_S). Metrics from all
workers meet in a fresh prometheus-client multiprocess directory, removed at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.host_limits import host_total
from proxy.lanes.secret_guard import operator_secrets
from proxy.supervisor_env import RELOAD_ANSWER, WORKER_ENV
from proxy.telemetry.logs import configure_logging
from proxy.telemetry.notify import notify

log = logging.getLogger("okm.supervisor")

BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
HEALTHY_AFTER_S = 30.0  # a worker that lived this long resets the back-off
RELOAD_WAIT_S = 10.0  # how long READY=1 after a reload waits for the workers' answers
_CRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(slots=True)
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False
    failures: int = 0  # consecutive early deaths: the back-off exponent
    reload_answer: str | None = None  # "ok" or "refused": its answer to the last reload passed on


@dataclass(slots=True)
class _State:
    workers: list[_Worker]
    stopping: bool = False
    restarts: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def supervise(config: Config) -> int:
    configure_logging(config.log.level, operator_secrets(config))
    metrics_dir = Path(tempfile.mkdtemp(prefix="okm-metrics-"))
    try:
        return asyncio.run(_Supervisor(config, metrics_dir).run())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bound with SO_REUSEPORT, never listening: receives no connections, keeps the port ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class _Supervisor:
    def __init__(self, config: Config, metrics_dir: Path) -> None:
        self.config = config
        self.metrics_dir = metrics_dir
        self.state = _State([_Worker(i) for i in range(config.workers)])
        self.systemd_socket = os.environ.pop("NOTIFY_SOCKET", None)  # ours to use, not the workers'
        self.port = 0
        self.notify_path = metrics_dir / "notify.sock"  # same private folder: no other user can write
        self.startup_failed = False  # a worker died before every worker had been ready once
        self.all_ready_once = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        reserved = _reserve_port(self.config.listen.host, self.config.listen.port)
        self.port = reserved.getsockname()[1]
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(str(self.notify_path))
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        inbox.setblocking(False)
        loop.add_reader(inbox.fileno(), self._on_message, inbox)
        stop, reload = asyncio.Event(), asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self._on_stop, stop)
        loop.add_signal_handler(signal.SIGINT, self._on_stop, stop)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        log.info("supervisor: %d workers on http://%s:%d", len(self.state.workers), self.config.listen.host, self.port)
        self._log_host_total()
        try:
            for worker in self.state.workers:
                await self._spawn(worker)
            watchers = [asyncio.create_task(self._watch(w), name=f"worker-{w.index}") for w in self.state.workers]
            if not await self._initial_ready(stop):
                self._on_stop(stop)
            else:
                self.all_ready_once = True
                log.info("all %d workers ready", len(self.state.workers))
                self._notify("READY=1")
                await self._serve(stop, reload)
            results = await asyncio.gather(*watchers)
        finally:
            loop.remove_reader(inbox.fileno())
            inbox.close()
            reserved.close()
        ok = all(results) and not self.startup_failed
        log.info("supervisor stopped (%d worker restarts)", self.state.restarts)
        return 0 if ok else 1

    async def _initial_ready(self, stop: asyncio.Event) -> bool:
        while not all(w.ready for w in self.state.workers):
            if stop.is_set() or self.startup_failed:
                return False
            self.state.changed.clear()
            await self.state.changed.wait()
        return True

    async def _serve(self, stop: asyncio.Event, reload: asyncio.Event) -> None:
        while not stop.is_set():
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                await self._reload()

    async def _reload(self) -> None:
        """Forward SIGHUP only for a config that loads: a refused file is refused for all at once."""
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("config reload refused by the supervisor (no worker reloaded): %s", exc)
            return
        if new.workers != self.config.workers:
            log.warning("config reload: workers changed; it takes effect only after a restart")
        self._notify("RELOADING=1")
        asked: dict[int, int] = {}  # worker index → the pid that got the SIGHUP
        for worker in self.state.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.reload_answer = None
                worker.proc.send_signal(signal.SIGHUP)
                asked[worker.index] = worker.proc.pid
        if await self._reload_answers(asked):
            self.config = new
            self._log_host_total()
        self._notify("READY=1")

    async def _reload_answers(self, asked: dict[int, int]) -> bool:
        """Wait until every worker asked has answered the reload or died (a restarted worker reads
        the new file anyway), at most RELOAD_WAIT_S; say who refused and who did not answer."""
        workers = [w for w in self.state.workers if w.index in asked]

        def gone(w: _Worker) -> bool:
            return w.proc is None or w.proc.pid != asked[w.index] or w.proc.returncode is not None

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RELOAD_WAIT_S):
                while not all(gone(w) or w.reload_answer is not None for w in workers):
                    self.state.changed.clear()
                    await self.state.changed.wait()
        ok = [w for w in workers if not gone(w) and w.reload_answer == "ok"]
        for w in workers:
            if gone(w):
                log.warning("worker %d (pid %d) ended during the reload; its restart reads the new config",
                            w.index, asked[w.index])
            elif w.reload_answer == "refused":
                log.error("worker %d (pid %d) refused the reload and keeps its previous config (see its log)",
                          w.index, asked[w.index])
            elif w.reload_answer is None:
                log.warning("worker %d (pid %d) did not confirm the reload within %gs; telling systemd READY anyway",
                            w.index, asked[w.index], RELOAD_WAIT_S)
        log.info("reload confirmed by %d of %d workers", len(ok), len(workers))
        return not any(w.reload_answer == "refused" for w in workers if not gone(w))

    def _log_host_total(self) -> None:
        total = host_total(dataclasses.replace(self.config, workers=len(self.state.workers)))
        if total is not None:
            log.info("%s", total)

    def _on_stop(self, stop: asyncio.Event) -> None:
        again = self.state.stopping
        self.state.stopping = True
        stop.set()
        for worker in self.state.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)  # a second one makes workers cut streams now
        if not again:
            self._notify("STOPPING=1")
            log.info("stopping: SIGTERM passed to every worker")
        self.state.changed.set()

    async def _spawn(self, worker: _Worker) -> None:
        restarted = int(worker.proc is not None)  # the new worker counts itself in okm_worker_restarts_total
        env = {**os.environ, WORKER_ENV: f"{worker.index}:{self.port}:{restarted}",
               "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir), "NOTIFY_SOCKET": str(self.notify_path)}
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(self.config.source), env=env,
        )
        worker.started, worker.ready = time.monotonic(), False

    async def _watch(self, worker: _Worker) -> bool:
        """Wait on one worker slot until stopping; restart a worker that dies. True: exited 0."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            _mark_dead(self.metrics_dir, worker.proc.pid)
            self.state.changed.set()
            if self.state.stopping:
                if code != 0:
                    log.error("worker %d exited with status %d while stopping", worker.index, code)
                return code == 0
            if not self.all_ready_once:
                log.error("worker %d failed to start (status %d); stopping", worker.index, code)
                self.startup_failed = True
                self.state.changed.set()
                return False
            lived = time.monotonic() - worker.started
            worker.failures = 0 if lived >= HEALTHY_AFTER_S else worker.failures + 1
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** max(0, worker.failures - 1)) if worker.failures else 0.0
            self.state.restarts += 1
            log.error("worker %d (pid %d) died with status %d after %.1fs; restart %d in %.1fs",
                      worker.index, worker.proc.pid, code, lived, self.state.restarts, delay)
            await asyncio.sleep(delay)
            if self.state.stopping:
                return True
            await self._spawn(worker)

    def _on_message(self, inbox: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                data, ancillary, _, _ = inbox.recvmsg(4096, socket.CMSG_SPACE(_CRED.size))
                pid = next((_CRED.unpack(d[: _CRED.size])[0] for lvl, kind, d in ancillary
                            if lvl == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
                self._worker_said(pid, data.decode(errors="replace"))

    def _worker_said(self, pid: int | None, message: str) -> None:
        for worker in self.state.workers:
            if worker.proc is not None and worker.proc.pid == pid:
                lines = message.split("\n")
                if "READY=1" in lines:
                    worker.ready = True
                    self.state.changed.set()
                for line in lines:
                    if line.startswith(f"{RELOAD_ANSWER}="):
                        worker.reload_answer = line.partition("=")[2]
                return

    def _notify(self, message: str) -> None:
        notify(message, self.systemd_socket)


def _mark_dead(metrics_dir: Path, pid: int) -> None:
    """Drop a dead worker's live gauges (livesum/livemin); its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))
