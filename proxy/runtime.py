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
from proxy.types import Lane
from proxy.workspaces.crypto import MasterKey, master_key


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
        master = master_key(config.byok_master_key, config.byok_master_key_env)
        next_master = master_key(config.byok_next_master_key, config.byok_next_master_key_env)
        secrets = operator_secrets(config)
        # What an operator upstream may echo in its errors: account names and the upstream keys
        # (masked at the lane boundary; the outgoing SecretGuard then catches every other secret).
        keys = [a.api_key for a in config.cheap_pool] + [p.api_key for p in config.providers.values()]
        identifiers = [a.name for a in config.cheap_pool] + [k.reveal() for k in keys if k is not None]
        return cls(config, RoutingTable.from_config(config), LaneSet(config), master, next_master, tuple(identifiers),
                   SecretGuard(secrets))

    @property
    def master_keys(self) -> tuple[MasterKey, ...]:
        """Keys that may open a stored BYOK key: the current one, then (mid-rotation) the next."""
        return tuple(k for k in (self.master_key, self.next_master_key) if k is not None)

    def mask_for(self, lane: Lane) -> tuple[str, ...] | None:
        """Operator lanes mask account identifiers in upstream errors; BYOK errors are the tenant's own."""
        return None if lane is Lane.BYOK else self.operator_identifiers


@dataclass(slots=True)
class State:
    """The app's current config generation, swapped whole on reload (the phase is relay.drain's)."""

    runtime: Runtime
