"""Typed access to one YAML mapping that remembers its path, for config validation.

Each read marks the key as known; `reject_unknown()` then refuses the rest. Pure: no I/O
except reading an env file the config names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from proxy.errors import ConfigError
from proxy.types import Secret

_MISSING: Any = object()


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class Reader:
    def __init__(self, data: Any, path: str, base_dir: Path, env: dict[str, str] | None = None) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path or '<root>'}: must be a mapping, got {type(data).__name__}")
        self.data = data
        self.where = path
        self.base_dir = base_dir
        self.env: dict[str, str] = env if env is not None else {}
        self.seen: set[str] = set()

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.where}[{key}]"
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(f"{self._child_path(key) if key else self.where}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.fail(key, "is required")
            return default
        return value

    def section(self, key: str) -> Reader:
        value = self._get(key, {})
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
        return Reader(value, self._child_path(key), self.base_dir, self.env)

    def entries(self) -> Iterator[tuple[str, Reader]]:
        """The mapping's own items, each a named sub-section (e.g. providers.<name>)."""
        for name in list(self.data):
            self.seen.add(name)
            if not isinstance(name, str) or not name:
                self.fail(str(name), "names must be non-empty strings")
            value = self.data[name]
            value = {} if value is None else value
            if not isinstance(value, dict):
                self.fail(name, f"must be a mapping, got {type(value).__name__}")
            yield name, Reader(value, self._child_path(name), self.base_dir, self.env)

    def items(self, key: str, required: bool = False) -> list[Reader]:
        value = self._get(key, _MISSING if required else [])
        if not isinstance(value, list) or (required and not value):
            self.fail(key, "must be a non-empty list" if required else "must be a list")
        path = self._child_path(key)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(f"{path}[{i}]: must be a mapping, got {type(item).__name__}")
            out.append(Reader(item, f"{path}[{i}]", self.base_dir, self.env))
        return out

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            self.fail(key, "must be a non-empty string")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.string(key, default)
        if value not in options:
            self.fail(key, f"must be one of {', '.join(options)}, got '{value}'")
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "must be an integer")
        self._check_range(key, value, minimum, maximum)
        return value

    def optional_integer(self, key: str, minimum: int | None = None) -> int | None:
        if self.data.get(key) is None:
            self.seen.add(key)
            return None
        return self.integer(key, minimum=minimum)

    def number(self, key: str, default: Any = _MISSING, minimum: float | None = None, maximum: float | None = None) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, "must be a number")
        self._check_range(key, value, minimum, maximum)
        return float(value)

    def _check_range(self, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be <= {maximum}")

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "must be true or false")
        return value

    def string_list(self, key: str, required: bool = False) -> tuple[str, ...]:
        value = self._get(key, _MISSING if required else [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, "must be a list of non-empty strings")
        if required and not value:
            self.fail(key, "must list at least one model")
        return tuple(value)

    def url(self, key: str) -> str:
        value = self.string(key)
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:  # never echoed: it may hold a password
            self.fail(key, "must not carry a user name or password; give the provider's key with api_key_env")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.fail(key, f"must be an http(s) URL, got '{value[:200]}'")
        return value.rstrip("/")

    def path(self, key: str, default: Any = _MISSING) -> Path:
        return self._resolve(self.string(key, default))

    def optional_path(self, key: str) -> Path | None:
        value = self._get(key, None)
        return None if value is None else self._resolve(self.string(key))

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def required_secret(self, key: str) -> Secret:
        return self.required_secret_named(key, self.string(key))

    def optional_secret(self, key: str) -> Secret | None:
        name = self._get(key, None)
        return None if name is None else self.required_secret(key)

    def required_secret_named(self, key: str, env_name: str) -> Secret:
        if not _ENV_NAME.fullmatch(env_name):  # e.g. a key pasted where its variable's name belongs: never echoed
            self.fail(key, "must be the name of an environment variable (letters, digits and _), not the secret "
                           "itself: put the value in the environment or env_file and name its variable here")
        value = self.env.get(env_name)
        if not value:
            self.fail(key, f"environment variable {env_name} is not set")
        return Secret(value, env_name)

    def optional_secret_named(self, env_name: str) -> Secret | None:
        value = self.env.get(env_name)
        return Secret(value, env_name) if value else None

    def reject_unknown(self) -> None:
        unknown = [k for k in self.data if k not in self.seen]
        if unknown:
            self.fail(str(unknown[0]), "unknown key")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile style); comments and blanks skipped."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values
