"""The SQLite store: workspaces, API keys, BYOK ciphertexts and usage rows, as dataclasses.

All SQL lives here and in usage_store.py. Writes go through one connection, one explicit
BEGIN IMMEDIATE transaction at a time; reads use a second, read-only connection (WAL lets
both run at once). It never sees a key or BYOK key in clear: callers hand it hashes and blobs.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from proxy.store import usage_sql as usage_store
from proxy.store.migrations import Migration, load_migrations, migrate
from proxy.store.rows import (
    KEEP,
    ApiKey,
    AuthEntry,
    ByokKey,
    InvalidValue,
    Keep,
    KeyNotFound,
    StoreError,
    StoreUnavailable,
    UsageRow,
    UsageTotal,
    Workspace,
    WorkspaceExists,
    WorkspaceNotFound,
)
from proxy.types import Secret
from proxy.workspaces import keys

BUSY_TIMEOUT_MS = 5000
WORKSPACE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
KEY_NAME_MAX = 100
_WS_COLUMNS = "id, name, created_at, disabled_at, byok_enabled, rpm_limit, stream_limit"
_KEY_COLUMNS = "id, workspace_id, name, masked, created_at, last_used_at, revoked_at"


def _workspace(row: Sequence[Any]) -> Workspace:
    return Workspace(row[0], row[1], row[2], row[3] is not None, bool(row[4]), row[5], row[6])


def _api_key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(*row[:7])


def check_workspace_name(name: str) -> str:
    if not WORKSPACE_NAME.fullmatch(name):
        raise InvalidValue(
            f"invalid workspace name '{name[:80]}': use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_limit(field: str, value: int | Keep | None) -> None:
    if value is KEEP or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(f"{field} must be a whole number >= 1, or null for the configured default")


async def _connect(target: str | Path, *, uri: bool = False) -> aiosqlite.Connection:
    db = await aiosqlite.connect(target, uri=uri, isolation_level=None)
    await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return db


class Store:
    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | os.PathLike[str], migrations: tuple[Migration, ...] | None = None) -> Store:
        """Open (creating if needed) and migrate the database at `path`."""
        path = Path(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fresh = not path.exists()
            writer = await _connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc
        try:
            if fresh:
                os.chmod(path, 0o600)  # -wal and -shm inherit this mode from the database file
            await writer.execute("PRAGMA journal_mode = WAL")
            await writer.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across a process kill
            await writer.execute("PRAGMA foreign_keys = ON")
            await migrate(writer, load_migrations() if migrations is None else migrations)
            reader = await _connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        except BaseException as exc:
            await writer.close()
            if isinstance(exc, (OSError, sqlite3.Error)):
                raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._write_lock:
            await self._reader.close()
            await self._writer.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One BEGIN IMMEDIATE … COMMIT on the writer; rolled back on any error."""
        async with self._write_lock:
            try:
                if self._writer.in_transaction:  # left open by a task cancelled mid-rollback
                    await self._writer.execute("ROLLBACK")
                await self._writer.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, ValueError) as exc:  # aiosqlite: ValueError once closed
                raise StoreUnavailable(f"cannot write to the store: {exc}") from exc
            try:
                yield self._writer
                await self._writer.execute("COMMIT")
            except BaseException as exc:
                if self._writer.in_transaction:
                    await self._writer.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(f"cannot write to the store: {exc}") from exc
                raise

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except (sqlite3.Error, ValueError) as exc:  # aiosqlite: ValueError once closed
            raise StoreUnavailable(f"cannot read the store: {exc}") from exc

    async def _one(self, sql: str, params: Sequence[Any]) -> Any | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    # --- workspaces -------------------------------------------------------------------------

    async def create_workspace(self, name: str) -> Workspace:
        check_workspace_name(name)
        async with self.transaction() as db:
            if await db.execute_fetchall("SELECT 1 FROM workspaces WHERE name = ?", (name,)):
                raise WorkspaceExists(name)
            await db.execute("INSERT INTO workspaces (name, created_at) VALUES (?, ?)", (name, time.time()))
        return await self.get_workspace(name)

    async def list_workspaces(self) -> list[Workspace]:
        return [_workspace(r) for r in await self.fetchall(f"SELECT {_WS_COLUMNS} FROM workspaces ORDER BY name")]

    async def get_workspace(self, name: str) -> Workspace:
        row = await self._one(f"SELECT {_WS_COLUMNS} FROM workspaces WHERE name = ?", (name,))
        if row is None:
            raise WorkspaceNotFound(name)
        return _workspace(row)

    async def get_workspace_by_id(self, workspace_id: int) -> Workspace:
        row = await self._one(f"SELECT {_WS_COLUMNS} FROM workspaces WHERE id = ?", (workspace_id,))
        if row is None:
            raise WorkspaceNotFound(f"#{workspace_id}")
        return _workspace(row)

    async def _update_workspace(self, name: str, assignments: str, params: Sequence[Any]) -> Workspace:
        async with self.transaction() as db:
            async with db.execute(f"UPDATE workspaces SET {assignments} WHERE name = ?", (*params, name)) as cur:
                if cur.rowcount == 0:
                    raise WorkspaceNotFound(name)
        return await self.get_workspace(name)

    async def set_workspace_disabled(self, name: str, disabled: bool) -> Workspace:
        """Disable (keeping the first disable time) or re-enable a workspace."""
        if disabled:
            return await self._update_workspace(name, "disabled_at = COALESCE(disabled_at, ?)", (time.time(),))
        return await self._update_workspace(name, "disabled_at = NULL", ())

    async def disable_workspace(self, name: str) -> Workspace:
        return await self.set_workspace_disabled(name, True)

    async def enable_workspace(self, name: str) -> Workspace:
        return await self.set_workspace_disabled(name, False)

    async def set_byok_enabled(self, name: str, enabled: bool = True) -> Workspace:
        return await self._update_workspace(name, "byok_enabled = ?", (int(enabled),))

    async def set_workspace_limits(
        self, name: str, *, rpm_limit: int | Keep | None = KEEP, stream_limit: int | Keep | None = KEEP
    ) -> Workspace:
        """Per-workspace overrides; None restores the configured default, KEEP leaves a field alone."""
        _check_limit("rpm_limit", rpm_limit)
        _check_limit("stream_limit", stream_limit)
        changes = {k: v for k, v in (("rpm_limit", rpm_limit), ("stream_limit", stream_limit)) if v is not KEEP}
        if not changes:
            return await self.get_workspace(name)
        return await self._update_workspace(name, ", ".join(f"{k} = ?" for k in changes), tuple(changes.values()))

    # --- API keys ---------------------------------------------------------------------------

    async def create_api_key(self, workspace_name: str, pepper: Secret, name: str = "") -> tuple[ApiKey, Secret]:
        """Issue a key: only its hash and masked form are stored; the key is returned once."""
        if len(name) > KEY_NAME_MAX or not name.isprintable():
            raise InvalidValue(f"key name must be printable text of at most {KEY_NAME_MAX} characters")
        key_id, key = keys.generate_api_key()
        key_hash = keys.hash_api_key(key, pepper)
        async with self.transaction() as db:
            rows = await db.execute_fetchall("SELECT id FROM workspaces WHERE name = ?", (workspace_name,))
            if not rows:
                raise WorkspaceNotFound(workspace_name)
            await db.execute(
                "INSERT INTO api_keys (id, workspace_id, name, key_hash, masked, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, rows[0][0], name, key_hash, keys.mask_key(key), time.time()),
            )
        return await self.get_api_key(key_id), Secret(key, f"key {key_id}")

    async def list_api_keys(self, workspace_name: str) -> list[ApiKey]:
        workspace = await self.get_workspace(workspace_name)
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE workspace_id = ? ORDER BY created_at, id"
        return [_api_key(r) for r in await self.fetchall(sql, (workspace.id,))]

    async def get_api_key(self, key_id: str) -> ApiKey:
        row = await self._one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise KeyNotFound(key_id)
        return _api_key(row)

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent: a second revoke keeps the first time)."""
        async with self.transaction() as db:
            sql = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"
            async with db.execute(sql, (time.time(), key_id)) as cur:
                if cur.rowcount == 0:
                    raise KeyNotFound(key_id)
        return await self.get_api_key(key_id)

    async def auth_version(self) -> int:
        """A counter bumped (by triggers) on every change to keys, workspaces or BYOK keys."""
        row = await self._one("SELECT value FROM meta WHERE name = 'auth_version'", ())
        return int(row[0]) if row else 0

    async def auth_entries(self) -> list[AuthEntry]:
        """Every key with its workspace, in one consistent read: the authenticator's cache."""
        rows = await self.fetchall(
            f"SELECT k.id, k.key_hash, k.revoked_at, {', '.join('w.' + c for c in _WS_COLUMNS.split(', '))}, "
            "(SELECT group_concat(b.provider, char(31)) FROM byok_keys b WHERE b.workspace_id = w.id) "
            "FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id"
        )
        workspaces: dict[int, Workspace] = {}
        entries = []
        for row in rows:
            workspace = workspaces.setdefault(row[3], _workspace(row[3:10]))
            providers = frozenset(row[10].split("\x1f")) if row[10] else frozenset()
            entries.append(AuthEntry(row[0], bytes(row[1]), row[2] is not None, workspace, providers))
        return entries

    async def touch_keys(self, last_used: Mapping[str, float]) -> None:
        if last_used:
            async with self.transaction() as db:
                await usage_store.touch_keys(db, last_used)

    # --- BYOK keys (ciphertext only) ---------------------------------------------------------

    async def put_byok_key(self, workspace_id: int, provider: str, blob: bytes, key_id: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO byok_keys (workspace_id, provider, ciphertext, master_key_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace_id, provider) DO UPDATE SET "
                "ciphertext = excluded.ciphertext, master_key_id = excluded.master_key_id, updated_at = excluded.updated_at",
                (workspace_id, provider, blob, key_id, time.time()),
            )

    async def get_byok_key(self, workspace_id: int, provider: str) -> bytes | None:
        sql = "SELECT ciphertext FROM byok_keys WHERE workspace_id = ? AND provider = ?"
        row = await self._one(sql, (workspace_id, provider))
        return None if row is None else bytes(row[0])

    async def list_byok_providers(self, workspace_id: int) -> list[str]:
        sql = "SELECT provider FROM byok_keys WHERE workspace_id = ? ORDER BY provider"
        return [r[0] for r in await self.fetchall(sql, (workspace_id,))]

    async def all_byok_keys(self) -> list[ByokKey]:
        sql = "SELECT workspace_id, provider, ciphertext, master_key_id, updated_at FROM byok_keys ORDER BY 1, 2"
        return [ByokKey(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in await self.fetchall(sql)]

    async def reseal_byok_keys(self, reseal: Callable[[ByokKey], tuple[bytes, str] | None]) -> int:
        """Rewrite every BYOK blob as `reseal(row)` → (blob, master_key_id), or skip it on None.

        Reads and rewrites in one transaction: either every key moves or none does.
        """
        changed = 0
        async with self.transaction() as db:
            sql = "SELECT workspace_id, provider, ciphertext, master_key_id, updated_at FROM byok_keys"
            for r in await db.execute_fetchall(sql):
                result = reseal(ByokKey(r[0], r[1], bytes(r[2]), r[3], r[4]))
                if result is not None:
                    await db.execute(
                        "UPDATE byok_keys SET ciphertext = ?, master_key_id = ?, updated_at = ? "
                        "WHERE workspace_id = ? AND provider = ?",
                        (result[0], result[1], time.time(), r[0], r[1]),
                    )
                    changed += 1
        return changed

    # --- usage --------------------------------------------------------------------------------

    async def write_usage(self, admitted: Iterable[UsageRow], finished: Iterable[UsageRow]) -> None:
        """One transaction: admission rows (insert if new), final rows (upsert), key last-used times.

        The whole batch runs as one call on the writer connection's thread (aiosqlite's own
        dispatch, `_execute`, which its public methods use too): one thread hop per batch
        instead of five, which is most of what usage recording costs per request.
        """
        writer = self._writer
        async with self._write_lock:
            try:
                await writer._execute(usage_store.write_rows_sync, writer._conn, list(admitted), list(finished))  # reason: see docstring
            except (sqlite3.Error, ValueError) as exc:  # aiosqlite: ValueError once closed
                raise StoreUnavailable(f"cannot write to the store: {exc}") from exc

    async def mark_interrupted_usage(self) -> int:
        """Rows a previous process left in flight become `interrupted`; returns how many."""
        async with self.transaction() as db:
            return await usage_store.mark_interrupted(db)

    async def get_usage(self, request_id: str) -> UsageRow | None:
        return await usage_store.get_row(self, request_id)

    async def usage_summary(self, *, since: float | None = None, workspace: str | None = None) -> list[UsageTotal]:
        """Totals per workspace, lane and model for requests started at or after `since`."""
        if workspace is not None:
            await self.get_workspace(workspace)
        return await usage_store.summary(self, since, workspace)


__all__ = ["Store", "StoreError", "check_workspace_name"]
