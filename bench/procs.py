"""Processes the bench starts (each stopped by its PID, whatever happens) and what /proc says
about them: CPU seconds (utime+stime) and resident memory. Linux only; loopback only.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it


def _die_with_parent() -> None:
    # If the driver is killed outright (SIGKILL, OOM), its servers get SIGTERM from the kernel.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def cores() -> tuple[int | None, int | None]:
    """(core for the process under test, core for upstream + load), or (None, None) if we cannot pin."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


def pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(core), *cmd]


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

    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], *, core: int | None, env: dict[str, str] | None = None,
              stdout: int | IO | None = subprocess.PIPE, server: bool = False,
              cwd: Path | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            pinned(cmd, core), env=env, cwd=cwd, stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent if server else None,
        )
        self.started.append((name, proc))
        return proc

    def forget(self, proc: subprocess.Popen) -> None:
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def run(self, name: str, cmd: list[str], *, core: int | None, env: dict[str, str] | None = None,
            timeout: float) -> str:
        """Run a short-lived tool to the end and return its output (stderr folded in)."""
        proc = self.start(name, cmd, core=core, env=env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stop(proc)
            raise RuntimeError(f"{name} did not finish within {timeout:.0f}s") from exc
        finally:
            self.forget(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {out.decode(errors='replace')[-2000:]}")
        return out.decode(errors="replace")

    def stop_all(self) -> None:
        while self.started:
            _, proc = self.started.pop()
            stop(proc)


def stop(proc: subprocess.Popen, grace_s: float = 6.0) -> int:
    """SIGTERM by PID, SIGKILL after `grace_s`; the exit status."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def read_port(log: Path, proc: subprocess.Popen, name: str, timeout: float = 20.0) -> int:
    """Our own servers print `LISTENING <port>` to their log once bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if line.startswith("LISTENING "):
                return int(line.split()[1])
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} during start-up\n{text[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start within {timeout:.0f}s")


def wait_http(url: str, proc: subprocess.Popen, name: str, log: Path | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{name} exited with {proc.returncode} during start-up\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} was not ready at {url} within {timeout:.0f}s")


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
