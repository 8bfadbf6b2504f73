"""Numbered schema migrations read from schema.sql and applied under PRAGMA user_version.

Parses and applies DDL only; it never reads or rewrites the data the tables hold.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

import aiosqlite

from proxy.store.rows import SchemaError

_MARKER = re.compile(r"^-- migration (\d+):(.*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    title: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """SQL text → complete statements (trigger bodies with inner `;` stay whole)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(part.strip().startswith("--") for part in buffer.strip().splitlines()):
        raise SchemaError(f"schema.sql: unterminated statement: {buffer.strip()[:60]}")
    return tuple(statements)


def parse_migrations(text: str) -> tuple[Migration, ...]:
    marks = list(_MARKER.finditer(text))
    migrations = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        version = int(mark.group(1))
        if version != i + 1:
            raise SchemaError(f"schema.sql: migration {version} is out of order (expected {i + 1})")
        migrations.append(Migration(version, mark.group(2).strip(), split_statements(text[mark.end() : end])))
    return tuple(migrations)


def load_migrations() -> tuple[Migration, ...]:
    return parse_migrations(resources.files("proxy.store").joinpath("schema.sql").read_text(encoding="utf-8"))


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
                raise SchemaError(
                    f"the database schema is version {current}, newer than this gateway knows ({latest}); "
                    "upgrade the gateway or restore a matching backup"
                )
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
