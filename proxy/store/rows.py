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
from typing import NamedTuple

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
MAX_LIMIT = 10**9  # per-workspace rate limits: stored as 64-bit integers, nothing real comes near this


@dataclass(frozen=True, slots=True)
class Workspace:
    id: int
    name: str
    created_at: float
    disabled: bool
    byok_enabled: bool
    rpm_limit: int | None  # None: the config's default applies
    stream_limit: int | None
    billing_mode: str = "prepaid"  # prepaid | postpaid
    budget_micros: int | None = None  # monthly budget; None: none


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
    spend_limit_micros: int | None = None  # lifetime spend limit; None: none
    spent_micros: int = 0

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
    spend_limit_micros: int | None = None


@dataclass(frozen=True, slots=True)
class ByokKey:
    """One stored BYOK provider key: ciphertext and the id of the master key that sealed it."""

    workspace_id: int
    provider: str
    blob: bytes = field(repr=False)
    master_key_id: str
    updated_at: float


class UsageRow(NamedTuple):
    """One usage row, fields in the table's column order. A named tuple, not a frozen dataclass:
    two are built per request (admission, final), and a 26-field frozen dataclass cost ~7 us each
    (one object.__setattr__ per field) against ~1 us for the tuple."""

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
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micros: int = 0
    price_input: int | None = None  # the prices charged (micro-units per 1M tokens / per request); None: unpriced
    price_cached_input: int | None = None
    price_output: int | None = None
    price_request: int | None = None
    hold_micros: int = 0
    owner: str | None = None  # the gateway instance that admitted it (proxy/store/instances.py)


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
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micros: int = 0


@dataclass(frozen=True, slots=True)
class BillingAccount:
    """A workspace's money, as the store's running totals (balance = credits - charges)."""

    workspace_id: int
    mode: str
    budget_micros: int | None
    credits_micros: int
    charges_micros: int
    held_micros: int
    month: str  # YYYY-MM of month_charges_micros
    month_charges_micros: int

    @property
    def balance_micros(self) -> int:
        return self.credits_micros - self.charges_micros


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: int
    workspace_id: int
    amount_micros: int
    kind: str  # topup | refund | adjustment
    note: str
    actor: str
    created_at: float


@dataclass(frozen=True, slots=True)
class KeySpend:
    limit_micros: int | None
    spent_micros: int
    held_micros: int


class HoldRequest(NamedTuple):
    """A hold to take: the amount, who it is for and which process owns it. A named tuple: one
    per held request, and a frozen dataclass's per-field setattr cost ~0.6 us more."""

    request_id: str
    workspace_id: int
    key_id: str | None
    amount_micros: int
    owner: str
    month: str  # the current month, YYYY-MM (UTC)
    # The request's admission row (outcome in_flight, its hold_micros and owner): the hold's record,
    # committed in the hold's transaction.
    admission: UsageRow
    key_limited: bool = False  # the key has a spend limit: the hold locks the key's row too (slower path)


class AccountError(StoreError):
    """A console account operation the store refuses (message says why, for the person)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    password_hash: str = field(repr=False)
    created_at: float
    disabled: bool
    current_workspace_id: int | None


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's role in one workspace, with the workspace's name."""

    user_id: int
    workspace_id: int
    workspace: str
    role: str  # owner | member
    email: str = ""


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: int
    user_id: int
    created_at: float
    last_seen_at: float
    user_agent: str


@dataclass(frozen=True, slots=True)
class AccountLink:
    """A one-time invitation or password-reset link (its token is never stored)."""

    kind: str  # invite | reset
    email: str
    workspace_id: int | None
    role: str | None
    created_at: float
    expires_at: float
    used_at: float | None


def check_workspace_limit(field: str, value: object) -> int | None:
    """The one rule for a workspace's rpm_limit / stream_limit: a whole number >= 1, or None
    for the config's default. The store, the admin API and the CLI all apply it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidValue(f"{field} must be a whole number >= 1 (at most {MAX_LIMIT}), or null for the configured default")
    return value


@dataclass(frozen=True, slots=True)
class PoolHealthRow:
    """One pool account's health as every worker and host on the store shares it (epoch seconds).

    `ejected_until`/`cooling_until` 0 mean not ejected / not cooling. `disabled_at` is when a
    401/403 took the account out; a pool built (started or reloaded) after that ignores it.
    """

    account: str
    failures: int = 0  # consecutive 5xx/connect/timeout failures: the ejection back-off exponent
    ejected_until: float = 0.0
    eject_reason: str | None = None
    disabled_at: float | None = None
    cooling_until: float = 0.0
