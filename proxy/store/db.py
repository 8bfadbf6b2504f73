"""The database facade the store's SQL runs on: one interface, a SQLite and a PostgreSQL backend.

SQL is written once with `?` placeholders; a backend adapts it (PostgreSQL rewrites to `$n`).
Rows come back as plain tuples. Nothing above `proxy.store` sees this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

Row = tuple[Any, ...]
Params = Sequence[Any]
T = TypeVar("T")


class Tx(Protocol):
    """An open transaction: every call runs inside it; it commits when its block ends cleanly.

    `for_update` is appended to a SELECT that reads a row the transaction then changes:
    " FOR UPDATE" on PostgreSQL (row lock), "" on SQLite (BEGIN IMMEDIATE already serializes).
    """

    for_update: str

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, params: Iterable[Params]) -> None: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Protocol):
    kind: str  # "sqlite" or "postgresql"
    display: str  # the URL, safe to log

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """One transaction. SQLite: BEGIN IMMEDIATE on the single writer. PostgreSQL: READ
        COMMITTED on a pooled connection; lock rows with SELECT … FOR UPDATE where it matters."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def run_batch(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Like run_transaction, in a transaction of its own: never grouped with other works (the
        usage writer's batches, which are groups already)."""
        ...

    async def run_transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """`work(tx)` inside one transaction, committed when it returns. SQLite runs it whole on the
        writer's thread (one hop instead of one per statement), so `work` must await nothing but
        `tx`'s methods; PostgreSQL runs it like `transaction()`."""
        ...

    async def close(self) -> None: ...
