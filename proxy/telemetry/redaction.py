"""Logging set-up and the one redaction rule every log line and error text passes through:
credential-shaped substrings and the config's own secret values are masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

from aiohttp.http_exceptions import HttpProcessingError

# Anything shaped like a credential is cut out of every log line and error message we write.
# Workspace keys are matched case-sensitively: "OKM_MASTER_KEY is not set" names a variable.
_SECRET_SHAPES = re.compile(
    r"((?-i:okm_[0-9A-Za-z]{8,}(?:_[0-9A-Za-z]+)?)|sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+[^\s\"']+|(?:api[_-]?key|token|secret|password)\"?\s*[:=]\s*\"?[^\s\",}]+)",
    re.IGNORECASE,
)


MIN_KNOWN_SECRET = 8  # shorter configured values would mangle ordinary words


def redact(text: str, known: Iterable[str] = ()) -> str:
    """Mask credential-shaped substrings and the configured secret values; every log line passes here."""
    for secret in known:
        text = text.replace(secret, "[redacted]")
    return _SECRET_SHAPES.sub("[redacted]", text)


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, known: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.known = _usable(known)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.known)


def _usable(known: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({k for k in known if len(k) >= MIN_KNOWN_SECRET}, key=len, reverse=True))


def set_known_secrets(known: Iterable[str]) -> None:
    """Tell every redacting handler the current config's secret values (at start and on reload)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            handler.formatter.known = _usable(known)


def configure_logging(level: str, known: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", known))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings go through the same redaction, not straight to stderr
    logging.getLogger("aiohttp.server").addFilter(quiet_bad_requests)
    for chatty in ("aiosqlite", "asyncpg"):  # at DEBUG they log every SQL call with its parameters (ciphertexts)
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))


def quiet_bad_requests(record: logging.LogRecord) -> bool:
    """A malformed HTTP request (refused by aiohttp's parser before the app runs) is the client's
    fault: one warning line naming the problem, not an ERROR with a traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        # one line, no client bytes beyond a short printable excerpt (the message may quote the request head)
        detail = "".join(c if c.isprintable() else "?" for c in str(exc.message))[:120]
        record.msg = f"{record.msg}: refused a malformed HTTP request ({type(exc).__name__}: {detail})"
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True
