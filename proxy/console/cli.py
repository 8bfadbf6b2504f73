"""`python -m proxy user invite|list|disable|enable|reset-password`: console accounts from the shell.

Links are printed once (valid 7 days, single use); only their hashes are stored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from proxy.config import Config
from proxy.console.links import console_base, create_link
from proxy.store import Store
from proxy.store.accounts_sql import ROLES, check_email
from proxy.store.rows import StoreError

if TYPE_CHECKING:
    from proxy.admin.cli import Subcommands

Command = Callable[[argparse.Namespace, Config], Awaitable[int]]


@asynccontextmanager
async def _store(config: Config) -> AsyncIterator[Store]:
    store = await Store.open(config.store_url)
    try:
        yield store
    finally:
        await store.close()


def _console_note(config: Config) -> None:
    if not config.console.enabled:
        print("note: console.enabled is false in this config: the link works once the console is enabled",
              file=sys.stderr)


async def user_invite(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        email = check_email(args.email)
        workspace = await store.get_workspace(args.workspace)
        existing = await store.accounts.user_by_email(email)
        if existing is None and config.console.signup == "closed":
            print("note: console.signup is closed: a new user cannot accept; existing users still can",
                  file=sys.stderr)
        link = await create_link(store, console_base(config), "invite", email, workspace.id, args.role)
    _console_note(config)
    print(f"invitation for {email} to workspace {workspace.name} as {args.role} (valid 7 days, single use):")
    print(link)
    return 0


async def user_list(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        users = await store.accounts.list_users()
    if not users:
        print("no users")
        return 0
    width = max(len(u.email) for u, _ in users)
    print(f"{'EMAIL'.ljust(width)}  STATUS    WORKSPACES")
    for user, memberships in users:
        spaces = ", ".join(f"{m.workspace} ({m.role})" for m in memberships) or "-"
        print(f"{user.email.ljust(width)}  {'disabled' if user.disabled else 'active  '}  {spaces}")
    return 0


def _set_disabled(disabled: bool) -> Command:
    async def run(args: argparse.Namespace, config: Config) -> int:
        async with _store(config) as store:
            user = await store.accounts.set_disabled(check_email(args.email), disabled)
        state = "disabled (every session ended)" if user.disabled else "enabled"
        print(f"user {user.email}: {state}")
        return 0

    return run


async def user_reset(args: argparse.Namespace, config: Config) -> int:
    async with _store(config) as store:
        email = check_email(args.email)
        if await store.accounts.user_by_email(email) is None:
            raise StoreError(f"no user with email '{email}'")
        link = await create_link(store, console_base(config), "reset", email)
    _console_note(config)
    print(f"password reset link for {email} (valid 7 days, single use; ends the user's sessions when used):")
    print(link)
    return 0


def _handled(command: Command) -> Command:
    async def run(args: argparse.Namespace, config: Config) -> int:
        try:
            return await command(args, config)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def register(sub: Subcommands, parents: list[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("user", help="manage console users", parents=parents)
    users = group.add_subparsers(dest="user_command", required=True, metavar="COMMAND")

    def leaf(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = users.add_parser(name, help=help_text, parents=parents)
        parser.set_defaults(func=_handled(func))
        return parser

    invite = leaf("invite", user_invite, "print a one-time invitation link (valid 7 days)")
    invite.add_argument("email")
    invite.add_argument("--workspace", required=True, help="the workspace to join")
    invite.add_argument("--role", choices=ROLES, default="member")
    leaf("list", user_list, "list users and their workspaces")
    leaf("disable", _set_disabled(True), "refuse a user's sign-in and end their sessions").add_argument("email")
    leaf("enable", _set_disabled(False), "allow a disabled user to sign in again").add_argument("email")
    leaf("reset-password", user_reset, "print a one-time password-reset link (valid 7 days)").add_argument("email")
