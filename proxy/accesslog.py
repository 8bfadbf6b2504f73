"""The access log: one JSON line per request on stdout (journald), built only from bounded,
non-secret fields, and passed through the one redaction function every log path uses.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

from proxy.types import RequestRecord

access = logging.getLogger("okm.access")

# Anything shaped like a credential is cut out of every log line and error message we write.
_SECRET_SHAPES = re.compile(
    r"(okm_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+[^\s\"']+|(?:api[_-]?key|token|secret|password)\"?\s*[:=]\s*\"?[^\s\",}]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Mask credential-shaped substrings; applied to every log line and logged error."""
    return _SECRET_SHAPES.sub("[redacted]", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    plain = logging.StreamHandler(sys.stdout)
    plain.setFormatter(RedactingFormatter("%(message)s"))
    access.handlers[:] = [plain]
    access.propagate = False
    access.setLevel(logging.INFO)


def log_request(record: RequestRecord, enabled: bool) -> None:
    if not enabled or not access.isEnabledFor(logging.INFO):
        return
    route, usage = record.route, record.usage
    line = {
        "ts": round(time.time(), 3),
        "request_id": record.request_id,
        "endpoint": record.endpoint.value,
        "lane": route.lane.value if route else None,
        "model": route.public_model if route else None,
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
    access.info(orjson.dumps(line).decode())
