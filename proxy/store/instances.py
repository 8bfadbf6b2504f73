"""Which gateway process owns an in-flight usage row or a billing hold, and whether it still lives.

Each gateway process (a lone one, each worker, each host) is an *instance*: a random id per
start and a row in `gateway_instances` (its host, pid and the pid's start time) whose lease it
renews every RENEW_S. Admission rows and holds carry their instance's id as `owner`. An owner is
dead when its lease has expired (TTL_S without renewal: a killed process, a lost host), or, on
this same machine, at once when its pid no longer runs (or now runs another process). At start and
every SWEEP_S, a process marks only dead owners' in-flight rows `interrupted` and releases only
their holds, in one transaction; the rows and holds of live processes, whatever their host, are
left alone. A process that stops cleanly removes its own instance row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from proxy.background import BackgroundTask
from proxy.store import Store
from proxy.store.db import Tx
from proxy.store.rows import StoreError

log = logging.getLogger("okm.instances")

TTL_S = 10.0  # a lease not renewed for this long is a dead process's
RENEW_S = 1.0
SWEEP_S = 5.0

_REGISTER = ("INSERT INTO gateway_instances (id, host, pid, pid_start, started_at, expires_at) VALUES (?, ?, ?, ?, ?, ?) "
             "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at")
_LIVE = ("SELECT 1 FROM gateway_instances g WHERE g.id = {table}.owner")
# A hold is recorded on its in-flight admission row: marking the row releases it. billing_holds
# holds what earlier versions recorded there (released here too, once: not again from its row).
_MARK = ("UPDATE usage SET outcome = 'interrupted' WHERE outcome = 'in_flight' AND "
         f"(owner IS NULL OR (owner <> ? AND NOT EXISTS ({_LIVE.format(table='usage')}))) "
         "RETURNING request_id, workspace_id, key_id, hold_micros")
_RELEASE_LEGACY = ("DELETE FROM billing_holds WHERE (owner IS NULL OR owner <> ?) AND "
                   f"NOT EXISTS ({_LIVE.format(table='billing_holds')}) "
                   "RETURNING request_id, workspace_id, key_id, amount_micros")
_UNHOLD_ACCOUNT = "UPDATE billing_accounts SET held_micros = held_micros - ? WHERE workspace_id = ?"
_UNHOLD_KEY = "UPDATE api_keys SET held_micros = held_micros - ? WHERE id = ?"


@dataclass(frozen=True, slots=True)
class Swept:
    interrupted: int  # in-flight usage rows of dead owners, now `interrupted`
    released: int  # their billing holds, now gone


def new_instance_id() -> str:
    """Random per start (host and pid only make it readable in the store)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(6)}"


def machine() -> str:
    """This machine and pid namespace: instances with the same value can be checked by pid."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return f"{socket.gethostname()[:64]}|{os.getpid()}"  # no /proc: only this process is known by pid
    return f"{socket.gethostname()[:64]}|{boot}|{pid_ns}"


def pid_start(pid: int) -> int | None:
    """The start time (clock ticks after boot) of a running pid; None if none (or a zombie) runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # after the command name, which may hold spaces
    return None if fields[0] == b"Z" else int(fields[19])


async def _sweep(tx: Tx, own: str, here: str, now: float) -> Swept:
    """In one transaction: drop dead instances (expired, or a pid gone on this machine), then mark
    the in-flight rows and release the holds that no live instance owns."""
    rows = await tx.fetchall("SELECT id, pid, pid_start FROM gateway_instances WHERE host = ? AND id <> ?", (here, own))
    gone = [(r[0],) for r in rows if pid_start(int(r[1])) != (None if r[2] is None else int(r[2]))]
    await tx.executemany("DELETE FROM gateway_instances WHERE id = ?", gone)
    await tx.execute("DELETE FROM gateway_instances WHERE expires_at < ? AND id <> ?", (now, own))
    marked = await tx.fetchall(_MARK, (own,))
    legacy = await tx.fetchall(_RELEASE_LEGACY, (own,))
    legacy_ids = {r[0] for r in legacy}
    released = [*legacy, *(r for r in marked if r[3] and r[1] is not None and r[0] not in legacy_ids)]
    accounts: dict[int, int] = defaultdict(int)
    keys: dict[str, int] = defaultdict(int)
    for _, workspace_id, key_id, amount in released:
        accounts[int(workspace_id)] += int(amount)
        if key_id is not None:
            keys[str(key_id)] += int(amount)
    # One lock order (workspace, then key), as the usage batches take them.
    await tx.executemany(_UNHOLD_ACCOUNT, [(amount, ws) for ws, amount in sorted(accounts.items())])
    await tx.executemany(_UNHOLD_KEY, [(amount, key) for key, amount in sorted(keys.items())])
    return Swept(len(marked), len(released))


class InstanceLease:
    """This process's instance: registered and swept at start, renewed and swept in the background."""

    def __init__(self, store: Store, instance_id: str | None = None) -> None:
        self.store = store
        self.id = instance_id or new_instance_id()
        self.machine = machine()
        self._task = BackgroundTask("instance-lease")
        self.interrupted = 0  # totals of this process's sweeps
        self.released = 0

    async def start(self) -> Swept:
        """Register (before any row or hold names this id), then sweep once; raises StoreError."""
        await self.renew()
        swept = await self.sweep()
        self._task.start(self._run())
        return swept

    async def stop(self) -> None:
        await self._task.stop()
        with contextlib.suppress(StoreError):  # else the lease expires on its own within TTL_S
            async with self.store.transaction() as tx:
                await tx.execute("DELETE FROM gateway_instances WHERE id = ?", (self.id,))

    async def renew(self) -> None:
        now = time.time()
        async with self.store.transaction() as tx:
            await tx.execute(_REGISTER, (self.id, self.machine, os.getpid(), pid_start(os.getpid()), now, now + TTL_S))

    async def sweep(self) -> Swept:
        async with self.store.transaction() as tx:
            swept = await _sweep(tx, self.id, self.machine, time.time())
        self.interrupted += swept.interrupted
        self.released += swept.released
        if swept.interrupted or swept.released:
            log.warning("a stopped gateway process left %d usage rows in flight (now interrupted) and %d billing "
                        "holds (released)", swept.interrupted, swept.released)
        return swept

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_S
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                await self.renew()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_S
                    await self.sweep()
            except StoreError as exc:  # a lapse beyond TTL_S lets others sweep this process; the next renewal re-registers
                log.warning("instance lease not renewed: %s", exc)
