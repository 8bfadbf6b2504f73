"""Workspace-key authentication for /v1/*: header rules, a cached key table, failure reasons.

Never echoes a key, and does no SQLite round trip per request on the hot path.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import hdrs, web

from proxy.errors import KeyRejectedError, ServiceUnavailableError, WorkspaceDisabledError
from proxy.store import Store, keys
from proxy.store.rows import AuthEntry, StoreError, Workspace
from proxy.types import AuthFailure, Principal, Secret

log = logging.getLogger("okm.auth")

CHECK_INTERVAL_S = 1.0  # how stale the cache may be when another process changes the store
MISS_RECHECK_S = 0.1  # an unknown key may trigger a version check this often, no more
QUERY_KEY_PARAMS = ("api_key", "api-key", "apikey", "key", "access_token")
API_KEY_HEADER = "api-key"
MAX_VERIFIED = 10_000  # keys remembered as verified per snapshot (only keys that passed the hash check)


MSG_MISSING = "You didn't provide an API key. Send your gateway key as 'Authorization: Bearer <key>' (or an 'api-key' header)."
MSG_MALFORMED = (
    f"The API key is malformed: gateway keys start with '{keys.PREFIX}' and are {keys.KEY_LEN} characters long. "
    "Check that the whole key was copied."
)
MSG_INVALID = "Incorrect API key provided, or the key has been revoked. Ask your gateway operator for a valid key."
MSG_QUERY = (
    "API keys are not accepted in the URL query string (URLs end up in logs). "
    "Send the key as 'Authorization: Bearer <key>' instead."
)
MSG_DUPLICATE = "The request carries more than one API key header; send exactly one 'Authorization: Bearer <key>'."
MSG_CONFLICT = "The Authorization and api-key headers carry different keys; send only one."
MSG_SCHEME = "The Authorization header must use the Bearer scheme: 'Authorization: Bearer <key>'."


def extract_key(request: web.Request) -> str:
    """The one key a request presents, by the header rules; raises KeyRejectedError otherwise."""
    if request.query_string and any(name in request.query for name in QUERY_KEY_PARAMS):
        raise KeyRejectedError(AuthFailure.MALFORMED, MSG_QUERY)
    authorization = request.headers.getall(hdrs.AUTHORIZATION, ())
    api_key = request.headers.getall(API_KEY_HEADER, ())
    if not api_key and len(authorization) == 1 and authorization[0].startswith("Bearer "):
        token = authorization[0][7:].strip()  # the common case, as the rules below read it
        if token:
            return token
    if len(authorization) > 1 or len(api_key) > 1:
        raise KeyRejectedError(AuthFailure.MALFORMED, MSG_DUPLICATE)
    candidates = []
    if authorization and authorization[0].strip():
        scheme, _, token = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            raise KeyRejectedError(AuthFailure.MALFORMED, MSG_SCHEME)
        candidates.append(token.strip())
    if api_key:
        candidates.append(api_key[0].strip())
    candidates = [c for c in candidates if c]
    if not candidates:
        raise KeyRejectedError(AuthFailure.MISSING, MSG_MISSING)
    if len(set(candidates)) > 1:
        raise KeyRejectedError(AuthFailure.MALFORMED, MSG_CONFLICT)
    return candidates[0]


@dataclass(frozen=True, slots=True)
class WorkspaceLimits:
    rpm_limit: int | None  # None: the configured default applies
    stream_limit: int | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    version: int
    entries: Mapping[str, AuthEntry]  # by key id
    principals: Mapping[str, Principal]  # by key id
    workspaces: Mapping[int, AuthEntry]  # by workspace id: any one entry, for its workspace and providers
    # key → key id for keys whose hash matched this snapshot's entry: a key seen before is one dict
    # lookup; a new snapshot (any change to keys or workspaces) starts empty, so it re-checks the hash
    verified: dict[str, str] = field(default_factory=dict)


def _snapshot(version: int, entries: list[AuthEntry]) -> _Snapshot:
    by_id = {e.key_id: e for e in entries}
    principals = {
        e.key_id: Principal(e.workspace.id, e.workspace.name, e.key_id, e.workspace.byok_enabled,
                            prepaid=e.workspace.billing_mode != "postpaid",
                            budgeted=e.workspace.budget_micros is not None,
                            key_limited=e.spend_limit_micros is not None)
        for e in entries
    }
    return _Snapshot(version, by_id, principals, {e.workspace.id: e for e in entries})


class Authenticator:
    """Checks workspace keys against an in-memory copy of the key table.

    The copy holds every key's hash, revoked flag and workspace. The first request after
    CHECK_INTERVAL_S (1 s) reads the store's `auth_version` counter (one row; SQLite triggers
    bump it on any change to keys, workspaces or BYOK keys) and reloads the copy when it moved,
    so a revoke or disable made by the CLI in another process applies within about a second.
    `invalidate()` makes the very next request reload (the admin API calls it). A well-formed
    key missing from the copy may force a version check, at most every MISS_RECHECK_S, so a
    key created a moment ago works without letting random keys hammer SQLite. Requests that
    arrive while another request checks use the current copy instead of waiting.
    """

    def __init__(
        self, store: Store, pepper: Secret, *, check_interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._interval = check_interval_s
        self._clock = clock
        self._snapshot: _Snapshot | None = None
        self._checked_at = float("-inf")
        self._stale = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the key table now, so the first request doesn't pay for it."""
        await self.refresh()

    async def stop(self) -> None:
        """Nothing to stop: there is no background task."""

    def invalidate(self) -> None:
        """Make the next request reload the key table (same-process admin changes)."""
        self._stale = True

    async def refresh(self) -> None:
        """Reload the key table now."""
        self._stale = True
        await self._ensure_fresh(self._interval)

    @property
    def version(self) -> int | None:
        """The store's auth_version of the cached copy; callers may key their own caches on it."""
        return None if self._snapshot is None else self._snapshot.version

    async def authenticate(self, request: web.Request) -> Principal:
        return await self.authenticate_key(extract_key(request))

    async def authenticate_key(self, key: str) -> Principal:
        snapshot = self._snapshot
        # as in _ensure_fresh: while another request checks the version, the current copy serves
        current = self._fresh(self._interval) or (self._lock.locked() and not self._stale)
        if snapshot is not None and current:
            known = snapshot.verified.get(key)
            if known is not None:
                return self._principal(snapshot, snapshot.entries[known])
        return await self._authenticate_new(key)

    async def _authenticate_new(self, key: str) -> Principal:
        """A key not verified against the current snapshot: shape and checksum, then the keyed hash."""
        key_id = keys.key_id_of(key)
        if key_id is None:
            raise KeyRejectedError(AuthFailure.MALFORMED, MSG_MALFORMED)
        snapshot = await self._ensure_fresh(self._interval)
        if key_id not in snapshot.entries:  # maybe a key made a moment ago: wait for a reload in progress
            snapshot = await self._ensure_fresh(MISS_RECHECK_S, wait=True)
        entry = snapshot.entries.get(key_id)
        if entry is None or not hmac.compare_digest(entry.key_hash, keys.hash_api_key(key, self._pepper)):
            raise KeyRejectedError(AuthFailure.UNKNOWN, MSG_INVALID)
        if len(snapshot.verified) < MAX_VERIFIED:
            snapshot.verified[key] = key_id
        return self._principal(snapshot, entry)

    @staticmethod
    def _principal(snapshot: _Snapshot, entry: AuthEntry) -> Principal:
        if entry.revoked:
            raise KeyRejectedError(AuthFailure.REVOKED, MSG_INVALID)
        if entry.workspace.disabled:
            raise WorkspaceDisabledError(
                f"Workspace '{entry.workspace.name}' is disabled. Contact your gateway operator."
            )
        return snapshot.principals[entry.key_id]

    async def ensure_fresh(self) -> None:
        """Bring the cached copy up to date (at most one version read per CHECK_INTERVAL_S)."""
        await self._ensure_fresh(self._interval)

    def still_allowed(self, principal: Principal, byok_provider: str | None) -> str | None:
        """Why `principal` may no longer use what it was granted (from the cache), or None."""
        if self._snapshot is None:
            return None
        entry = self._snapshot.entries.get(principal.key_id)
        if entry is None or entry.revoked:
            return "the API key was revoked"
        if entry.workspace.disabled:
            return "the workspace was disabled"
        if byok_provider is not None and (not entry.workspace.byok_enabled or byok_provider not in entry.byok_providers):
            return f"BYOK for {byok_provider} was turned off or its key removed"
        return None

    def workspace(self, workspace_id: int) -> Workspace | None:
        """The cached workspace (of any workspace that has at least one key)."""
        entry = self._snapshot.workspaces.get(workspace_id) if self._snapshot else None
        return None if entry is None else entry.workspace

    def principal_limits(self, workspace_id: int) -> WorkspaceLimits | None:
        """Per-workspace rate-limit overrides from the cache (no SQL); None for an unknown workspace."""
        workspace = self.workspace(workspace_id)
        return None if workspace is None else WorkspaceLimits(workspace.rpm_limit, workspace.stream_limit)

    def byok_providers(self, workspace_id: int) -> frozenset[str]:
        """Providers this workspace has a stored BYOK key for, from the cache."""
        entry = self._snapshot.workspaces.get(workspace_id) if self._snapshot else None
        return frozenset() if entry is None else entry.byok_providers

    def _fresh(self, max_age: float) -> bool:
        return self._snapshot is not None and not self._stale and self._clock() - self._checked_at < max_age

    async def _ensure_fresh(self, max_age: float, wait: bool = False) -> _Snapshot:
        if wait and self._lock.locked():
            async with self._lock:  # a reload is running: its copy may hold what the caller is missing
                pass
        busy = not wait and self._lock.locked() and self._snapshot is not None and not self._stale
        if not self._fresh(max_age) and not busy:  # while another request checks, use the current copy
            async with self._lock:
                if not self._fresh(max_age):
                    await self._reload()
        assert self._snapshot is not None  # reason: _reload sets it or raises
        return self._snapshot

    async def _reload(self) -> None:
        stale, self._stale = self._stale, False
        try:
            version = await self._store.auth_version()
            if stale or self._snapshot is None or version != self._snapshot.version:
                self._snapshot = _snapshot(version, await self._store.auth_entries())
        except StoreError as exc:
            if self._snapshot is None:
                raise ServiceUnavailableError("Authentication is unavailable: the gateway's store cannot be read.") from exc
            log.warning("auth cache refresh failed, keeping the previous copy: %s", exc)
        self._checked_at = self._clock()

