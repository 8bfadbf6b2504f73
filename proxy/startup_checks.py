"""Checks that must pass before the gateway serves: stored BYOK keys readable with the master key."""

from __future__ import annotations

from proxy.errors import ConfigError
from proxy.runtime import Runtime
from proxy.store import Store


async def check_master_key(store: Store, runtime: Runtime) -> None:
    """Refuse to start (or reload) if BYOK keys are stored and no configured master key sealed them.

    Mid-rotation (docs/cli.md) a key sealed with the next master key is accepted too.
    """
    stored = await store.all_byok_keys()
    if not stored:
        return
    config = runtime.config
    env_name = config.byok_master_key_env
    if runtime.master_key is None:
        raise ConfigError(f"{len(stored)} BYOK keys are stored but {env_name} is not set: set the master key they were encrypted with")
    known = {key.key_id for key in runtime.master_keys}
    foreign = [k for k in stored if k.master_key_id not in known]
    if foreign:
        raise ConfigError(
            f"{env_name} is not the master key that encrypted {len(foreign)} stored BYOK keys "
            f"(key id {runtime.master_key.key_id}, stored with {foreign[0].master_key_id}); set the right key, "
            f"or finish the rotation with `byok rotate-master-key`"
        )
