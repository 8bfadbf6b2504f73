"""`python -m proxy store copy`: SQLite → PostgreSQL → SQLite, counts and balances verified,
a non-empty target refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from proxy.store import Store
from proxy.types import Secret
from tests.pg import fresh_schema

ROOT = Path(__file__).resolve().parents[1]
PEPPER = Secret("copy-pepper")


async def _fill(url: str) -> str:
    store = await Store.open(url)
    try:
        ws = await store.create_workspace("acme")
        await store.create_workspace("beta")
        _, key = await store.create_api_key("acme", PEPPER, "ci")
        await store.put_byok_key(ws.id, "openai", b"\x00ciphertext\xff", "mk1")
        await store.add_ledger_entry("acme", 25_000_000, "topup", "first", "ops")
        return key.reveal()
    finally:
        await store.close()


def _copy(source: str, target: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.yaml"
    config.write_text("store: {path: unused.sqlite3}\n")
    return subprocess.run(
        [sys.executable, "-m", "proxy", "store", "copy", "--from", source, "--to", target, "--config", str(config)],
        cwd=ROOT, env={**os.environ, "OKM_KEY_PEPPER": "x"}, capture_output=True, text=True, timeout=60,
    )


async def _summary(url: str) -> tuple:
    store = await Store.open(url)
    try:
        entries = sorted((e.key_id, e.key_hash, e.workspace.name, sorted(e.byok_providers)) for e in await store.auth_entries())
        balance = await store.billing_account("acme")
        new = await store.create_workspace("after-copy")  # ids continue after the copied ones
        return entries, balance.credits_micros - balance.charges_micros, new.id > 2
    finally:
        await store.close()


async def test_sqlite_to_postgresql_and_back(tmp_path: Path) -> None:
    first = f"sqlite:///{tmp_path / 'first.sqlite3'}"
    await _fill(first)
    async with fresh_schema() as pg:
        done = _copy(first, pg, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "row counts and every workspace's balance verified" in done.stdout
        again = _copy(first, pg, tmp_path)  # the target is not empty any more
        assert again.returncode == 1 and "the target store is not empty" in again.stdout
        back = f"sqlite:///{tmp_path / 'back.sqlite3'}"
        done = _copy(pg, back, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        original, on_pg, returned = await _summary(first), await _summary(pg), await _summary(back)
    assert original == on_pg == returned
    assert original[1] == 25_000_000 and original[2] is True
