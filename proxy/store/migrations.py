"""Numbered schema migrations: schema.sql (SQLite) and schema_pg.sql (PostgreSQL), same numbers.

Parses DDL only; each backend applies it (SQLite under PRAGMA user_version, PostgreSQL in the
okm_schema table under an advisory lock). It never reads or rewrites the data the tables hold.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

from proxy.store.rows import SchemaError
from proxy.store_url import POSTGRESQL, SQLITE

_MARKER = re.compile(r"^-- migration (\d+):(.*)$", re.MULTILINE)
FILES = {SQLITE: "schema.sql", POSTGRESQL: "schema_pg.sql"}


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


def parse_migrations(text: str, *, split: bool = True) -> tuple[Migration, ...]:
    """Blocks headed `-- migration N: title`. Without `split` a block stays one script
    (PostgreSQL runs it whole, so `$$` function bodies need no statement splitter)."""
    marks = list(_MARKER.finditer(text))
    migrations = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        version = int(mark.group(1))
        if version != i + 1:
            raise SchemaError(f"schema: migration {version} is out of order (expected {i + 1})")
        body = text[mark.end() : end]
        statements = split_statements(body) if split else (body.strip(),)
        migrations.append(Migration(version, mark.group(2).strip(), statements))
    return tuple(migrations)


def load_migrations(kind: str = SQLITE) -> tuple[Migration, ...]:
    text = resources.files("proxy.store").joinpath(FILES[kind]).read_text(encoding="utf-8")
    return parse_migrations(text, split=kind == SQLITE)


def newer_schema(current: int, latest: int) -> SchemaError:
    return SchemaError(
        f"the database schema is version {current}, newer than this gateway knows ({latest}); "
        "upgrade the gateway or restore a matching backup"
    )
