"""The store on both backends (a SQLite file, a PostgreSQL schema): migrations, workspaces, keys,
BYOK ciphertexts, secrecy at rest. Tests that name `store` or `store_url` run on each backend."""

from __future__ import annotations

import asyncio
import sqlite3
import stat

import pytest

from proxy.store import Store, keys
from proxy.store.migrations import load_migrations, parse_migrations, split_statements
from proxy.store.rows import (
    InvalidValue,
    KeyNotFound,
    SchemaError,
    StoreError,
    WorkspaceExists,
    WorkspaceNotFound,
)
from proxy.types import Secret
from proxy.workspaces.crypto import MasterKey, decrypt_provider_key, encrypt_provider_key, generate_master_key
from tests.pg import fresh_schema

PEPPER = Secret("test-pepper", "OKM_KEY_PEPPER")
MIGRATIONS = load_migrations()
LATEST = len(MIGRATIONS)


@pytest.fixture
async def store(store_url):
    s = await Store.open(store_url)
    yield s
    await s.close()


async def _version(s: Store) -> int:
    if s.kind == "sqlite":
        return (await s.fetchall("PRAGMA user_version"))[0][0]
    return (await s.fetchall("SELECT max(version) FROM okm_schema"))[0][0] or 0


async def _set_version(s: Store, version: int) -> None:
    async with s.transaction() as db:
        if s.kind == "sqlite":
            await db.execute(f"PRAGMA user_version = {version:d}")
        else:
            await db.execute("UPDATE okm_schema SET version = ?", (version,))


def _sql(path, query, params=()):
    with sqlite3.connect(path) as db:
        return db.execute(query, params).fetchall()


def _db_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_open_creates_folder_wal_and_latest_schema(tmp_path):
    path = tmp_path / "deep" / "er" / "okm.sqlite3"
    s = await Store.open(path)
    await s.close()
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _sql(path, "PRAGMA journal_mode") == [("wal",)]
    assert _sql(path, "PRAGMA user_version") == [(LATEST,)]
    assert _sql(path, "PRAGMA integrity_check") == [("ok",)]
    tables = {r[0] for r in _sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"workspaces", "api_keys", "byok_keys", "usage", "meta"} <= tables


@pytest.mark.parametrize("version", range(LATEST))
async def test_migrates_from_every_earlier_version(store_url, version):
    kind = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    old = await Store.open(store_url, migrations=load_migrations(kind)[:version])
    try:
        assert await _version(old) == version
        if version >= 1:  # data written by the old schema survives the upgrade
            async with old.transaction() as db:
                await db.execute("INSERT INTO workspaces (name, created_at) VALUES ('kept', 1.0)")
    finally:
        await old.close()
    s = await Store.open(store_url)
    try:
        assert await _version(s) == LATEST
        names = [w.name for w in await s.list_workspaces()]
        assert names == (["kept"] if version >= 1 else [])
        await s.create_workspace("after-upgrade")
        if kind == "sqlite":
            assert await s.fetchall("PRAGMA integrity_check") == [("ok",)]
    finally:
        await s.close()


async def test_reopening_at_latest_is_a_no_op(store_url):
    for _ in range(2):
        s = await Store.open(store_url)
        await s.create_workspace(f"ws{len(await s.list_workspaces())}")
        await s.close()
    s = await Store.open(store_url)
    try:
        assert await s.fetchall("SELECT count(*) FROM workspaces") == [(2,)]
        assert await _version(s) == LATEST
    finally:
        await s.close()


async def test_a_newer_database_is_refused(store_url):
    s = await Store.open(store_url)
    await _set_version(s, LATEST + 3)
    await s.close()
    with pytest.raises(SchemaError, match=f"version {LATEST + 3}, newer than this gateway knows"):
        await Store.open(store_url)


def test_migration_file_parsing():
    text = "-- migration 1: one\nCREATE TABLE a (x);\n-- migration 2: two\nCREATE TRIGGER t AFTER INSERT ON a\nBEGIN\n  SELECT 1;\nEND;\n"
    parsed = parse_migrations(text)
    assert [(m.version, m.title) for m in parsed] == [(1, "one"), (2, "two")]
    assert len(parsed[1].statements) == 1 and parsed[1].statements[0].endswith("END;")
    with pytest.raises(SchemaError, match="out of order"):
        parse_migrations("-- migration 2: skipped one\nCREATE TABLE a (x);\n")
    with pytest.raises(SchemaError, match="unterminated"):
        split_statements("CREATE TABLE a (x)")
    assert MIGRATIONS[0].version == 1 and all(m.statements for m in MIGRATIONS)


