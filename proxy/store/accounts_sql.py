"""SQL for console accounts: users, memberships, sessions, one-time links and login failures.

Reached as `store.accounts`. It sees only hashes (argon2id password hashes, SHA-256 of session
and link tokens), never a password or a token. Every multi-statement change is one transaction.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from proxy.store import billing_sql
from proxy.store.db import Tx
from proxy.store.rows import (
    AccountError,
    AccountLink,
    InvalidValue,
    Membership,
    SessionRow,
    User,
    Workspace,
    WorkspaceExists,
)

if TYPE_CHECKING:  # only for annotations: the store imports this module
    from proxy.store.store import Store

ROLES = ("owner", "member")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s.]+")
EMAIL_MAX = 254
_USER_COLUMNS = "id, email, password_hash, created_at, disabled_at, current_workspace_id"
_LINK_COLUMNS = "kind, email, workspace_id, role, created_at, expires_at, used_at"


def check_email(email: str) -> str:
    """The address, trimmed and lower-cased; InvalidValue when it does not look like one."""
    normal = email.strip().lower()
    if len(normal) > EMAIL_MAX or not EMAIL.fullmatch(normal):
        raise InvalidValue("enter a valid email address, like name@example.com")
    return normal


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidValue(f"role must be owner or member, got '{role[:20]}'")
    return role


async def _fetch(db: Tx, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return await db.fetchall(sql, params)


def _user(row: Sequence[Any]) -> User:
    return User(row[0], row[1], row[2], row[3], row[4] is not None, row[5])


def _link(row: Sequence[Any]) -> AccountLink:
    return AccountLink(*row[:7])


class Accounts:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def _one(self, sql: str, params: Sequence[Any]) -> Any | None:
        rows = await self._store.fetchall(sql, params)
        return rows[0] if rows else None

    # --- users ----------------------------------------------------------------------------

    async def sign_up(self, email: str, password_hash: str, workspace_name: str,
                      credit_micros: int = 0) -> tuple[User, Workspace]:
        """A new user and their first workspace, with them as its owner, and (if `credit_micros`)
        a sign-up top-up in the workspace's ledger: all in one transaction."""
        from proxy.store.store import check_workspace_name  # here: store.py imports this module

        email, now = check_email(email), time.time()
        check_workspace_name(workspace_name)
        async with self._store.transaction() as db:
            if await _fetch(db, "SELECT 1 FROM users WHERE email = ?", (email,)):
                raise AccountError("an account with this email already exists; sign in instead")
            if await _fetch(db, "SELECT 1 FROM workspaces WHERE name = ?", (workspace_name,)):
                raise WorkspaceExists(workspace_name)
            await db.execute("INSERT INTO workspaces (name, created_at) VALUES (?, ?)", (workspace_name, now))
            ws_id = (await _fetch(db, "SELECT id FROM workspaces WHERE name = ?", (workspace_name,)))[0][0]
            user_id = await self._insert_user(db, email, password_hash, ws_id, now)
            await self._add_member(db, user_id, ws_id, "owner", now)
            if credit_micros > 0:
                await db.execute(billing_sql.ENSURE_ACCOUNT, (ws_id,))
                await db.fetchone(billing_sql.INSERT_LEDGER, (ws_id, credit_micros, "topup", "sign-up credit",
                                                             "console:signup", now))
                await db.execute(billing_sql.ADD_CREDITS, (credit_micros, ws_id))
        return await self.user_by_id(user_id), await self._store.get_workspace(workspace_name)

    @staticmethod
    async def _insert_user(db: Tx, email: str, password_hash: str, workspace_id: int | None, now: float) -> int:
        await db.execute(
            "INSERT INTO users (email, password_hash, created_at, current_workspace_id) VALUES (?, ?, ?, ?)",
            (email, password_hash, now, workspace_id),
        )
        return int((await _fetch(db, "SELECT id FROM users WHERE email = ?", (email,)))[0][0])

    @staticmethod
    async def _add_member(db: Tx, user_id: int, workspace_id: int, role: str, now: float) -> None:
        await db.execute(
            "INSERT INTO memberships (user_id, workspace_id, role, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id, workspace_id) DO UPDATE SET role = excluded.role",
            (user_id, workspace_id, _check_role(role), now),
        )

    async def user_by_email(self, email: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?", (email.strip().lower(),))
        return None if row is None else _user(row)

    async def user_by_id(self, user_id: int) -> User:
        row = await self._one(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise AccountError(f"user #{user_id} does not exist")
        return _user(row)

    async def list_users(self) -> list[tuple[User, list[Membership]]]:
        users = [_user(r) for r in await self._store.fetchall(f"SELECT {_USER_COLUMNS} FROM users ORDER BY email")]
        rows = await self._store.fetchall(
            "SELECT m.user_id, m.workspace_id, w.name, m.role FROM memberships m "
            "JOIN workspaces w ON w.id = m.workspace_id ORDER BY w.name"
        )
        by_user: dict[int, list[Membership]] = {}
        for r in rows:
            by_user.setdefault(r[0], []).append(Membership(r[0], r[1], r[2], r[3]))
        return [(u, by_user.get(u.id, [])) for u in users]

    async def set_disabled(self, email: str, disabled: bool = True) -> User:
        """Disable (ending every session) or re-enable a user."""
        user = await self.user_by_email(email)
        if user is None:
            raise AccountError(f"no user with email '{email[:80]}'")
        async with self._store.transaction() as db:
            await db.execute("UPDATE users SET disabled_at = ? WHERE id = ?", (time.time() if disabled else None, user.id))
            if disabled:
                await db.execute("DELETE FROM sessions WHERE user_id = ?", (user.id,))
        return await self.user_by_id(user.id)

    async def change_password(self, user_id: int, password_hash: str) -> None:
        """A new password hash; every session of the user ends in the same transaction."""
        async with self._store.transaction() as db:
            await db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            await db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    async def set_current_workspace(self, user_id: int, workspace_id: int) -> None:
        async with self._store.transaction() as db:
            await db.execute("UPDATE users SET current_workspace_id = ? WHERE id = ?", (workspace_id, user_id))

    # --- memberships ----------------------------------------------------------------------

    async def memberships(self, user_id: int) -> list[Membership]:
        rows = await self._store.fetchall(
            "SELECT m.user_id, m.workspace_id, w.name, m.role FROM memberships m "
            "JOIN workspaces w ON w.id = m.workspace_id WHERE m.user_id = ? ORDER BY w.name",
            (user_id,),
        )
        return [Membership(r[0], r[1], r[2], r[3]) for r in rows]

    async def members(self, workspace_id: int) -> list[Membership]:
        rows = await self._store.fetchall(
            "SELECT m.user_id, m.workspace_id, w.name, m.role, u.email FROM memberships m "
            "JOIN workspaces w ON w.id = m.workspace_id JOIN users u ON u.id = m.user_id "
            "WHERE m.workspace_id = ? ORDER BY u.email",
            (workspace_id,),
        )
        return [Membership(*r) for r in rows]

    async def add_member(self, workspace_id: int, user_id: int, role: str) -> None:
        async with self._store.transaction() as db:
            await self._add_member(db, user_id, workspace_id, role, time.time())

    async def set_role(self, workspace_id: int, user_id: int, role: str) -> None:
        _check_role(role)
        async with self._store.transaction() as db:
            if role != "owner":
                await self._keep_an_owner(db, workspace_id, user_id)
            await db.execute(
                "UPDATE memberships SET role = ? WHERE workspace_id = ? AND user_id = ?", (role, workspace_id, user_id)
            )

    async def remove_member(self, workspace_id: int, user_id: int) -> None:
        async with self._store.transaction() as db:
            await self._keep_an_owner(db, workspace_id, user_id)
            await db.execute("DELETE FROM memberships WHERE workspace_id = ? AND user_id = ?", (workspace_id, user_id))

    @staticmethod
    async def _keep_an_owner(db: Tx, workspace_id: int, leaving_user_id: int) -> None:
        rows = await _fetch(db,
            "SELECT count(*) FROM memberships WHERE workspace_id = ? AND role = 'owner' AND user_id <> ?",
            (workspace_id, leaving_user_id),
        )
        if rows[0][0] == 0:
            raise AccountError("a workspace needs at least one owner: make someone else owner first")

    # --- sessions -------------------------------------------------------------------------

    async def create_session(self, token_hash: bytes, user_id: int, user_agent: str, max_age_s: float) -> None:
        """A new session; sessions of any user past their absolute lifetime are dropped too."""
        now = time.time()
        async with self._store.transaction() as db:
            await db.execute("DELETE FROM sessions WHERE created_at < ?", (now - max_age_s,))
            await db.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, user_agent) VALUES (?, ?, ?, ?, ?)",
                (token_hash, user_id, now, now, user_agent[:200]),
            )

    async def session(self, token_hash: bytes) -> tuple[SessionRow, User] | None:
        row = await self._one(
            "SELECT s.id, s.user_id, s.created_at, s.last_seen_at, s.user_agent, "
            + ", ".join("u." + c for c in _USER_COLUMNS.split(", "))
            + " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
            (token_hash,),
        )
        return None if row is None else (SessionRow(*row[:5]), _user(row[5:]))

    async def touch_session(self, session_id: int, now: float) -> None:
        async with self._store.transaction() as db:
            await db.execute("UPDATE sessions SET last_seen_at = ? WHERE id = ?", (now, session_id))

    async def end_session(self, token_hash: bytes) -> None:
        async with self._store.transaction() as db:
            await db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    async def end_other_sessions(self, user_id: int, keep_session_id: int) -> int:
        async with self._store.transaction() as db:
            return await db.execute("DELETE FROM sessions WHERE user_id = ? AND id <> ?", (user_id, keep_session_id))

    async def sessions(self, user_id: int) -> list[SessionRow]:
        rows = await self._store.fetchall(
            "SELECT id, user_id, created_at, last_seen_at, user_agent FROM sessions WHERE user_id = ? "
            "ORDER BY last_seen_at DESC",
            (user_id,),
        )
        return [SessionRow(*r) for r in rows]

    # --- one-time links -------------------------------------------------------------------

    async def create_link(self, token_hash: bytes, kind: str, email: str, workspace_id: int | None,
                          role: str | None, ttl_s: float) -> None:
        email, now = check_email(email), time.time()
        if role is not None:
            _check_role(role)
        async with self._store.transaction() as db:
            await db.execute(
                f"INSERT INTO account_links (token_hash, {_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (token_hash, kind, email, workspace_id, role, now, now + ttl_s),
            )

    async def link(self, token_hash: bytes, kind: str) -> AccountLink | None:
        """The link if it exists, is of `kind`, unused and unexpired; else None."""
        row = await self._one(
            f"SELECT {_LINK_COLUMNS} FROM account_links WHERE token_hash = ? AND kind = ? "
            "AND used_at IS NULL AND expires_at > ?",
            (token_hash, kind, time.time()),
        )
        return None if row is None else _link(row)

    @staticmethod
    async def _use_link(db: Tx, token_hash: bytes, kind: str) -> AccountLink:
        now = time.time()
        rows = await _fetch(db,
            f"SELECT {_LINK_COLUMNS} FROM account_links WHERE token_hash = ? AND kind = ? "
            "AND used_at IS NULL AND expires_at > ?",
            (token_hash, kind, now),
        )
        if not rows:
            raise AccountError("this link is not valid: it was already used, has expired, or was mistyped")
        await db.execute("UPDATE account_links SET used_at = ? WHERE token_hash = ?", (now, token_hash))
        return _link(rows[0])

    async def accept_invite(self, token_hash: bytes, user_id: int | None, password_hash: str | None) -> User:
        """Use an invitation: as the signed-in user it names (`user_id`), or as a new user."""
        now = time.time()
        async with self._store.transaction() as db:
            link = await self._use_link(db, token_hash, "invite")
            existing = await _fetch(db, "SELECT id FROM users WHERE email = ?", (link.email,))
            if user_id is None:
                if existing or password_hash is None:
                    raise AccountError("an account with this email already exists; sign in to accept the invitation")
                user_id = await self._insert_user(db, link.email, password_hash, link.workspace_id, now)
            elif not existing or existing[0][0] != user_id:
                raise AccountError("this invitation is for another email address; sign in as that user to accept it")
            if link.workspace_id is not None:
                await self._add_member(db, user_id, link.workspace_id, link.role or "member", now)
                await db.execute("UPDATE users SET current_workspace_id = ? WHERE id = ?", (link.workspace_id, user_id))
        return await self.user_by_id(user_id)

    async def reset_password(self, token_hash: bytes, password_hash: str) -> User:
        async with self._store.transaction() as db:
            link = await self._use_link(db, token_hash, "reset")
            rows = await _fetch(db, "SELECT id FROM users WHERE email = ?", (link.email,))
            if not rows:
                raise AccountError("the account for this link no longer exists")
            await db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, rows[0][0]))
            await db.execute("DELETE FROM sessions WHERE user_id = ?", (rows[0][0],))
        return await self.user_by_id(int(rows[0][0]))

    # --- login throttling -----------------------------------------------------------------

    async def record_login_failure(self, subjects: Sequence[str], window_s: float) -> None:
        now = time.time()
        async with self._store.transaction() as db:
            await db.execute("DELETE FROM login_failures WHERE failed_at < ?", (now - window_s,))
            await db.executemany(
                "INSERT INTO login_failures (subject, failed_at) VALUES (?, ?)", [(s, now) for s in subjects]
            )

    async def login_failures(self, subjects: Sequence[str], window_s: float) -> int:
        """The most failures any of `subjects` had within the window."""
        worst = 0
        for subject in subjects:
            row = await self._one(
                "SELECT count(*) FROM login_failures WHERE subject = ? AND failed_at >= ?",
                (subject, time.time() - window_s),
            )
            worst = max(worst, int(row[0]) if row else 0)
        return worst

    async def clear_login_failures(self, subject: str) -> None:
        async with self._store.transaction() as db:
            await db.execute("DELETE FROM login_failures WHERE subject = ?", (subject,))
