"""The log paths: buffered access lines, redaction, and quiet refusals of malformed HTTP."""

from __future__ import annotations

import io
import logging

import orjson
from aiohttp.http_exceptions import BadHttpMessage

from proxy.redaction import redact
from proxy.telemetry.accesslog import AccessLog, access_line
from proxy.telemetry.logs import quiet_bad_requests
from proxy.types import Endpoint, Lane, RequestRecord, Route


def test_malformed_http_is_one_warning_line_without_traceback() -> None:
    logger = logging.getLogger("test.aiohttp.server")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.addFilter(quiet_bad_requests)
    try:
        try:
            raise BadHttpMessage("Transfer-Encoding can't be present with Content-Length")
        except BadHttpMessage:
            logger.exception("Error handling request from %s", "127.0.0.1")
        try:
            raise RuntimeError("a real bug")
        except RuntimeError:
            logger.exception("Error handling request from %s", "127.0.0.1")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(quiet_bad_requests)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("WARNING Error handling request from 127.0.0.1: refused a malformed HTTP request")
    assert "Traceback" not in lines[0] and lines[1].startswith("ERROR")
    assert any("Traceback" in line for line in lines[2:])  # real errors keep their traceback


async def test_access_lines_are_batched_and_redact_the_model() -> None:
    out = io.BytesIO()
    log = AccessLog(out)
    record = RequestRecord("req_1", 0.0, 0.0, Endpoint.CHAT, route=Route(Lane.BYOK, "byok/x/sk-abcdefghijklmnop", "m", "x"))
    await log.start()
    log.write(access_line(record))
    assert out.getvalue() == b""  # not one write per request
    await log.stop()
    line = orjson.loads(out.getvalue())
    assert line["request_id"] == "req_1" and line["model"] == "byok/x/[redacted]"
    assert redact("Bearer okm_abcdefghijklmnopqrstuvwxyz") == "[redacted]"
