"""Processes the bench starts (each stopped by its PID, whatever happens) and what /proc says
about them: CPU seconds (utime+stime) and resident memory. Linux only; loopback only.

Servers (fake upstream, bare relay, gateway) are started by testkit.gateway, the one launcher;
this module pins them to a core, keeps the list to stop and runs the short-lived tools.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from testkit.gateway import ServerProcess, stop_process

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cores() -> tuple[int | None, int | None]:
    """(core for the process under test, core for upstream + load), or (None, None) if we cannot pin."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def pin(core: int | None) -> list[str]:
    """The command prefix that pins a process to `core` (none when we cannot pin)."""
    if core is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(core)]


def pinned(cmd: list[str], core: int | None) -> list[str]:
    return [*pin(core), *cmd]


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def children_cpu_seconds() -> float:
    """CPU of every child already waited for (wrk, load generators): deltas give one run's cost."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Procs:
    """Every process started here, stopped in reverse order by PID (SIGTERM, then SIGKILL)."""

    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    servers: list[ServerProcess] = field(default_factory=list)

    def server(self, server: ServerProcess, core: int | None) -> ServerProcess:
        """Start `server` pinned to `core`, dying with this process; returns once it is ready."""
        server.cmd = [*pin(core), *server.cmd]
        server.die_with_parent = True
        self.servers.append(server)
        return server.start_blocking()

    def start(self, name: str, cmd: list[str], *, core: int | None, env: dict[str, str] | None = None,
              stdout: int | IO[bytes] | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
        """A short-lived tool (load generator, wrk, py-spy), pinned to `core`."""
        proc = subprocess.Popen(
            pinned(cmd, core), env=env, stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.started.append((name, proc))
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def run(self, name: str, cmd: list[str], *, core: int | None, env: dict[str, str] | None = None,
            timeout: float) -> str:
        """Run a short-lived tool to the end and return its output (stderr folded in)."""
        proc = self.start(name, cmd, core=core, env=env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stop_process(proc)
            raise RuntimeError(f"{name} did not finish within {timeout:.0f}s") from exc
        finally:
            self.forget(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {out.decode(errors='replace')[-2000:]}")
        return out.decode(errors="replace")

    def stop_all(self) -> None:
        while self.started:
            _, proc = self.started.pop()
            stop_process(proc)
        while self.servers:
            server = self.servers.pop()
            if server.proc is not None:
                server.stop_blocking()


class Sampler(threading.Thread):
    """Samples (monotonic time, RSS bytes, CPU seconds) of one process every `interval_s`."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True, name=f"sampler-{pid}")
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append((time.monotonic(), rss_bytes(self.pid), cpu_seconds(self.pid)))
            except FileNotFoundError:
                return  # the process is gone; the run that needed it reports the failure
            self._halt.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join()
