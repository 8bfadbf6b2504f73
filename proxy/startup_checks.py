"""Checks that must pass before the gateway serves: stored BYOK keys readable with the master key."""

from __future__ import annotations

from proxy.crypto import MasterKey
from proxy.errors import ConfigError
from proxy.store import Store


async def check_master_key(store: Store, master: MasterKey | None, env_name: str) -> None:
    """Refuse to start if BYOK keys are stored and the master key is missing or not the one used."""
    stored = await store.all_byok_keys()
    if not stored:
        return
    if master is None:
        raise ConfigError(f"{len(stored)} BYOK keys are stored but {env_name} is not set: set the master key they were encrypted with")
    foreign = [k for k in stored if k.master_key_id != master.key_id]
    if foreign:
        raise ConfigError(
            f"{env_name} is not the master key that encrypted {len(foreign)} stored BYOK keys "
            f"(key id {master.key_id}, stored with {foreign[0].master_key_id}); set the right key or run `byok rotate-master-key`"
        )
