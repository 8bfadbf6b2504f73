"""Logging set-up: one stdout handler whose formatter passes every line through the one redaction
rule (proxy.redaction: credential-shaped substrings and the config's own secret values are masked).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from aiohttp.http_exceptions import HttpProcessingError

from proxy.redaction import redact, usable_known


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, known: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.known = usable_known(known)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.known)


def set_known_secrets(known: Iterable[str]) -> None:
    """Tell every redacting handler the current config's secret values (at start and on reload)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            handler.formatter.known = usable_known(known)


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
