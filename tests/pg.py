"""A real PostgreSQL for the tests: one fresh schema per test, dropped after.

The server is OKM_TEST_POSTGRES_URL (default: the local trust-auth server). A missing server
is an error, never a skip: CI sets the variable, so the PostgreSQL half of a suite cannot
silently vanish.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("OKM_TEST_POSTGRES_URL", DEFAULT_URL)


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A store URL whose search_path is a new, empty schema; the schema is dropped afterwards."""
    base = server_url()
    schema = "okm_test_" + secrets.token_hex(6)
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{base}{'&' if '?' in base else '?'}search_path={schema}"
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
