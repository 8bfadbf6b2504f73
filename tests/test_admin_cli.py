"""The admin CLI run as a user runs it: `python -m proxy …` in a subprocess, on a real store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.store import Store
from proxy.store.rows import UsageRow
from proxy.types import Secret
from proxy.workspaces.auth import Authenticator
from proxy.workspaces.crypto import MasterKey, decrypt_provider_key, generate_master_key

ROOT = Path(__file__).resolve().parents[1]
PEPPER = "cli-pepper"
MASTER = generate_master_key()
CONFIG_YAML = """
store: {path: var/okm.sqlite3}
lanes:
  byok:
    providers:
      openai: {type: mock, models: [gpt-5.4]}
"""


@pytest.fixture
def gw(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKM_")}
    env.update(OKM_KEY_PEPPER=PEPPER, OKM_MASTER_KEY=MASTER, PYTHONPATH=str(ROOT))

    def run(*args: str, stdin: str = "", extra_env: dict[str, str] | None = None, config_first: bool = False):
        argv = ["--config", str(config), *args] if config_first else [*args, "--config", str(config)]
        return subprocess.run(
            [sys.executable, "-m", "proxy", *argv], input=stdin, capture_output=True, text=True, cwd=ROOT,
            env={**env, **(extra_env or {})}, timeout=60,
        )

    run.db = tmp_path / "var" / "okm.sqlite3"  # type: ignore[attr-defined]  # reason: test helper carries its paths
    return run


def test_workspace_commands(gw):
    created = gw("workspace", "create", "acme")
    assert created.returncode == 0 and "created workspace acme: enabled, BYOK off" in created.stdout
    duplicate = gw("workspace", "create", "acme", config_first=True)
    assert duplicate.returncode == 1 and duplicate.stderr.strip() == "error: workspace 'acme' already exists"
    assert gw("workspace", "byok-enable", "acme").returncode == 0
    limits = gw("workspace", "limits", "acme", "--rpm", "120", "--streams", "4")
    assert limits.returncode == 0 and "rpm limit 120, stream limit 4" in limits.stdout
    cleared = gw("workspace", "limits", "acme", "--rpm", "default")
    assert "rpm limit default, stream limit 4" in cleared.stdout
    bad = gw("workspace", "limits", "acme", "--rpm", "0")
    assert bad.returncode == 2 and "expected a whole number >= 1" in bad.stderr
    assert gw("workspace", "disable", "acme").returncode == 0
    listing = gw("workspace", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "STATUS", "BYOK", "RPM", "STREAMS", "CREATED"]
    assert listing[1].split()[:5] == ["acme", "disabled", "on", "default", "4"]
    missing = gw("workspace", "disable", "nope")
    assert missing.returncode == 1 and "workspace 'nope' does not exist" in missing.stderr


def test_key_commands_show_the_key_once_and_store_only_a_hash(gw):
    gw("workspace", "create", "acme")
    created = gw("key", "create", "acme", "--name", "laptop")
    assert created.returncode == 0
    lines = dict(line.split(":", 1) for line in created.stdout.splitlines())
    key_id, key = lines["key id"].strip(), lines["key"].strip()
    assert key.startswith(f"okm_{key_id}_") and "shown only once" in created.stderr
    listing = gw("key", "list", "acme")
    assert listing.returncode == 0 and key_id in listing.stdout and "laptop" in listing.stdout
    assert key not in listing.stdout and key[-20:] not in listing.stdout
    assert "never" in listing.stdout  # last used
    assert key.encode() not in b"".join(p.read_bytes() for p in gw.db.parent.glob("okm.sqlite3*"))
    revoked = gw("key", "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked key {key_id}" in revoked.stdout
    assert not gw("key", "list", "acme").stdout.splitlines()[1].rstrip().endswith(" no")  # REVOKED shows the time
    unknown = gw("key", "revoke", "doesnotexist")
    assert unknown.returncode == 1 and "API key 'doesnotexist' does not exist" in unknown.stderr
    assert gw("key", "list", "nope").returncode == 1


async def test_a_cli_revoke_reaches_a_running_gateway_within_5_seconds(gw):
    gw("workspace", "create", "acme")
    key = gw("key", "create", "acme").stdout.splitlines()[1].split(":", 1)[1].strip()
    store = await Store.open(gw.db)
    auth = Authenticator(store, Secret(PEPPER))
    try:
        await auth.start()
        assert (await auth.authenticate_key(key)).workspace_name == "acme"
        key_id = key[4:16]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "key", "revoke", key_id, "--config", str(gw.db.parent.parent / "gateway.yaml"),
            cwd=ROOT, env={**os.environ, "OKM_KEY_PEPPER": PEPPER, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.DEVNULL,
        )
        assert await proc.wait() == 0
        started = time.monotonic()
        while True:
            try:
                await auth.authenticate_key(key)
            except Exception as exc:
                assert getattr(exc, "status", None) == 401
                break
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.1)
    finally:
        await store.close()


def test_byok_set_reads_stdin_and_never_echoes(gw):
    gw("workspace", "create", "acme")
    plaintext = "sk-proj-CLIplaintext0123456789"
    stored = gw("byok", "set", "acme", "openai", stdin=plaintext + "\n")
    assert stored.returncode == 0 and "stored the openai key for workspace acme" in stored.stdout
    assert plaintext not in stored.stdout + stored.stderr
    unknown = gw("byok", "set", "acme", "anthropic", stdin=plaintext)
    assert unknown.returncode == 1 and "providers in lanes.byok.providers: openai" in unknown.stderr
    assert plaintext not in unknown.stderr
    empty = gw("byok", "set", "acme", "openai", stdin="\n")
    assert empty.returncode == 1 and "empty" in empty.stderr
    no_master = gw("byok", "set", "acme", "openai", stdin=plaintext, extra_env={"OKM_MASTER_KEY": ""})
    assert no_master.returncode == 1 and "OKM_MASTER_KEY is not set" in no_master.stderr
    assert plaintext.encode() not in b"".join(p.read_bytes() for p in gw.db.parent.glob("okm.sqlite3*"))


async def test_rotate_master_key_reencrypts_every_key(gw):
    for name in ("acme", "beta"):
        gw("workspace", "create", name)
        assert gw("byok", "set", name, "openai", stdin=f"sk-{name}-secret").returncode == 0
    new = generate_master_key()
    rotated = gw("byok", "rotate-master-key", extra_env={"OKM_NEW_MASTER_KEY": new})
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 2 BYOK key(s)" in rotated.stdout and "put the new key in OKM_MASTER_KEY" in rotated.stdout
    assert new not in rotated.stdout + rotated.stderr
    again = gw("byok", "rotate-master-key", extra_env={"OKM_NEW_MASTER_KEY": new, "OKM_MASTER_KEY": new})
    assert again.returncode == 0 and "re-encrypted 0" in again.stdout
    wrong = gw("byok", "rotate-master-key", extra_env={"OKM_NEW_MASTER_KEY": generate_master_key()})
    assert wrong.returncode == 1 and "neither the current nor the new master key" in wrong.stderr
    store = await Store.open(gw.db)
    try:
        master = MasterKey.from_base64(new, "new")
        for row in await store.all_byok_keys():
            assert row.master_key_id == master.key_id
            ws = await store.get_workspace_by_id(row.workspace_id)
            assert decrypt_provider_key(master, row.workspace_id, row.provider, row.blob).reveal() == f"sk-{ws.name}-secret"
    finally:
        await store.close()
    bad = gw("byok", "rotate-master-key", extra_env={"OKM_NEW_MASTER_KEY": "not base64!"})
    assert bad.returncode == 1 and "OKM_NEW_MASTER_KEY is not valid base64" in bad.stderr


async def test_usage_table_and_json(gw):
    gw("workspace", "create", "acme")
    store = await Store.open(gw.db)
    ws = await store.get_workspace("acme")
    rows = [UsageRow(f"r{i}", time.time(), ws.id, "k", lane, f"{lane}/gpt-5.4", "up", "chat/completions", False,
                     200, "ok", 10, 5, 15) for i, lane in enumerate(("cheap", "cheap", "resale"))]
    await store.write_usage([], rows)
    await store.close()
    table = gw("usage", "acme", "--since", "2024-01-01")
    assert table.returncode == 0
    lines = [line.split() for line in table.stdout.splitlines()]
    assert lines[0] == ["usage", "since", "2024-01-01"]
    assert ["acme", "cheap", "cheap/gpt-5.4", "2", "0", "20", "10", "30"] in lines
    assert lines[-1] == ["total", "3", "0", "30", "15", "45"]
    report = json.loads(gw("usage", "--json").stdout)
    assert report["total"]["total_tokens"] == 45 and len(report["data"]) == 2
    bad = gw("usage", "--since", "01/02/2024")
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stderr
    assert gw("usage", "nope").returncode == 1
