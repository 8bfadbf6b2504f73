"""The one launcher for the servers tests, the benchmark and the tools run as processes.

`GatewayProcess` runs `python -m proxy serve --config …` (workers, NOTIFY_SOCKET and environment as
the config and caller say); `ServerProcess` runs any of our servers that prints `LISTENING <port>`
(the fake upstream, the bench's bare relay). Each starts in its own session with its output in a
log file, is ready once that log names its port (and, when asked, `/readyz` answers 200), and is
signalled, stopped and killed by its PID only, never by name. Leaving an `async with` / `with`
block kills it if it still runs, so a failing test leaks no process. Waiting comes in two kinds:
awaitable (tests, whose event loop may be serving the upstream the gateway talks to) and
`*_blocking` (the benchmark and tools, which have no loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"^LISTENING (\d+)$", re.M)
SERVING = re.compile(r"serving on http://[^\s:]+:(\d+)")
_METRICS = re.compile(r"metrics on (http://[^\s:]+:\d+)/metrics")
_POLL_S = 0.02
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it


def _die_with_parent() -> None:
    # If the driver is killed outright (SIGKILL, OOM), its servers get SIGTERM from the kernel.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 6.0) -> int:
    """SIGTERM by PID, SIGKILL after `grace_s`; the exit status. A no-op for a process already ended."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


