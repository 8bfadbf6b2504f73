"""How a request ended → its outcome and stream counters: one table, no event loop."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import errors
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.outcome import End, end_of_error, record_end
from proxy.types import Endpoint, Lane, Outcome, RequestRecord, Route

ROUTE = Route(Lane.CHEAP, "cheap/m", "m")


def _record(*, outcome: Outcome = Outcome.OK, delivered: bool = False, status: int = 200) -> RequestRecord:
    record = RequestRecord("req_x", 0.0, 0.0, Endpoint.CHAT, stream=True, route=ROUTE, status=status)
    record.outcome, record.delivered = outcome, delivered
    return record


def _counts(metrics: Metrics) -> tuple[float, float, float]:
    value = metrics.registry.get_sample_value
    interrupted = sum(value("okm_streams_interrupted_total", {"lane": "cheap", "reason": r}) or 0.0
                      for r in ("upstream_broke", "idle_timeout", "event_too_large", "drain_deadline",
                                "stream_too_long", "access_revoked"))
    disconnects = sum(value("okm_client_disconnects_total", {"phase": p}) or 0.0
                      for p in ("waiting", "streaming", "stalled"))
    return interrupted, value("okm_inband_errors_total", {"lane": "cheap"}) or 0.0, disconnects


# end, prior outcome, delivered, status → outcome, (interrupted, in-band errors, disconnects)
CASES = {
    "complete": (End.COMPLETE, Outcome.OK, False, 200, Outcome.OK, (0, 0, 0)),
    "upstream error event": (End.UPSTREAM_ERROR_EVENT, Outcome.OK, False, 200, Outcome.UPSTREAM_ERROR, (0, 0, 0)),
    "upstream broke": (End.UPSTREAM_BROKE, Outcome.OK, False, 200, Outcome.UPSTREAM_ERROR, (1, 1, 0)),
    "idle timeout": (End.IDLE_TIMEOUT, Outcome.OK, False, 200, Outcome.UPSTREAM_TIMEOUT, (1, 1, 0)),
    "event too large": (End.EVENT_TOO_LARGE, Outcome.OK, False, 200, Outcome.UPSTREAM_ERROR, (1, 1, 0)),
    "drain deadline": (End.DRAIN_DEADLINE, Outcome.OK, False, 200, Outcome.INTERRUPTED, (1, 1, 0)),
    "stream too long": (End.STREAM_TOO_LONG, Outcome.OK, False, 200, Outcome.INTERRUPTED, (1, 1, 0)),
    "access revoked": (End.ACCESS_REVOKED, Outcome.OK, False, 200, Outcome.INTERRUPTED, (1, 1, 0)),
    "client left mid-stream": (End.CLIENT_LEFT, Outcome.OK, False, 200, Outcome.CLIENT_CANCELLED, (0, 0, 1)),
    "client left waiting": (End.CLIENT_LEFT, Outcome.OK, False, 0, Outcome.CLIENT_CANCELLED, (0, 0, 1)),
    "client stalled": (End.CLIENT_STALLED, Outcome.OK, False, 200, Outcome.CLIENT_CANCELLED, (0, 0, 1)),
    "left after the terminal event": (End.CLIENT_LEFT, Outcome.OK, True, 200, Outcome.OK, (0, 0, 0)),
    "left while writing an upstream error": (End.CLIENT_LEFT, Outcome.UPSTREAM_ERROR, False, 200,
                                             Outcome.CLIENT_CANCELLED, (0, 0, 1)),
    "second report of the same leaving": (End.CLIENT_LEFT, Outcome.CLIENT_CANCELLED, False, 200,
                                          Outcome.CLIENT_CANCELLED, (0, 0, 0)),
    "cut by the stop": (End.CUT, Outcome.OK, False, 200, Outcome.INTERRUPTED, (0, 0, 0)),
    "cut after the client left": (End.CUT, Outcome.CLIENT_CANCELLED, False, 200, Outcome.CLIENT_CANCELLED, (0, 0, 0)),
    "refused": (End.REFUSED, Outcome.OK, False, 400, Outcome.REJECTED, (0, 0, 0)),
    "internal error": (End.INTERNAL_ERROR, Outcome.OK, False, 500, Outcome.INTERNAL_ERROR, (0, 0, 0)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_end_sets_its_outcome_and_counters_once(case: tuple[Any, ...]) -> None:
    end, prior, delivered, status, outcome, counts = case
    metrics, record = Metrics(), _record(outcome=prior, delivered=delivered, status=status)
    record_end(record, metrics, end)
    assert record.outcome is outcome
    assert _counts(metrics) == counts


ERRORS = {
    "refused before any attempt": (errors.InvalidRequestError("bad"), 0, End.REFUSED),
    "rate-limited by the workspace": (errors.RateLimitedError("slow down"), 0, End.REFUSED),
    "every pool account rate-limited": (errors.RateLimitedError("pool"), 2, End.UPSTREAM_FAILED),
    "upstream status error": (errors.UpstreamStatusError(422, {"error": {"message": "x"}}), 1, End.UPSTREAM_FAILED),
    "no healthy upstream": (errors.NoHealthyUpstreamError("none"), 3, End.UPSTREAM_FAILED),
    "timed out": (errors.UpstreamTimeoutError("late"), 0, End.UPSTREAM_TIMED_OUT),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_an_error_ends_as_refused_or_failed_by_its_upstreams(case: tuple[Any, ...]) -> None:
    exc, attempts, end = case
    record = _record()
    record.attempts = attempts
    assert end_of_error(exc, record) is end
