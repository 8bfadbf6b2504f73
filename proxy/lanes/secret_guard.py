"""The last line before bytes leave for a client: every operator secret the config resolved
(pool and provider keys, admin token, key pepper, BYOK master keys) is searched for literally
in every outgoing body, stream event and header, on every lane and status, and masked.

Pure and cheap: one C-level substring search per secret per write; no parse, no regex.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.config import Config

MASK = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter values would mask ordinary text and protect nothing


def operator_secrets(config: Config) -> tuple[str, ...]:
    """Every secret value a config resolved (Config.secrets, the one list; log redaction masks the same)."""
    return tuple(s.reveal() for s in config.secrets())


class SecretGuard:
    """Finds and masks known secrets in bytes or text bound for a client."""

    __slots__ = ("_bytes", "_mask", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first: a secret that contains another is masked whole
        texts = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._texts = tuple(texts)
        self._bytes = tuple(t.encode() for t in texts)
        self._mask = MASK.encode()

    def clean(self, data: bytes) -> bytes | None:
        """`data` with every secret masked, or None when it holds none (the common case)."""
        for secret in self._bytes:
            if secret in data:
                break
        else:
            return None
        for secret in self._bytes:
            data = data.replace(secret, self._mask)
        return data

    def clean_text(self, text: str) -> str | None:
        for secret in self._texts:
            if secret in text:
                break
        else:
            return None
        for secret in self._texts:
            text = text.replace(secret, MASK)
        return text