def test_both_backends_have_the_same_numbered_migrations():
    pg = load_migrations("postgresql")
    assert [(m.version, m.title) for m in pg] == [(m.version, m.title) for m in MIGRATIONS]


async def test_workspace_lifecycle(store):
    ws = await store.create_workspace("acme")
    assert (ws.name, ws.disabled, ws.byok_enabled, ws.rpm_limit, ws.stream_limit) == ("acme", False, False, None, None)
    with pytest.raises(WorkspaceExists, match="'acme' already exists"):
        await store.create_workspace("acme")
    for bad in ("", "Acme", "-x", "a b", "x" * 65, "a/b"):
        with pytest.raises(InvalidValue, match="invalid workspace name"):
            await store.create_workspace(bad)
    with pytest.raises(WorkspaceNotFound, match="'nope' does not exist"):
        await store.get_workspace("nope")
    with pytest.raises(WorkspaceNotFound):
        await store.set_workspace_disabled("nope", True)
    assert (await store.set_workspace_disabled("acme", True)).disabled
    assert not (await store.set_workspace_disabled("acme", False)).disabled
    assert (await store.set_byok_enabled("acme")).byok_enabled
    assert [w.name for w in await store.list_workspaces()] == ["acme"]
    assert (await store.get_workspace_by_id(ws.id)).name == "acme"


async def test_workspace_limits(store):
    await store.create_workspace("acme")
    ws = await store.set_workspace_limits("acme", rpm_limit=60)
    assert (ws.rpm_limit, ws.stream_limit) == (60, None)
    ws = await store.set_workspace_limits("acme", stream_limit=4)
    assert (ws.rpm_limit, ws.stream_limit) == (60, 4)
    ws = await store.set_workspace_limits("acme", rpm_limit=None)
    assert (ws.rpm_limit, ws.stream_limit) == (None, 4)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidValue, match="rpm_limit must be a whole number >= 1"):
            await store.set_workspace_limits("acme", rpm_limit=bad)


async def test_api_keys(store):
    ws = await store.create_workspace("acme")
    api_key, key = await store.create_api_key("acme", PEPPER, "ci")
    assert keys.is_well_formed(key.reveal()) and keys.key_id_of(key.reveal()) == api_key.id
    assert key.reveal() not in repr(key) and key.reveal() not in repr(api_key)
    assert api_key.masked == keys.mask_key(key.reveal())
    assert (api_key.name, api_key.last_used_at, api_key.revoked) == ("ci", None, False)
    [entry] = await store.auth_entries()  # what the authenticator caches: the keyed hash, never the key
    assert entry.key_id == api_key.id and entry.workspace == ws
    assert entry.key_hash == keys.hash_api_key(key.reveal(), PEPPER)
    assert entry.key_hash != keys.hash_api_key(key.reveal(), Secret("other"))
    with pytest.raises(WorkspaceNotFound):
        await store.create_api_key("nope", PEPPER)
    with pytest.raises(InvalidValue):
        await store.create_api_key("acme", PEPPER, "bad\nname")

    revoked = await store.revoke_api_key(api_key.id)
    assert revoked.revoked
    assert (await store.revoke_api_key(api_key.id)).revoked_at == revoked.revoked_at
    with pytest.raises(KeyNotFound, match="'nokey' does not exist"):
        await store.revoke_api_key("nokey")
    await store.touch_keys({api_key.id: 1234.0})
    assert [k.last_used_at for k in await store.list_api_keys("acme")] == [1234.0]


async def test_auth_version_moves_on_auth_changes_only(store):
    versions = [await store.auth_version()]
    await store.create_workspace("acme")
    versions.append(await store.auth_version())
    api_key, _ = await store.create_api_key("acme", PEPPER)
    versions.append(await store.auth_version())
    await store.touch_keys({api_key.id: 99.0})  # last-used writes don't invalidate caches
    assert await store.auth_version() == versions[-1]
    await store.revoke_api_key(api_key.id)
    versions.append(await store.auth_version())
    await store.set_workspace_disabled("acme", True)
    versions.append(await store.auth_version())
    assert versions == sorted(set(versions))


