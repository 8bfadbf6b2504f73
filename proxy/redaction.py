"""The one redaction rule set: what may never appear in a log line, an error text or a display.

Shared vocabulary (imports nothing of the gateway), so every layer may use it: store URLs are
redacted where they are parsed (store_url), log lines by telemetry's formatter (telemetry/logs),
the client-supplied model ID by the access log. Bytes bound for a client are guarded separately,
per answer, by relay/outgoing's SecretGuard (it masks the operator's own values, not shapes).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

MASK = "[redacted]"
URL_PASSWORD_MASK = "***"
MIN_KNOWN_SECRET = 8  # shorter configured values would mangle ordinary words

# Anything shaped like a credential is cut out of every log line and error message we write.
# Workspace keys are matched case-sensitively: "OKM_MASTER_KEY is not set" names a variable.
_SECRET_SHAPES = re.compile(
    r"((?-i:okm_[0-9A-Za-z]{8,}(?:_[0-9A-Za-z]+)?)|sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+[^\s\"']+|(?:api[_-]?key|token|secret|password)\"?\s*[:=]\s*\"?[^\s\",}]+)",
    re.IGNORECASE,
)


def redact(text: str, known: Iterable[str] = ()) -> str:
    """Mask credential-shaped substrings and the configured secret values; every log line passes here."""
    for secret in known:
        text = text.replace(secret, MASK)
    return _SECRET_SHAPES.sub(MASK, text)


def usable_known(known: Iterable[str]) -> tuple[str, ...]:
    """The configured secret values worth masking (long enough), longest first."""
    return tuple(sorted({k for k in known if len(k) >= MIN_KNOWN_SECRET}, key=len, reverse=True))


def redact_url(url: str) -> str:
    """The URL with its password (if any) masked as `***`: the only form of a URL fit to show."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{URL_PASSWORD_MASK}@{host}"))
