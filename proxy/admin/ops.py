"""Operator operations shared by the admin HTTP API and the admin CLI, and their JSON shapes.

No HTTP and no argparse here; errors are StoreError/InvalidValue or crypto.MasterKeyError.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from proxy.billing.money import format_amount, money_json
from proxy.config import Config
from proxy.store import Store
from proxy.store.rows import ApiKey, ByokKey, InvalidValue, UsageTotal, Workspace
from proxy.workspaces.crypto import MasterKey, MasterKeyError, decrypt_provider_key, encrypt_provider_key, master_key

MAX_PROVIDER_KEY_CHARS = 4096


def parse_since(text: str | None) -> float | None:
    """`YYYY-MM-DD` → unix time of that day's midnight, UTC."""
    if text is None or text == "":
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidValue(f"since must be a date as YYYY-MM-DD, got '{text[:40]}'") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def _unix(ts: float | None) -> int | None:
    return None if ts is None else int(ts)


def workspace_json(ws: Workspace, byok_providers: list[str] | None = None,
                   byok_requested_at: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "object": "workspace",
        "id": ws.id,
        "name": ws.name,
        "created_at": _unix(ws.created_at),
        "disabled": ws.disabled,
        "byok_enabled": ws.byok_enabled,
        "rpm_limit": ws.rpm_limit,
        "stream_limit": ws.stream_limit,
        "byok_requested_at": _unix(byok_requested_at),  # asked for in the console (limited rollout)
    }
    if byok_providers is not None:
        out["byok_providers"] = byok_providers
    return out


def key_json(key: ApiKey, workspace: str) -> dict[str, Any]:
    return {
        "object": "api_key",
        "id": key.id,
        "workspace": workspace,
        "name": key.name,
        "masked": key.masked,
        "created_at": _unix(key.created_at),
        "last_used_at": _unix(key.last_used_at),
        "revoked_at": _unix(key.revoked_at),
        "revoked": key.revoked,
        **money_json(key.spent_micros, "spent"),
        "spend_limit": None if key.spend_limit_micros is None else format_amount(key.spend_limit_micros),
        "spend_limit_micros": key.spend_limit_micros,
    }


def usage_json(totals: list[UsageTotal], since: float | None) -> dict[str, Any]:
    fields = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests",
              "cached_input_tokens", "reasoning_tokens", "cost_micros")
    rows = [
        {"workspace": t.workspace, "lane": t.lane, "model": t.model, **{f: getattr(t, f) for f in fields}}
        for t in totals
    ]
    return {
        "object": "usage_summary",
        "since": None if since is None else dt.datetime.fromtimestamp(since, dt.UTC).date().isoformat(),
        "data": rows,
        "total": {f: sum(r[f] for r in rows) for f in fields},
    }


def current_master_key(config: Config) -> MasterKey:
    """The configured BYOK master key, or MasterKeyError naming the env var to set."""
    key = master_key(config.byok_master_key, config.byok_master_key_env, required=True)
    assert key is not None  # required=True raises instead
    return key


def check_provider_key(provider: str, plaintext: str) -> str:
    key = plaintext.strip()
    if not key:
        raise InvalidValue(f"the {provider} key is empty")
    if len(key) > MAX_PROVIDER_KEY_CHARS or not key.isprintable() or any(c.isspace() for c in key):
        raise InvalidValue(
            f"the {provider} key must be one line of at most {MAX_PROVIDER_KEY_CHARS} printable characters without spaces"
        )
    return key


async def set_byok_key(store: Store, config: Config, workspace: str, provider: str, plaintext: str) -> Workspace:
    """Encrypt and store a workspace's key for a configured BYOK provider."""
    if provider not in config.byok_providers:
        known = ", ".join(sorted(config.byok_providers)) or "none configured"
        raise InvalidValue(f"unknown BYOK provider '{provider[:40]}' (providers in lanes.byok.providers: {known})")
    key = check_provider_key(provider, plaintext)
    ws = await store.get_workspace(workspace)
    master = current_master_key(config)
    blob = encrypt_provider_key(master, ws.id, provider, key)
    await store.put_byok_key(ws.id, provider, blob, master.key_id, last4=key[-4:])
    return ws


async def rotate_master_key(store: Store, current: MasterKey | None, new: MasterKey) -> int:
    """Re-encrypt every stored BYOK key under `new` in one transaction; returns how many moved.

    Keys already under `new` are skipped, so an interrupted or repeated rotation is safe.
    """

    def reseal(row: ByokKey) -> tuple[bytes, str] | None:
        if row.master_key_id == new.key_id:
            return None
        if current is None or row.master_key_id != current.key_id:
            raise MasterKeyError(
                f"the stored {row.provider!r} key of workspace {row.workspace_id} was sealed with master key id "
                f"{row.master_key_id}, which is neither the current nor the new master key"
            )
        plain = decrypt_provider_key(current, row.workspace_id, row.provider, row.blob)
        return encrypt_provider_key(new, row.workspace_id, row.provider, plain.reveal()), new.key_id

    return await store.reseal_byok_keys(reseal)
