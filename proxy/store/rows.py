"""Rows the store hands out, and the store's error tree.

    StoreError                  anything the store cannot do (message names the cause)
    ├── SchemaError             database newer than this code, or a broken migration file
    ├── StoreUnavailable        SQLite failed (disk full, read-only, locked too long)
    ├── InvalidValue            a name or limit the store refuses
    ├── WorkspaceExists
    ├── WorkspaceNotFound
    └── KeyNotFound

Data only: no SQL and no I/O here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

USAGE_IN_FLIGHT = "in_flight"  # usage outcome of an admitted, unfinished request


class StoreError(Exception):
    pass


class SchemaError(StoreError):
    pass


class StoreUnavailable(StoreError):
    pass


class InvalidValue(StoreError):
    pass


class WorkspaceExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"workspace '{name}' already exists")


class WorkspaceNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"workspace '{name}' does not exist")


class KeyNotFound(StoreError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key '{key_id}' does not exist")


class Keep(enum.Enum):
    """Sentinel for 'leave this field as it is' in partial updates."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class Workspace:
    id: int
    name: str
    created_at: float
    disabled: bool
    byok_enabled: bool
    rpm_limit: int | None  # None: the config's default applies
    stream_limit: int | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's listing row; the key itself is never stored."""

    id: str
    workspace_id: int
    name: str
    masked: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class AuthEntry:
    """One key joined with its workspace: what the authenticator caches."""

    key_id: str
    key_hash: bytes = field(repr=False)
    revoked: bool
    workspace: Workspace
    byok_providers: frozenset[str]


@dataclass(frozen=True, slots=True)
class ByokKey:
    """One stored BYOK provider key: ciphertext and the id of the master key that sealed it."""

    workspace_id: int
    provider: str
    blob: bytes = field(repr=False)
    master_key_id: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class UsageRow:
    request_id: str
    started_at: float
    workspace_id: int | None
    key_id: str | None
    lane: str | None
    public_model: str | None
    upstream: str | None
    endpoint: str
    stream: bool
    status: int
    outcome: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    tokens_estimated: bool = False
    ttfb_s: float | None = None
    duration_s: float | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Totals for one (workspace, lane, model) since a date."""

    workspace: str | None
    lane: str | None
    model: str | None
    requests: int
    errors: int  # finished with an outcome other than ok
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_requests: int  # requests whose token counts were estimated
