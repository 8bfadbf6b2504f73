"""Store URLs: `sqlite:///relative`, `sqlite:////absolute`, `postgresql://USER@HOST:PORT/DB`.

Shared vocabulary (config parses them, the store opens them); parsing only, no I/O. `display`
is the URL with any password replaced by `***` (proxy.redaction), the only form that may appear in
logs and errors.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

from proxy.redaction import redact_url
from proxy.types import Secret

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


class StoreUrlError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class StoreUrl:
    kind: str  # SQLITE or POSTGRESQL
    path: Path | None  # SQLite: the database file (absolute)
    dsn: str | None  # PostgreSQL: what asyncpg connects to (may hold a password)
    display: str  # safe to log
    password: Secret | None = None  # PostgreSQL: from store.password_env, never in the file

    def with_password(self, password: Secret | None) -> StoreUrl:
        return replace(self, password=password)

    def __repr__(self) -> str:
        return f"StoreUrl({self.display!r})"

    @classmethod
    def sqlite(cls, path: Path) -> StoreUrl:
        path = Path(path)
        return cls(SQLITE, path, None, f"sqlite:///{path}")


def parse_store_url(url: str, base: Path) -> StoreUrl:
    """Parse a store URL; a relative SQLite path resolves against `base` (the config's folder)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreUrlError("must look like sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    scheme = scheme.lower()
    if scheme == SQLITE:
        if not rest.startswith("/") or rest == "/":
            raise StoreUrlError("a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        path = Path(rest[1:]).expanduser()
        return StoreUrl.sqlite(path if path.is_absolute() else (base / path).resolve())
    if scheme in (POSTGRESQL, "postgres"):
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise StoreUrlError("a PostgreSQL URL names a host and a database: postgresql://USER@HOST:PORT/DB")
        try:
            parts.port  # noqa: B018 (reason: raises ValueError on a bad port)
        except ValueError as exc:
            raise StoreUrlError(f"bad port in {redact_url(url)}") from exc
        return StoreUrl(POSTGRESQL, None, url, redact_url(url))
    raise StoreUrlError(f"unsupported scheme {scheme!r}: use sqlite or postgresql")
