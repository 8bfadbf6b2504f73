"""One generation of loaded config with everything derived from it once: routing table, lanes
(with the pool's health), the BYOK master key and the strings to mask in upstream errors.

A reload builds a new Runtime and swaps it in; requests keep the one they started with.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Config
from proxy.lanes.routing import RoutingTable
from proxy.lanes.secret_guard import SecretGuard, operator_secrets
from proxy.lanes.targets import LaneSet
from proxy.types import Lane, Secret
from proxy.workspaces.crypto import MasterKey


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    table: RoutingTable
    lanes: LaneSet
    master_key: MasterKey | None
    next_master_key: MasterKey | None  # set during a master-key rotation (docs/cli.md)
    operator_identifiers: tuple[str, ...]  # account/provider names and keys, masked in error text
    guard: SecretGuard  # masks every operator secret in whatever goes to a client

    @classmethod
    def build(cls, config: Config) -> Runtime:
        master = _master_key(config.byok_master_key, config.byok_master_key_env)
        next_master = _master_key(config.byok_next_master_key, config.byok_next_master_key_env)
        identifiers: list[str] = []
        for account in config.cheap_pool:
            identifiers.append(account.name)
            if account.api_key is not None:
                identifiers.append(account.api_key.reveal())
        for provider in config.providers.values():
            if provider.api_key is not None:
                identifiers.append(provider.api_key.reveal())
        return cls(config, RoutingTable.from_config(config), LaneSet(config), master, next_master, tuple(identifiers),
                   SecretGuard(operator_secrets(config)))

    @property
    def master_keys(self) -> tuple[MasterKey, ...]:
        """Keys that may open a stored BYOK key: the current one, then (mid-rotation) the next."""
        return tuple(k for k in (self.master_key, self.next_master_key) if k is not None)

    def mask_for(self, lane: Lane) -> tuple[str, ...] | None:
        """Operator lanes mask account identifiers in upstream errors; BYOK errors are the tenant's own."""
        return None if lane is Lane.BYOK else self.operator_identifiers


def _master_key(secret: Secret | None, env_name: str) -> MasterKey | None:
    return None if secret is None else MasterKey.from_base64(secret.reveal(), env_name)
