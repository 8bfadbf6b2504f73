"""The BYOK gate: a workspace's own provider key, decrypted per request into a local value.

Only ciphertexts are cached (per version of the store's auth table, which every BYOK change
bumps); the decrypted key is returned to the caller alone: never cached, logged or echoed.
"""

from __future__ import annotations

from proxy import errors
from proxy.store import Store
from proxy.types import Principal, Secret
from proxy.workspaces.auth import Authenticator
from proxy.workspaces.crypto import MasterKey, MasterKeyError, decrypt_provider_key


class ByokVault:
    def __init__(self, store: Store, auth: Authenticator) -> None:
        self._store = store
        self._auth = auth
        self._blobs: dict[tuple[int, str], tuple[int | None, bytes | None]] = {}

    async def key_for(self, masters: tuple[MasterKey, ...], principal: Principal, provider: str) -> Secret:
        """The workspace's key for `provider`, opened with the first of `masters` that seals it."""
        if not principal.byok_enabled:
            raise errors.ByokNotEnabledError(
                "BYOK is in limited rollout and is not enabled for this workspace; ask support to enable it, "
                "or use cheap/<model> or resale/<model>"
            )
        blob = await self._blob(principal.workspace_id, provider)
        if blob is None:
            raise errors.ByokKeyNotConfiguredError(
                f"this workspace has no {provider} key stored; add one with "
                f"`byok set {principal.workspace_name} {provider}`",
                param="model",
            )
        if not masters:
            raise errors.ServiceUnavailableError("BYOK keys cannot be read: the gateway has no master key configured")
        for master in masters:
            try:
                return decrypt_provider_key(master, principal.workspace_id, provider, blob)
            except MasterKeyError:
                continue  # mid-rotation the key may be sealed with the next master key
        raise errors.ProxyError(f"the stored {provider} key for this workspace cannot be decrypted; store it again")

    async def _blob(self, workspace_id: int, provider: str) -> bytes | None:
        """The stored ciphertext, read from SQLite only when the auth table's version moved."""
        version = self._auth.version
        cached = self._blobs.get((workspace_id, provider))
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]
        blob = await self._store.get_byok_key(workspace_id, provider)
        self._blobs[(workspace_id, provider)] = (version, blob)
        return blob
