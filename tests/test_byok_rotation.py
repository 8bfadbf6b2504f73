"""Master-key rotation without a BYOK outage: mid-rotation the gateway opens keys sealed with
either the current or the next master key, and refuses to start with neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.runtime import Runtime
from proxy.startup_checks import check_master_key
from proxy.store import Store
from proxy.types import Principal
from proxy.workspaces.auth import Authenticator
from proxy.workspaces.byok import ByokVault
from proxy.workspaces.crypto import MasterKey, encrypt_provider_key, generate_master_key

CONFIG = "store: {path: okm.sqlite3}\nlanes: {byok: {providers: {openai: {type: mock}}}}\n"
OLD, NEW = generate_master_key(), generate_master_key()


def runtime(tmp_path: Path, **env: str) -> Runtime:
    (tmp_path / "gateway.yaml").write_text(CONFIG)
    return Runtime.build(load_config(tmp_path / "gateway.yaml", {"OKM_KEY_PEPPER": "pepper", **env}))


async def test_mid_rotation_both_master_keys_open_stored_keys(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "okm.sqlite3")
    try:
        principals = {}
        for name, master in (("sealed-old", OLD), ("sealed-new", NEW)):
            ws = await store.create_workspace(name)
            await store.set_byok_enabled(name)
            key = MasterKey.from_base64(master, "test")
            await store.put_byok_key(ws.id, "openai", encrypt_provider_key(key, ws.id, "openai", f"sk-{name}"), key.key_id)
            principals[name] = Principal(ws.id, name, "kid", True)
        with pytest.raises(ConfigError, match="OKM_MASTER_KEY is not the master key that encrypted 1 stored"):
            await check_master_key(store, runtime(tmp_path, OKM_MASTER_KEY=OLD))
        rotating = runtime(tmp_path, OKM_MASTER_KEY=OLD, OKM_NEW_MASTER_KEY=NEW)
        await check_master_key(store, rotating)  # both seals are known: starts
        vault = ByokVault(store, Authenticator(store, rotating.config.key_pepper))
        for name, principal in principals.items():
            assert (await vault.key_for(rotating.master_keys, principal, "openai")).reveal() == f"sk-{name}"
    finally:
        await store.close()
