"""The access log: one JSON line per request on stdout (journald), built only from bounded,
non-secret fields; the client-supplied model ID passes through proxy.redaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from typing import IO

import orjson

from proxy.background import BackgroundTask
from proxy.redaction import redact
from proxy.types import RequestRecord

MAX_MODEL_CHARS = 256  # the public model ID comes from the client

class AccessLog:
    """Access lines gathered in memory and written to stdout together, every FLUSH_S and at stop.

    Going through `logging` cost a LogRecord, a caller lookup and a write+flush syscall per
    request; journald does not need that. Lines of the last FLUSH_S are lost on a hard kill.
    """

    FLUSH_S = 0.25

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._task = BackgroundTask("access-log")

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
        self._task.start(self._run())

    async def stop(self) -> None:
        await self._task.stop()
        self.flush()


@functools.lru_cache(maxsize=1024)
def _model_id(model: str) -> str:
    """The client's model ID as logged: bounded and redacted; memoized, as a few IDs carry all traffic."""
    return redact(model[:MAX_MODEL_CHARS])


def access_line(record: RequestRecord) -> bytes:
    # Every field is bounded and gateway-made except the client's model ID, so only that one
    # goes through redact(); running the regex over the whole line cost ~45 us a request.
    route, usage, principal = record.route, record.usage, record.principal
    line = {
        "ts": round(time.time(), 3),
        "request_id": record.request_id,
        "workspace_id": principal.workspace_id if principal else None,
        "key_id": principal.key_id if principal else None,  # the key's public id, never the key
        "endpoint": record.endpoint._value_,
        "lane": route.lane._value_ if route else None,
        "model": _model_id(route.public_model) if route else None,
        "upstream": record.upstream,
        "stream": record.stream,
        "status": record.status,
        "outcome": record.outcome._value_,
        "attempts": record.attempts,
        "ttfb_ms": None if record.ttfb_s is None else round(record.ttfb_s * 1000, 2),
        "duration_ms": None if record.duration_s is None else round(record.duration_s * 1000, 2),
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "tokens_estimated": usage.estimated,
    }
    return orjson.dumps(line)
