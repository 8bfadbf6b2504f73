"""Admin CLI subcommands: workspace, key, byok and usage, each an `async cmd(args, config) -> int`.

Builds argparse parsers and prints results; the store and admin_ops do the work. Keys are
printed once at creation and never read back; BYOK keys are read from stdin, never echoed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson

from proxy.admin import ops as admin_ops
from proxy.billing.money import AmountError, format_amount, parse_amount
from proxy.config import Config
from proxy.store import Store
from proxy.store.rows import KEEP, MAX_LIMIT, InvalidValue, StoreError, Workspace, check_workspace_limit
from proxy.workspaces.crypto import MasterKey, MasterKeyError, master_key

Command = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]
if TYPE_CHECKING:  # argparse has no public name for it, and it is generic only in typeshed
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


@asynccontextmanager
async def _store(config: Config) -> AsyncIterator[Store]:
    store = await Store.open(config.store_url)
    try:
        yield store
    finally:
        await store.close()


def _handled(command: Command) -> Command:
    """Store and master-key errors become one `error:` line on stderr and exit status 1."""

    async def run(args: argparse.Namespace, config: Config) -> int:
        try:
            return await command(args, config)
        except (StoreError, MasterKeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _when(ts: float | None, empty: str = "-") -> str:
    return empty if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _workspace_line(ws: Workspace) -> str:
    return (
        f"workspace {ws.name}: {'disabled' if ws.disabled else 'enabled'}, BYOK {'on' if ws.byok_enabled else 'off'}, "
        f"rpm limit {ws.rpm_limit or 'default'}, stream limit {ws.stream_limit or 'default'}"
    )


@_handled
async def workspace_create(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        print(f"created {_workspace_line(await store.create_workspace(args.name))}")
    return 0


@_handled
async def workspace_list(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        workspaces, requests = await store.list_workspaces(), await store.console.byok_requests()
    rows = [
        (w.name, "disabled" if w.disabled else "enabled",
         "on" if w.byok_enabled else ("requested" if w.id in requests else "off"),
         w.rpm_limit or "default", w.stream_limit or "default", _when(w.created_at))
        for w in workspaces
    ]
    print(_table(("NAME", "STATUS", "BYOK", "RPM", "STREAMS", "CREATED"), rows) if rows else "no workspaces")
    return 0


def _workspace_setter(change: Callable[[Store, str], Awaitable[Workspace]]) -> Command:
    @_handled
    async def run(args: argparse.Namespace, config: Config) -> int:
        async with _store(config) as store:
            print(_workspace_line(await change(store, args.name)))
        return 0

    return run


def _limit(text: str) -> int | None:
    if text.lower() in ("default", "none"):
        return None
    try:
        return check_workspace_limit("the limit", int(text))
    except (ValueError, InvalidValue):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 (at most {MAX_LIMIT}) or 'default', "
                                         f"got '{text[:40]}'") from None


@_handled
async def workspace_limits(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        workspace = await store.set_workspace_limits(args.name, rpm_limit=args.rpm, stream_limit=args.streams)
    print(_workspace_line(workspace))
    return 0


def parse_limit_amount(text: str) -> int:
    try:
        return parse_amount(text, what="limit", negative=False)
    except AmountError as exc:
        raise InvalidValue(str(exc)) from None


@_handled
async def key_create(args: argparse.Namespace, config: Config) -> int:
    limit = None if args.limit is None else parse_limit_amount(args.limit)
    async with _store(config) as store:
        api_key, key = await store.create_api_key(args.workspace, config.key_pepper, args.name or "", limit)
    print(f"key id: {api_key.id}")
    print(f"key:    {key.reveal()}")
    if limit is not None:
        print(f"spend limit: {format_amount(limit)} {config.billing.currency}")
    print("Store the key now: it is shown only once and cannot be recovered.", file=sys.stderr)
    return 0


@_handled
async def key_list(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        api_keys = await store.list_api_keys(args.workspace)
    rows = [
        (k.id, k.name or "-", k.masked, _when(k.created_at), _when(k.last_used_at, "never"), _when(k.revoked_at, "no"),
         format_amount(k.spent_micros), "-" if k.spend_limit_micros is None else format_amount(k.spend_limit_micros))
        for k in api_keys
    ]
    headers = ("ID", "NAME", "KEY", "CREATED", "LAST USED", "REVOKED", "SPENT", "LIMIT")
    print(_table(headers, rows) if rows else "no keys")
    return 0


@_handled
async def key_revoke(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        api_key = await store.revoke_api_key(args.key_id)
    print(f"revoked key {api_key.id} ({api_key.masked}) at {_when(api_key.revoked_at)}; "
          "a running gateway refuses it within a few seconds")
    return 0


def _read_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.read()


@_handled
async def byok_set(args: argparse.Namespace, config: Config) -> int:
    plaintext = _read_secret(f"{args.provider} key for workspace {args.workspace} (input hidden): ")
    async with _store(config) as store:
        await admin_ops.set_byok_key(store, config, args.workspace, args.provider, plaintext)
    print(f"stored the {args.provider} key for workspace {args.workspace} (encrypted)")
    return 0


@_handled
async def byok_rotate(args: argparse.Namespace, config: Config) -> int:
    env_name = config.byok_next_master_key_env
    configured = config.byok_next_master_key.reveal() if config.byok_next_master_key is not None else None
    value = configured or _read_secret("new master key (base64, input hidden): ")
    new = MasterKey.from_base64(value, env_name)
    current = master_key(config.byok_master_key, config.byok_master_key_env)
    async with _store(config) as store:
        moved = await admin_ops.rotate_master_key(store, current, new)
    print(f"re-encrypted {moved} BYOK key(s) under the new master key (id {new.key_id}).")
    print(f"Next: put the new key in {config.byok_master_key_env}, remove {env_name}, and restart the gateway. "
          f"A gateway that has {env_name} set already serves the re-encrypted keys; one that has not cannot "
          f"decrypt them until that restart.")
    return 0


@_handled
async def usage_summary(args: argparse.Namespace, config: Config) -> int:
    since = admin_ops.parse_since(args.since)
    async with _store(config) as store:
        totals = await store.usage_summary(since=since, workspace=args.workspace)
    report = admin_ops.usage_json(totals, since)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    headers = ("WORKSPACE", "LANE", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "TOTAL")
    keys = ("workspace", "lane", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
    rows = [[r[k] if r[k] is not None else "-" for k in keys] for r in report["data"]]
    rows.append(["total", "", "", *(report["total"][k] for k in keys[3:])])
    print(f"usage since {report['since'] or 'the beginning'}")
    print(_table(headers, rows))
    return 0


def register(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    """Add the workspace, key, byok and usage commands; each leaf sets `func`."""

    def group(name: str, help_text: str) -> Subcommands:
        parser = sub.add_parser(name, help=help_text, parents=parents)
        subcommands: Subcommands = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
        return subcommands

    def leaf(owner: Subcommands, name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = owner.add_parser(name, help=help_text, parents=parents)
        parser.set_defaults(func=func)
        return parser

    ws = group("workspace", "manage workspaces")
    leaf(ws, "create", workspace_create, "create a workspace").add_argument("name")
    leaf(ws, "list", workspace_list, "list workspaces")
    leaf(ws, "disable", _workspace_setter(lambda store, name: store.set_workspace_disabled(name, True)), "refuse the workspace's keys (403)").add_argument("name")
    leaf(ws, "enable", _workspace_setter(lambda store, name: store.set_workspace_disabled(name, False)), "re-enable a disabled workspace").add_argument("name")
    leaf(ws, "byok-enable", _workspace_setter(lambda store, name: store.set_byok_enabled(name, True)), "allow byok/* models").add_argument("name")
    leaf(ws, "byok-disable", _workspace_setter(lambda store, name: store.set_byok_enabled(name, False)), "refuse byok/* models").add_argument("name")
    limits = leaf(ws, "limits", workspace_limits, "show or set per-workspace rate limits")
    limits.add_argument("name")
    limits.add_argument("--rpm", type=_limit, default=KEEP, metavar="N|default", help="requests per minute")
    limits.add_argument("--streams", type=_limit, default=KEEP, metavar="N|default", help="concurrent streams")

    key = group("key", "manage workspace API keys")
    create = leaf(key, "create", key_create, "issue a key (printed once)")
    create.add_argument("workspace")
    create.add_argument("--name", default="", help="a label for the key, e.g. where it is used")
    create.add_argument("--limit", metavar="AMOUNT", help="lifetime spend limit, e.g. 50.00 (402 key_limit_exceeded)")
    leaf(key, "list", key_list, "list a workspace's keys (never the keys themselves)").add_argument("workspace")
    leaf(key, "revoke", key_revoke, "revoke a key by id").add_argument("key_id")

    byok = group("byok", "manage BYOK provider keys")
    set_parser = leaf(byok, "set", byok_set, "store a workspace's provider key, read from stdin")
    set_parser.add_argument("workspace")
    set_parser.add_argument("provider")
    leaf(byok, "rotate-master-key", byok_rotate, "re-encrypt every BYOK key under the next master key "
         "($OKM_NEW_MASTER_KEY, or byok_next_master_key_env; else stdin)")

    usage = sub.add_parser("usage", help="usage totals per workspace, lane and model", parents=parents)
    usage.add_argument("workspace", nargs="?")
    usage.add_argument("--since", metavar="YYYY-MM-DD", help="count requests from this day (UTC) on")
    usage.add_argument("--json", action="store_true", help="machine-readable output")
    usage.set_defaults(func=usage_summary)
