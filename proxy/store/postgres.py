"""The PostgreSQL backend of the database facade (asyncpg pool).

`?` placeholders are rewritten to `$n` once per statement text and cached. Transactions are
READ COMMITTED on a pooled connection; a transaction that must serialize on a row reads it
with `tx.for_update`. Connection failures become StoreUnavailable naming the URL without its
password.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from proxy.store.db import Params, Row, T, Tx
from proxy.store.migrations import Migration, newer_schema
from proxy.store.rows import StoreUnavailable
from proxy.store_url import POSTGRESQL, StoreUrl

POOL_MIN, POOL_MAX = 1, 10
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0
MIGRATION_LOCK = 0x6F6B6D  # pg_advisory_xact_lock key: one migrator at a time across hosts
# Only what a broken connection or server raises: SQL errors (constraint, syntax) pass through.
_DOWN = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
         asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
         asyncpg.InternalClientError)  # raised by a connection the server has just closed
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")


@functools.lru_cache(maxsize=1024)
def to_dollar(sql: str) -> str:
    """`?` → `$1, $2, …`, leaving quoted strings and identifiers alone."""
    counter = 0

    def number(match: re.Match[str]) -> str:
        nonlocal counter
        if match.group(0) != "?":
            return match.group(0)
        counter += 1
        return f"${counter}"

    return _TOKEN.sub(number, sql)


def _status_count(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PgTx:
    for_update = " FOR UPDATE"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _status_count(await self._conn.execute(to_dollar(sql), *params))

    async def executemany(self, sql: str, params: Iterable[Params]) -> None:
        await self._conn.executemany(to_dollar(sql), params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row = await self._conn.fetchrow(to_dollar(sql), *params)
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(to_dollar(sql), *params)]


class PgDatabase:
    kind = POSTGRESQL

    def __init__(self, url: StoreUrl, pool: asyncpg.Pool) -> None:
        self.display = url.display
        self.path = None
        self._pool = pool

    def _down(self, exc: BaseException, doing: str) -> StoreUnavailable:
        return StoreUnavailable(f"cannot {doing} the store at {self.display}: {type(exc).__name__}: {exc}")

    @classmethod
    async def open(cls, url: StoreUrl, migrations: tuple[Migration, ...]) -> PgDatabase:
        assert url.dsn is not None
        try:
            pool = await asyncpg.create_pool(
                url.dsn, password=url.password.reveal() if url.password else None, min_size=POOL_MIN, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
            )
        except (*_DOWN, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(
                f"cannot connect to the store at {url.display}: {type(exc).__name__}: {exc}"
            ) from exc
        db = cls(url, pool)
        try:
            await db._migrate(migrations)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, _DOWN):
                raise db._down(exc, "open") from exc
            raise
        return db

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 10.0)
        except (TimeoutError, *_DOWN):
            self._pool.terminate()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTx]:
        try:
            conn = await self._pool.acquire()
        except _DOWN as exc:
            raise self._down(exc, "write to") from exc
        try:
            async with conn.transaction():
                yield PgTx(conn)
        except _DOWN as exc:
            raise self._down(exc, "write to") from exc
        finally:
            await self._pool.release(conn)

    async def _read(self, call: Callable[..., Awaitable[Any]], sql: str, params: Params) -> Any:
        try:
            return await call(to_dollar(sql), *params)
        except _DOWN as exc:
            raise self._down(exc, "read") from exc

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in await self._read(self._pool.fetch, sql, params)]

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        row = await self._read(self._pool.fetchrow, sql, params)
        return None if row is None else tuple(row)

    async def run_transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        async with self.transaction() as tx:
            return await work(tx)

    async def run_batch(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        async with self.transaction() as tx:
            return await work(tx)

    async def _migrate(self, migrations: tuple[Migration, ...]) -> int:
        """Each step in its own transaction under an advisory lock, re-reading the version."""
        latest = len(migrations)
        async with self._pool.acquire() as conn:
            for migration in (*migrations, None):
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                    await conn.execute("CREATE TABLE IF NOT EXISTS okm_schema (version INTEGER NOT NULL)")
                    current = await conn.fetchval("SELECT max(version) FROM okm_schema") or 0
                    if current > latest:
                        raise newer_schema(current, latest)
                    if migration is None or current >= migration.version:
                        continue
                    for statement in migration.statements:
                        await conn.execute(statement)
                    await conn.execute("DELETE FROM okm_schema")
                    await conn.execute("INSERT INTO okm_schema (version) VALUES ($1)", migration.version)
        return latest
