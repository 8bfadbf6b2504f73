"""`python -m proxy store copy --from URL --to URL`: move a whole store between backends.

Both stores are migrated to the same version first; the target must be empty. Every table is
copied in schema order (a table comes after the tables it references) in one target
transaction, then row counts and every workspace's balance are compared. Nothing is deleted
from the source.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from proxy.config import Config
from proxy.store import Store
from proxy.store.migrations import FILES
from proxy.store.rows import StoreError
from proxy.store_url import SQLITE

SKIP = ("meta",)  # the target keeps its own auth-version counter
CHUNK = 1000
_CREATE = re.compile(r"^CREATE TABLE (\w+)", re.MULTILINE)
_DROP = re.compile(r"^DROP TABLE (\w+)", re.MULTILINE)


class CopyRefused(StoreError):
    pass


def table_order() -> list[str]:
    from importlib import resources

    text = resources.files("proxy.store").joinpath(FILES[SQLITE]).read_text(encoding="utf-8")
    dropped = set(_DROP.findall(text))  # a later migration removed it
    return [t for t in _CREATE.findall(text) if t not in SKIP and t not in dropped]


async def _columns(store: Store, table: str) -> dict[str, str]:
    """Column name → declared type, in table order."""
    if store.kind == SQLITE:
        return {r[1]: str(r[2]).upper() for r in await store.fetchall(f"PRAGMA table_info({table})")}
    rows = await store.fetchall(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))
    return {r[0]: str(r[1]).upper() for r in rows}


async def _count(store: Store, table: str) -> int:
    row = (await store.fetchall(f"SELECT count(*) FROM {table}"))[0]
    return int(row[0])


def _convert(value: Any, target_type: str) -> Any:
    if value is None:
        return None
    if "DOUBLE" in target_type or target_type == "REAL":
        return float(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


async def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Copy every row; returns table → rows copied. Raises CopyRefused for a non-empty target."""
    tables = table_order()
    busy = [t for t in tables if await _count(target, t)]
    if busy:
        raise CopyRefused(f"the target store is not empty (table {busy[0]} has rows); copy only into an empty store")
    copied: dict[str, int] = {}
    async with target.transaction() as tx:
        for table in tables:
            wanted = await _columns(target, table)
            names = [c for c in await _columns(source, table) if c in wanted]
            cols = ", ".join(names)
            insert = f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' for _ in names)})"
            rows = await source.fetchall(f"SELECT {cols} FROM {table} ORDER BY {names[0]}")
            types = [wanted[c] for c in names]
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start : start + CHUNK]
                await tx.executemany(insert, [tuple(_convert(v, t) for v, t in zip(r, types, strict=True)) for r in chunk])
            copied[table] = len(rows)
        if target.kind != SQLITE:  # identity columns continue after the copied ids
            for table in tables:
                if "id" in await _columns(target, table) and await tx.fetchone(
                        "SELECT pg_get_serial_sequence(?, 'id')", (table,)) not in (None, (None,)):
                    await tx.fetchone(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)")
    await _verify(source, target, tables)
    return copied


async def _verify(source: Store, target: Store, tables: list[str]) -> None:
    for table in tables:
        a, b = await _count(source, table), await _count(target, table)
        if a != b:
            raise StoreError(f"verification failed: {table} has {a} rows in the source, {b} in the target")
    for workspace in await source.list_workspaces():
        mine, theirs = await source.billing_account(workspace.name), await target.billing_account(workspace.name)
        if (mine.credits_micros - mine.charges_micros) != (theirs.credits_micros - theirs.charges_micros):
            raise StoreError(f"verification failed: workspace {workspace.name}'s balance differs")


async def store_copy(args: argparse.Namespace, config: Config) -> int:
    del config  # the two URLs say everything
    try:
        source = await Store.open(args.source)
        try:
            target = await Store.open(args.target)
            try:
                copied = await copy_store(source, target)
            finally:
                await target.close()
        finally:
            await source.close()
    except StoreError as exc:
        print(f"error: {exc}")
        return 1
    total = sum(copied.values())
    print(f"copied {total} rows in {len(copied)} tables from {source.url.display} to {target.url.display}; "
          "row counts and every workspace's balance verified")
    return 0


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    store = sub.add_parser("store", help="store maintenance", parents=parents)
    group = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")
    copy = group.add_parser("copy", help="copy a whole store into an empty one (SQLite <-> PostgreSQL)", parents=parents)
    copy.add_argument("--from", dest="source", required=True, metavar="URL", help="sqlite:///PATH or postgresql://…")
    copy.add_argument("--to", dest="target", required=True, metavar="URL", help="an empty store (created if needed)")
    copy.set_defaults(func=store_copy)
