"""The BYOK gate: a workspace's own provider key, decrypted per request into a local value.

The key is returned to the caller only; it is never cached, logged, or put in an error.
"""

from __future__ import annotations

from proxy import errors
from proxy.crypto import MasterKey, MasterKeyError, decrypt_provider_key
from proxy.types import Principal, Secret


async def workspace_key(store: object, master: MasterKey | None, principal: Principal, provider: str) -> Secret:
    if not principal.byok_enabled:
        raise errors.ByokNotEnabledError(
            "BYOK is in limited rollout and is not enabled for this workspace; ask support to enable it, "
            "or use cheap/<model> or resale/<model>"
        )
    blob = await store.get_byok_key(principal.workspace_id, provider)  # type: ignore[attr-defined]  # reason: store.Store
    if blob is None:
        raise errors.ByokKeyNotConfiguredError(
            f"this workspace has no {provider} key stored; add one with `byok set {principal.workspace_name} {provider}`",
            param="model",
        )
    if master is None:
        raise errors.ServiceUnavailableError("BYOK keys cannot be read: the gateway has no master key configured")
    try:
        return decrypt_provider_key(master, principal.workspace_id, provider, blob)
    except MasterKeyError as exc:
        raise errors.ProxyError(f"the stored {provider} key for this workspace cannot be decrypted; store it again") from exc