async def test_byok_keys_are_ciphertext_and_reseal_is_all_or_nothing(store):
    ws = await store.create_workspace("acme")
    master = MasterKey.from_base64(generate_master_key(), "OKM_MASTER_KEY")
    for provider in ("openai", "anthropic"):
        blob = encrypt_provider_key(master, ws.id, provider, f"sk-{provider}-secret")
        await store.put_byok_key(ws.id, provider, blob, master.key_id)
    assert await store.list_byok_providers(ws.id) == ["anthropic", "openai"]
    assert await store.get_byok_key(ws.id, "mistral") is None
    blob = await store.get_byok_key(ws.id, "openai")
    assert decrypt_provider_key(master, ws.id, "openai", blob).reveal() == "sk-openai-secret"
    rows = await store.all_byok_keys()
    assert [(r.provider, r.master_key_id) for r in rows] == [("anthropic", master.key_id), ("openai", master.key_id)]
    assert "sk-" not in repr(rows)

    calls = []

    def failing(row):
        calls.append(row.provider)
        if len(calls) == 2:
            raise ValueError("boom")
        return b"new", "other"

    with pytest.raises(ValueError):
        await store.reseal_byok_keys(failing)
    assert [r.master_key_id for r in await store.all_byok_keys()] == [master.key_id] * 2
    assert await store.reseal_byok_keys(lambda row: None) == 0


async def test_no_key_or_byok_plaintext_in_the_database_files(tmp_path):
    path = tmp_path / "okm.sqlite3"
    s = await Store.open(path)
    ws = await s.create_workspace("acme")
    _, key = await s.create_api_key("acme", PEPPER, "ci")
    master = MasterKey.from_base64(generate_master_key(), "OKM_MASTER_KEY")
    byok_plain = "sk-proj-PLAINTEXTprovider0123456789"
    await s.put_byok_key(ws.id, "openai", encrypt_provider_key(master, ws.id, "openai", byok_plain), master.key_id)
    secret_body = key.reveal()[len(keys.PREFIX) + keys.KEY_ID_LEN + 1 :]
    for when in ("open", "closed"):
        data = _db_bytes(path)
        assert b"acme" in data, when  # sanity: we are reading the right files
        for needle in (key.reveal(), secret_body, byok_plain, PEPPER.reveal()):
            assert needle.encode() not in data, (when, needle[:8])
        if when == "open":
            await s.close()


async def test_no_key_or_byok_plaintext_in_postgresql():
    async with fresh_schema() as url:
        store = await Store.open(url)
        try:
            await _check_no_plaintext_in_postgresql(store)
        finally:
            await store.close()


async def _check_no_plaintext_in_postgresql(store: Store) -> None:
    ws = await store.create_workspace("acme")
    _, key = await store.create_api_key("acme", PEPPER, "ci")
    master = MasterKey.from_base64(generate_master_key(), "OKM_MASTER_KEY")
    byok_plain = "sk-proj-PLAINTEXTprovider0123456789"
    await store.put_byok_key(ws.id, "openai", encrypt_provider_key(master, ws.id, "openai", byok_plain), master.key_id)
    tables = [r[0] for r in await store.fetchall(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
    dump = ""
    for table in tables:
        dump += "".join(r[0] for r in await store.fetchall(f"SELECT t::text FROM {table} t"))
    assert "acme" in dump and "api_keys" in tables
    for needle in (key.reveal(), key.reveal()[len(keys.PREFIX) + keys.KEY_ID_LEN + 1 :], byok_plain, PEPPER.reveal()):
        assert needle not in dump
        assert needle.encode().hex() not in dump  # bytea prints as hex


async def test_two_processes_writing_at_once_never_fail(store_url):
    one, two = await Store.open(store_url), await Store.open(store_url)
    try:
        async def make(s, prefix):
            for i in range(40):
                await s.create_workspace(f"{prefix}{i}")
                await s.create_api_key(f"{prefix}{i}", PEPPER)

        await asyncio.gather(make(one, "a"), make(two, "b"), make(one, "c"), make(two, "d"))
        assert len(await one.list_workspaces()) == 160
        assert len(await two.auth_entries()) == 160
    finally:
        await one.close()
        await two.close()


async def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open the store"):
        await Store.open(blocker / "okm.sqlite3")


async def test_a_postgresql_server_that_is_down_is_a_clear_error_without_the_password():
    url = "postgresql://okm:hunter2-secret@127.0.0.1:1/okm"
    with pytest.raises(StoreError) as caught:
        await Store.open(url)
    message = str(caught.value)
    assert "cannot connect to the store at postgresql://okm:***@127.0.0.1:1/okm" in message
    assert "hunter2" not in message and "hunter2" not in repr(caught.value.__cause__)


async def test_a_bad_store_url_is_refused():
    for bad in ("mysql://x@h/db", "sqlite://relative", "postgresql://x@/db", "postgresql://x@h:99999/db"):
        with pytest.raises(InvalidValue, match="store URL"):
            await Store.open(bad)
