"""The access log: one JSON line per request on stdout (journald), built only from bounded,
non-secret fields, and passed through the one redaction function every log path uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import IO

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from proxy.types import RequestRecord

MAX_MODEL_CHARS = 256  # the public model ID comes from the client

# Anything shaped like a credential is cut out of every log line and error message we write.
_SECRET_SHAPES = re.compile(
    r"(okm_[A-Za-z0-9_]{8,}|sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+[^\s\"']+|(?:api[_-]?key|token|secret|password)\"?\s*[:=]\s*\"?[^\s\",}]+)",
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


def quiet_bad_requests(record: logging.LogRecord) -> bool:
    """A malformed HTTP request (refused by aiohttp's parser before the app runs) is the client's
    fault: one warning line naming the problem, not an ERROR with a traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.msg = f"{record.msg}: refused a malformed HTTP request ({type(exc).__name__}: {exc.message})"
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


class AccessLog:
    """Access lines gathered in memory and written to stdout together, every FLUSH_S and at stop.

    Going through `logging` cost a LogRecord, a caller lookup and a write+flush syscall per
    request; journald does not need that. Lines of the last FLUSH_S are lost on a hard kill.
    """

    FLUSH_S = 0.25

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def write(self, line: bytes) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        if not self._lines:
            return
        data, self._lines = b"\n".join(self._lines) + b"\n", []
        stream = self._stream or sys.stdout.buffer
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError) as exc:  # a closed or full stdout must not break serving
            logging.getLogger("okm.server").warning("access log write failed: %s", type(exc).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_S)
            self.flush()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="access-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()


def access_line(record: RequestRecord) -> bytes:
    # Every field is bounded and gateway-made except the client's model ID, so only that one
    # goes through redact(); running the regex over the whole line cost ~45 us a request.
    route, usage, principal = record.route, record.usage, record.principal
    line = {
        "ts": round(time.time(), 3),
        "request_id": record.request_id,
        "workspace_id": principal.workspace_id if principal else None,
        "key_id": principal.key_id if principal else None,  # the key's public id, never the key
        "endpoint": record.endpoint.value,
        "lane": route.lane.value if route else None,
        "model": redact(route.public_model[:MAX_MODEL_CHARS]) if route else None,
        "upstream": record.upstream,
        "stream": record.stream,
        "status": record.status,
        "outcome": record.outcome.value,
        "attempts": record.attempts,
        "ttfb_ms": None if record.ttfb_s is None else round(record.ttfb_s * 1000, 2),
        "duration_ms": None if record.duration_s is None else round(record.duration_s * 1000, 2),
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "tokens_estimated": usage.estimated,
    }
    return orjson.dumps(line)
