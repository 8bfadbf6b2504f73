"""The SQLite backend of the database facade (aiosqlite): WAL, one writer, one reader.

Writes go through one connection, one BEGIN IMMEDIATE transaction at a time; reads use a
second, read-only connection (WAL lets both run at once). A busy file waits BUSY_TIMEOUT_MS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from proxy.store.db import Params, Row, T, Tx
from proxy.store.migrations import Migration, newer_schema
from proxy.store.rows import StoreUnavailable
from proxy.store_url import SQLITE

BUSY_TIMEOUT_MS = 5000


async def _connect(target: str | Path, *, uri: bool = False) -> aiosqlite.Connection:
    db = await aiosqlite.connect(target, uri=uri, isolation_level=None)
    await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return db


class SqliteTx:
    for_update = ""  # BEGIN IMMEDIATE holds the write lock for the whole transaction

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._db.execute(sql, params) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, params: Iterable[Params]) -> None:
        await self._db.executemany(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._db.execute_fetchall(sql, params)
        return tuple(rows[0]) if rows else None  # type: ignore[index]  # reason: execute_fetchall returns a list

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in await self._db.execute_fetchall(sql, params)]


class InlineTx:
    """A Tx over the plain sqlite3 connection, for work run whole on the writer's thread: its
    methods are coroutines that never suspend, so the work can be driven to its end in one go.
    One cursor serves every statement of a group (sqlite3 resets it at each execute): a cursor per
    statement cost ~0.3 us each, three or four statements per hold."""

    for_update = ""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._cursor = db.cursor()

    async def execute(self, sql: str, params: Params = ()) -> int:
        return self._cursor.execute(sql, params).rowcount

    async def executemany(self, sql: str, params: Iterable[Params]) -> None:
        self._cursor.executemany(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = self._cursor.execute(sql, params).fetchall()  # read to its end: no statement left open
        return tuple(rows[0]) if rows else None

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in self._cursor.execute(sql, params).fetchall()]


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its result (it awaits only InlineTx methods)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]  # reason: StopIteration.value is untyped
    coro.close()
    raise RuntimeError("work run on the SQLite writer's thread awaited something other than its transaction")


Outcome = tuple[bool, Any]  # (True, result) or (False, the exception the work raised)


def _run_group(db: sqlite3.Connection, works: Sequence[Callable[[Tx], Awaitable[Any]]]) -> list[Outcome]:
    """Group commit: all works in one BEGIN IMMEDIATE … COMMIT, each isolated from the others' failures.

    Optimistic: the works run one after another with no savepoint (two statements fewer each,
    the common case); only if one raises is the whole group rolled back and run again with a
    savepoint per work, so the one that raises is rolled back alone and the others still commit.
    A work is SQL only (it awaits nothing but its transaction), so running it again is safe."""
    db.execute("BEGIN IMMEDIATE")
    try:
        try:
            tx = InlineTx(db)
            outcomes: list[Outcome] = [(True, _drive(_started(work, tx))) for work in works]
        except Exception:
            _rollback(db)
            return _run_isolated(db, works)
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    return outcomes


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


def _started(work: Callable[[Tx], Awaitable[Any]], tx: InlineTx) -> Coroutine[Any, Any, Any]:
    pending = work(tx)
    assert isinstance(pending, Coroutine)  # reason: an async function's call, driven here
    return pending


def _run_isolated(db: sqlite3.Connection, works: Sequence[Callable[[Tx], Awaitable[Any]]]) -> list[Outcome]:
    """The group again, each work in its own savepoint: one that raises is rolled back alone."""
    outcomes: list[Outcome] = []
    tx = InlineTx(db)
    db.execute("BEGIN IMMEDIATE")
    try:
        for work in works:
            db.execute("SAVEPOINT okm_work")
            try:
                outcomes.append((True, _drive(_started(work, tx))))
            except Exception as exc:
                db.execute("ROLLBACK TO okm_work")
                outcomes.append((False, exc))
            db.execute("RELEASE okm_work")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    return outcomes


def _run_alone(db: sqlite3.Connection, work: Callable[[Tx], Awaitable[T]]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result: T = _drive(_started(work, InlineTx(db)))
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    return result


class SqliteDatabase:
    kind = SQLITE

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self.display = f"sqlite:///{path}"
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._queued: list[tuple[Callable[[Tx], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._leader: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: Path, migrations: tuple[Migration, ...]) -> SqliteDatabase:
        """Open (creating if needed) and migrate the database at `path`."""
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
            await migrate(writer, migrations)
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
    async def transaction(self) -> AsyncIterator[SqliteTx]:
        """One BEGIN IMMEDIATE … COMMIT on the writer; rolled back on any error."""
        async with self._write_lock:
            try:
                if self._writer.in_transaction:  # left open by a task cancelled mid-rollback
                    await self._writer.execute("ROLLBACK")
                await self._writer.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, ValueError) as exc:  # aiosqlite: ValueError once closed
                raise StoreUnavailable(f"cannot write to the store: {exc}") from exc
            try:
                yield SqliteTx(self._writer)
                await self._writer.execute("COMMIT")
            except BaseException as exc:
                if self._writer.in_transaction:
                    # A task cancelled while its COMMIT is queued on the writer's thread: that COMMIT
                    # still runs first, so this ROLLBACK may find no transaction. The original error wins.
                    with contextlib.suppress(sqlite3.Error, ValueError):
                        await self._writer.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(f"cannot write to the store: {exc}") from exc
                raise

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return [tuple(r) for r in await self._reader.execute_fetchall(sql, params)]
        except (sqlite3.Error, ValueError) as exc:  # aiosqlite: ValueError once closed
            raise StoreUnavailable(f"cannot read the store: {exc}") from exc

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def run_transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """`work` whole on the writer's thread, with every other work queued meanwhile, in one
        BEGIN IMMEDIATE … COMMIT (one savepoint each): one hop and one commit per group, however
        many requests wait (the prepaid holds under load). Each work still sees the ones before
        it, as if it ran alone after them."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, done))
        if self._leader is None:  # one task per group, tied to no caller: a caller that leaves strands no one
            self._leader = asyncio.ensure_future(self._run_queued())
        return await done

    async def _run_queued(self) -> None:
        try:
            async with self._write_lock:
                while self._queued:  # what queued while a group ran is the next group
                    group, self._queued = self._queued, []
                    await self._run_group(group)
        finally:
            self._leader = None

    async def _run_group(self, group: list[tuple[Callable[[Tx], Awaitable[Any]], asyncio.Future[Any]]]) -> None:
        writer = self._writer
        try:
            outcomes: list[Outcome] = await writer._execute(_run_group, writer._conn, [w for w, _ in group])  # reason: the same private dispatch as run_batch
        except (sqlite3.Error, ValueError) as exc:  # aiosqlite: ValueError once closed
            outcomes = [(False, StoreUnavailable(f"cannot write to the store: {exc}"))] * len(group)
        except BaseException:
            for _, done in group:
                if not done.done():
                    done.set_exception(StoreUnavailable("the store closed while writing"))
            raise
        for (_, done), (ok, value) in zip(group, outcomes, strict=True):
            if done.done():  # its caller left
                continue
            if ok:
                done.set_result(value)
            elif isinstance(value, sqlite3.Error):
                done.set_exception(StoreUnavailable(f"cannot write to the store: {value}"))
            else:
                done.set_exception(value)

    async def run_batch(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """`work` whole on the writer's thread in its own transaction, as one call through
        aiosqlite's own dispatch (`_execute`, which its public methods use too): one thread hop
        per usage batch instead of one per statement, which is most of what recording costs."""
        writer = self._writer
        async with self._write_lock:
            try:
                return await writer._execute(_run_alone, writer._conn, work)  # type: ignore[no-any-return]  # reason: see docstring
            except (sqlite3.Error, ValueError) as exc:  # aiosqlite: ValueError once closed
                raise StoreUnavailable(f"cannot write to the store: {exc}") from exc


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(db: aiosqlite.Connection, migrations: tuple[Migration, ...]) -> int:
    """Bring the database up to the last migration, one transaction per step; return the version.

    Safe to run from several processes at once: each step re-reads user_version inside its
    BEGIN IMMEDIATE, so a step another process already applied is skipped.
    """
    latest = len(migrations)
    for migration in migrations:
        await db.execute("BEGIN IMMEDIATE")
        try:
            current = await schema_version(db)
            if current > latest:
                raise newer_schema(current, latest)
            if current < migration.version:
                for statement in migration.statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {migration.version:d}")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")
    if not migrations:
        return await schema_version(db)
    return latest