class ServerProcess:
    """One server process: `cmd` (prefixed by `wrap`, e.g. taskset), output appended to `log`."""

    def __init__(self, cmd: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, ready: re.Pattern[str] = LISTENING, probe: str | None = None,
                 wrap: Sequence[str] = (), die_with_parent: bool = False, name: str = "server") -> None:
        self.cmd = [*wrap, *cmd]
        self.log = log
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd or ROOT
        self.ready, self.probe, self.name = ready, probe, name
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._offset = 0  # where this run's output starts in `log` (a log may hold earlier runs)

    # --- starting ------------------------------------------------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self._offset = out.tell()
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        return self.proc

    async def start(self, within_s: float = 30.0) -> ServerProcess:
        """Spawn and wait until ready; AssertionError (after killing it) if it exits or is not ready in time."""
        self.spawn()
        deadline = time.monotonic() + within_s
        try:
            while not await self._ready_async():
                self._check_deadline(deadline, within_s)
                await asyncio.sleep(_POLL_S)
        except BaseException:
            self.kill()
            raise
        return self

    async def run_to_exit(self, timeout: float = 20.0) -> int:
        """Spawn and wait for it to exit by itself (a refused start); killed if still running after `timeout`."""
        self.spawn()
        try:
            return await self.wait(timeout)
        finally:
            self.kill()

    def start_blocking(self, within_s: float = 30.0) -> ServerProcess:
        self.spawn()
        deadline = time.monotonic() + within_s
        try:
            while not self._ready_blocking():
                self._check_deadline(deadline, within_s)
                time.sleep(_POLL_S)
        except BaseException:
            self.kill()
            raise
        return self

    def _port_seen(self) -> bool:
        """True once the log names the port; AssertionError if the process exited first."""
        found = self.ready.findall(self.output)
        if found:
            self.port = int(found[-1])
            return True
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode} during start-up:\n{self.tail()}")
        return False

    async def _ready_async(self) -> bool:
        if not self._port_seen():
            return False
        return self.probe is None or await _answers_200_async(self.port, self.probe)

    def _ready_blocking(self) -> bool:
        return self._port_seen() and (self.probe is None or _answers_200(self.url + self.probe))

    def _check_deadline(self, deadline: float, within_s: float) -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{self.name} not ready within {within_s:.0f}s:\n{self.tail()}")

    # --- what it says --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        """This run's log text so far."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._offset)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    def tail(self, chars: int = 3000) -> str:
        return self.output[-chars:]

    async def wait_for_line(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line of this run's log matching `pattern`; AssertionError if it exits or times out first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.returncode is not None
            for line in self.lines:
                if regex.search(line):
                    return line
            if exited:
                raise AssertionError(f"{self.name} exited without logging {pattern!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {pattern!r} within {timeout}s:\n{self.tail()}")
            await asyncio.sleep(_POLL_S)

    # --- signals and ending --------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def reload(self) -> None:
        """SIGHUP: reload the config."""
        self.signal(signal.SIGHUP)

    async def wait(self, timeout: float = 20.0) -> int:
        """The exit status; AssertionError if it still runs after `timeout`."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} still running after {timeout}s")
            await asyncio.sleep(_POLL_S)
        return code

    async def stop(self, grace_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `grace_s`; the exit status."""
        if self.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                return await self.wait(grace_s)
            except AssertionError:
                self.kill()
        assert self.proc is not None
        return self.proc.wait()

    def stop_blocking(self, grace_s: float = 6.0) -> int:
        assert self.proc is not None, "not started"
        return stop_process(self.proc, grace_s)

    def kill(self) -> None:
        """SIGKILL if it still runs, and reap it (teardown; safe to call twice or before start)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    async def __aenter__(self) -> ServerProcess:
        return await self.start() if self.proc is None else self

    async def __aexit__(self, *exc: object) -> None:
        self._teardown()

    def __enter__(self) -> ServerProcess:
        return self.start_blocking() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    def _teardown(self) -> None:
        self.kill()
        sys.stdout.write(self.tail(4000) + "\n")  # pytest shows a test's output only when it fails


class GatewayProcess(ServerProcess):
    """`python -m proxy serve --config CONFIG`; ready once it logs `serving on …` and `/readyz` answers 200.

    `env` is added to this process's environment; NOTIFY_SOCKET is passed only as `notify_socket`.
    `workers` is passed as `--workers` (the config's `workers` otherwise). Without `log`, output goes
    to a fresh `<config stem>-*.log` beside the config. A refused start: `await run_to_exit()`.
    """

    def __init__(self, config: Path, env: Mapping[str, str] | None = None, log: Path | None = None, *,
                 workers: int | str | None = None, notify_socket: Path | None = None, readyz: bool = True,
                 cwd: Path | None = None,
                 wrap: Sequence[str] = (), die_with_parent: bool = False, python: str = sys.executable) -> None:
        if log is None:
            fd, name = tempfile.mkstemp(prefix=f"{config.stem}-", suffix=".log", dir=config.parent)
            os.close(fd)
            log = Path(name)
        flags = [] if workers is None else ["--workers", str(workers)]
        super().__init__([python, "-m", "proxy", "serve", "--config", str(config), *flags], log=log, env=env, cwd=cwd,
                         ready=SERVING, probe="/readyz" if readyz else None, wrap=wrap,
                         die_with_parent=die_with_parent, name="gateway")
        self.config = config
        self.env.pop("NOTIFY_SOCKET", None)
        if notify_socket is not None:
            self.env["NOTIFY_SOCKET"] = str(notify_socket)

    @property
    def metrics_url(self) -> str:
        """The separate metrics listener's URL (empty when the config has none)."""
        found = _METRICS.findall(self.output)
        return found[-1] if found else ""

    async def start(self, within_s: float = 30.0) -> GatewayProcess:
        await super().start(within_s)
        return self

    def start_blocking(self, within_s: float = 30.0) -> GatewayProcess:
        super().start_blocking(within_s)
        return self

    async def __aenter__(self) -> GatewayProcess:
        return await self.start() if self.proc is None else self

    def __enter__(self) -> GatewayProcess:
        return self.start_blocking() if self.proc is None else self


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Connection": "close"}), timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def _answers_200_async(port: int, path: str) -> bool:
    """GET `path` on 127.0.0.1:`port` over a fresh connection (no client library, nothing left open)."""
    try:
        async with asyncio.timeout(1):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return status.startswith(b"HTTP/1.1 200")
