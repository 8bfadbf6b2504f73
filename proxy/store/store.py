"""The store: workspaces, API keys, BYOK ciphertexts and usage rows, as dataclasses.

Backend-neutral: the SQL here (and in usage_sql.py, ...) runs on the database facade (db.py),
SQLite or PostgreSQL, chosen by the store URL. It never sees a key or BYOK key in clear:
callers hand it hashes and blobs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from proxy.store import keys, limits_sql, pool_health_sql, retention_sql
from proxy.store import usage_sql as usage_store
from proxy.store.accounts_sql import Accounts
from proxy.store.billing_store import BillingStore
from proxy.store.console_sql import ConsoleReads
from proxy.store.db import Database, Params, Row, Tx
from proxy.store.migrations import Migration, load_migrations
from proxy.store.rows import (
    KEEP,
    ApiKey,
    AuthEntry,
    ByokKey,
    InvalidValue,
    Keep,
    KeyNotFound,
    PoolHealthRow,
    StoreError,
    UsageRow,
    UsageTotal,
    Workspace,
    WorkspaceExists,
    WorkspaceNotFound,
    check_workspace_limit,
)
from proxy.store.sqlite import SqliteDatabase
from proxy.store_url import POSTGRESQL, StoreUrl, StoreUrlError, parse_store_url
from proxy.types import Secret

WORKSPACE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
KEY_NAME_MAX = 100
_WS_COLUMNS = "id, name, created_at, disabled_at, byok_enabled, rpm_limit, stream_limit, billing_mode, budget_micros"
_KEY_COLUMNS = "id, workspace_id, name, masked, created_at, last_used_at, revoked_at, spend_limit_micros, spent_micros"
_WS_END = 3 + len(_WS_COLUMNS.split(", "))  # where a workspace's columns end in an auth_entries row


def _int(value: Any) -> int | None:
    return None if value is None else int(value)  # PostgreSQL BIGINT sums and columns may come back as Decimal


def _workspace(row: Sequence[Any]) -> Workspace:
    return Workspace(row[0], row[1], row[2], row[3] is not None, bool(row[4]), row[5], row[6], row[7], _int(row[8]))


def _api_key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(row[0], row[1], row[2], row[3], row[4], row[5], row[6], _int(row[7]), int(row[8]))


def check_workspace_name(name: str) -> str:
    if not WORKSPACE_NAME.fullmatch(name):
        raise InvalidValue(
            f"invalid workspace name '{name[:80]}': use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_limit(field: str, value: int | Keep | None) -> None:
    if value is not KEEP:
        check_workspace_limit(field, value)


def as_store_url(target: str | os.PathLike[str] | StoreUrl) -> StoreUrl:
    """A StoreUrl, a `sqlite:`/`postgresql:` URL string, or a plain SQLite file path."""
    if isinstance(target, StoreUrl):
        return target
    text = os.fspath(target)
    if "://" in text:
        try:
            return parse_store_url(text, Path.cwd())
        except StoreUrlError as exc:
            raise InvalidValue(f"store URL: {exc}") from exc
    return StoreUrl.sqlite(Path(text))


class Store(BillingStore):
    def __init__(self, db: Database, url: StoreUrl) -> None:
        self.db = db
        self.url = url
        self.path: Path | None = url.path  # the SQLite file; None on PostgreSQL
        self.accounts = Accounts(self)  # console users, memberships, sessions, links
        self.console = ConsoleReads(self)  # the console pages' reads, BYOK hints and requests

    @property
    def kind(self) -> str:
        return self.db.kind

    @classmethod
    async def open(
        cls, target: str | os.PathLike[str] | StoreUrl, migrations: tuple[Migration, ...] | None = None
    ) -> Store:
        """Open (creating if needed) and migrate the store at `target` (URL or SQLite path)."""
        url = as_store_url(target)
        migrations = load_migrations(url.kind) if migrations is None else migrations
        db: Database
        if url.kind == POSTGRESQL:
            from proxy.store.postgres import PgDatabase  # asyncpg (~3 MiB of RSS) only for a PostgreSQL store

            db = await PgDatabase.open(url, migrations)
        else:
            assert url.path is not None
            db = await SqliteDatabase.open(url.path, migrations)
        return cls(db, url)

    async def close(self) -> None:
        await self.db.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One transaction on the backend; rolled back on any error."""
        async with self.db.transaction() as tx:
            yield tx

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self.db.fetchall(sql, params)

    async def _one(self, sql: str, params: Params) -> Row | None:
        return await self.db.fetchone(sql, params)

    # --- workspaces -------------------------------------------------------------------------

    async def create_workspace(self, name: str) -> Workspace:
        check_workspace_name(name)
        async with self.transaction() as db:
            if await db.fetchone("SELECT 1 FROM workspaces WHERE name = ?", (name,)):
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
            if await db.execute(f"UPDATE workspaces SET {assignments} WHERE name = ?", (*params, name)) == 0:
                raise WorkspaceNotFound(name)
        return await self.get_workspace(name)

    async def set_workspace_disabled(self, name: str, disabled: bool) -> Workspace:
        """Disable (keeping the first disable time) or re-enable a workspace."""
        if disabled:
            return await self._update_workspace(name, "disabled_at = COALESCE(disabled_at, ?)", (time.time(),))
        return await self._update_workspace(name, "disabled_at = NULL", ())

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

    async def create_api_key(self, workspace_name: str, pepper: Secret, name: str = "",
                             spend_limit_micros: int | None = None) -> tuple[ApiKey, Secret]:
        """Issue a key (optionally with a lifetime spend limit): only its hash and masked form are
        stored; the key is returned once."""
        if len(name) > KEY_NAME_MAX or not name.isprintable():
            raise InvalidValue(f"key name must be printable text of at most {KEY_NAME_MAX} characters")
        if spend_limit_micros is not None and spend_limit_micros < 0:
            raise InvalidValue("a key's spend limit must not be negative")
        key_id, key = keys.generate_api_key()
        key_hash = keys.hash_api_key(key, pepper)
        async with self.transaction() as db:
            row = await db.fetchone("SELECT id FROM workspaces WHERE name = ?", (workspace_name,))
            if row is None:
                raise WorkspaceNotFound(workspace_name)
            await db.execute(
                "INSERT INTO api_keys (id, workspace_id, name, key_hash, masked, created_at, spend_limit_micros) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, row[0], name, key_hash, keys.mask_key(key), time.time(), spend_limit_micros),
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
            if await db.execute(sql, (time.time(), key_id)) == 0:
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
            "b.provider, k.spend_limit_micros FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id "
            "LEFT JOIN byok_keys b ON b.workspace_id = w.id ORDER BY k.id"
        )
        workspaces: dict[int, Workspace] = {}
        providers: dict[str, set[str]] = {}
        heads: dict[str, Row] = {}
        for row in rows:
            heads.setdefault(row[0], row)
            found = providers.setdefault(row[0], set())
            if row[_WS_END] is not None:
                found.add(row[_WS_END])
        entries = []
        for key_id, row in heads.items():
            workspace = workspaces.setdefault(row[3], _workspace(row[3:_WS_END]))
            entries.append(AuthEntry(key_id, bytes(row[1]), row[2] is not None, workspace, frozenset(providers[key_id]),
                                     _int(row[_WS_END + 1])))
        return entries

    async def touch_keys(self, last_used: Mapping[str, float]) -> None:
        if last_used:
            async with self.transaction() as db:
                await usage_store.touch_keys(db, last_used)

    # --- BYOK keys (ciphertext only) ---------------------------------------------------------

    async def put_byok_key(self, workspace_id: int, provider: str, blob: bytes, key_id: str,
                           last4: str | None = None) -> None:
        """Store (or replace) a sealed key; `last4` is the only plaintext kept, for recognition."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO byok_keys (workspace_id, provider, ciphertext, master_key_id, updated_at, last4) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workspace_id, provider) DO UPDATE SET "
                "ciphertext = excluded.ciphertext, master_key_id = excluded.master_key_id, "
                "updated_at = excluded.updated_at, last4 = excluded.last4",
                (workspace_id, provider, blob, key_id, time.time(), last4),
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
            for r in await db.fetchall(sql):
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

        Runs as one backend batch: on SQLite a single hop to the writer's thread per batch.
        """
        rows, finals = list(admitted), list(finished)
        await self.db.run_batch(lambda tx: usage_store.write(tx, rows, finals))

    async def sweep_usage(self, older_than: float) -> int:
        """Retention: final usage rows started before `older_than` (epoch seconds) are added to
        usage_daily and removed, in one transaction per hour of rows; returns how many."""
        return await retention_sql.sweep(self.db, older_than)

    # --- limits shared across workers and hosts (limits_sql.py) --------------------------------

    async def take_rate_token(self, workspace_id: int, rpm: int, now: float) -> float | None:
        """None: one request admitted; else seconds until the workspace's next token."""
        async with self.transaction() as tx:
            return await limits_sql.take_token(tx, workspace_id, rpm, now)

    async def take_stream_lease(self, lease_id: str, workspace_id: int, cap: int, now: float, ttl_s: float) -> bool:
        async with self.transaction() as tx:
            return await limits_sql.take_lease(tx, lease_id, workspace_id, cap, now, ttl_s)

    async def drop_stream_leases(self, lease_ids: Sequence[str]) -> None:
        if lease_ids:
            async with self.transaction() as tx:
                await limits_sql.drop_leases(tx, lease_ids)

    async def renew_stream_leases(self, lease_ids: Sequence[str], expires_at: float) -> None:
        if lease_ids:
            async with self.transaction() as tx:
                await limits_sql.renew_leases(tx, lease_ids, expires_at)

    async def pool_health(self) -> dict[str, PoolHealthRow]:
        """Every pool account's shared health (pool_health_sql.py)."""
        return {row.account: row for row in map(pool_health_sql.to_row, await self.fetchall(pool_health_sql.SELECT))}

    async def merge_pool_health(self, work: pool_health_sql.Merge) -> dict[str, PoolHealthRow]:
        """`work` (pure: all rows → the changed ones) runs once under the merge lock; returns every row."""
        lock = self.kind == POSTGRESQL
        return await self.db.run_transaction(lambda tx: pool_health_sql.merge(tx, work, lock=lock))

    async def get_usage(self, request_id: str) -> UsageRow | None:
        return await usage_store.get_row(self.db, request_id)

    async def usage_summary(self, *, since: float | None = None, workspace: str | None = None) -> list[UsageTotal]:
        """Totals per workspace, lane and model for requests started at or after `since`."""
        if workspace is not None:
            await self.get_workspace(workspace)
        return await usage_store.summary(self.db, since, workspace)


__all__ = ["Store", "StoreError", "check_workspace_name"]
