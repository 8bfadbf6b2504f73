"""One-time links for invitations and password resets: 256-bit tokens, stored hashed, valid
7 days, single use. Shared by the `user` CLI and the members page.
"""

from __future__ import annotations

from proxy.config import Config
from proxy.console.sessions import new_token, token_hash
from proxy.store import Store

LINK_TTL_S = 7 * 86400


def link_token_hash(token: str) -> bytes:
    return token_hash(token[:100])


def console_base(config: Config) -> str:
    """Where customers reach the console: `console.public_url`, else the listen address."""
    if config.console.public_url:
        return config.console.public_url
    host = config.listen.host if config.listen.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{config.listen.port}"


async def create_link(store: Store, base_url: str, kind: str, email: str, workspace_id: int | None = None,
                      role: str | None = None) -> str:
    """A fresh link (`<base>/console/invite/<token>` or `/console/reset/<token>`); only its hash is kept."""
    token = new_token()
    await store.accounts.create_link(token_hash(token), kind, email, workspace_id, role, LINK_TTL_S)
    return f"{base_url}/console/{kind}/{token}"
