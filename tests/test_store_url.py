"""Store URLs in the config: sqlite:/// relative and absolute, postgresql://, store.path, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.redaction import redact_url
from proxy.store_url import parse_store_url

ENV = {"OKM_KEY_PEPPER": "pepper", "OKM_PG_PASSWORD": "pg-secret-pw"}


def _load(tmp_path: Path, store: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"store: {store}\n", encoding="utf-8")
    return load_config(path, ENV)


def test_sqlite_urls_relative_absolute_and_the_older_path_key(tmp_path):
    assert _load(tmp_path, "{url: 'sqlite:///var/a.sqlite3'}").store_url.path == tmp_path / "var" / "a.sqlite3"
    assert _load(tmp_path, "{url: 'sqlite:////srv/okm/a.sqlite3'}").store_url.path == Path("/srv/okm/a.sqlite3")
    assert _load(tmp_path, "{path: var/b.sqlite3}").store_path == tmp_path / "var" / "b.sqlite3"
    assert _load(tmp_path, "{}").store_url.path == tmp_path / "var" / "okm.sqlite3"
    assert _load(tmp_path, "{}").store_url.kind == "sqlite"


def test_postgresql_url_with_the_password_from_the_environment(tmp_path):
    config = _load(tmp_path, "{url: 'postgresql://okm@db.internal:5432/okm', password_env: OKM_PG_PASSWORD}")
    url = config.store_url
    assert (url.kind, url.path, url.display) == ("postgresql", None, "postgresql://okm@db.internal:5432/okm")
    assert url.password is not None and url.password.reveal() == "pg-secret-pw"
    assert "pg-secret-pw" not in repr(config) and "pg-secret-pw" not in repr(url)
    with pytest.raises(ConfigError, match="is not a SQLite file"):
        config.store_path  # noqa: B018 (reason: the property raises)


@pytest.mark.parametrize(("store", "message"), [
    ("{url: 'mysql://x@h/db'}", "store.url: unsupported scheme 'mysql'"),
    ("{url: 'sqlite://var/x'}", "store.url: a SQLite URL is sqlite:///relative/path"),
    ("{url: 'postgresql://x@h'}", "store.url: a PostgreSQL URL names a host and a database"),
    ("{url: 'sqlite:///a', path: b}", "store.url: give store.url or store.path, not both"),
    ("{url: 'sqlite:///a', password_env: OKM_PG_PASSWORD}", "store.password_env: only a postgresql:// store"),
    ("{url: 'postgresql://x@h/db', password_env: NOT_SET}", "store.password_env: environment variable NOT_SET"),
    ("{uri: 'sqlite:///a'}", "store.uri: unknown key"),
])
def test_bad_store_settings_name_the_field(tmp_path, store, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, store)


def test_redact_masks_only_the_password():
    assert redact_url("postgresql://u:p%40ss@h:5/db?sslmode=require") == "postgresql://u:***@h:5/db?sslmode=require"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert parse_store_url("postgresql://u:pw@h/db", Path("/")).display == "postgresql://u:***@h/db"
