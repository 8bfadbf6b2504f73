"""The hot path's plain counts (Metrics.add, observe_request) reach the prometheus-client objects
exactly as direct calls would: same samples, same buckets, once, at flush (and so at every render)."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from proxy.telemetry.metrics import DURATION_BUCKETS, TTFB_BUCKETS, Metrics
from proxy.types import AttemptResult, Endpoint, Lane, RequestRecord, Route, Usage

# on a bucket bound, between bounds, below the first, past the last, zero
VALUES = [0.0, 0.004, 0.005, 0.0051, 0.75, 1.0, 59.9, 600, 1200, 5000.0]


def _record(duration: float, status: int = 200) -> RequestRecord:
    record = RequestRecord("req_x", time.time(), time.monotonic(), Endpoint.CHAT)
    record.route = Route(Lane.RESALE, "resale/m", "m")
    record.status, record.duration_s, record.ttfb_s = status, duration, duration / 2
    record.usage = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10, cached_input_tokens=2, reasoning_tokens=1)
    record.cost_micros = 11
    return record


def _direct(metrics: Metrics, record: RequestRecord) -> None:
    """What observe_request did before: every call straight into prometheus-client."""
    lane, endpoint = "resale", "chat/completions"
    metrics.requests.labels(lane, endpoint, str(record.status)).inc()
    metrics.duration.labels(lane, endpoint).observe(record.duration_s)
    metrics.ttfb.labels(lane, endpoint).observe(record.ttfb_s)
    for kind, count in (("prompt", 7), ("completion", 3), ("cached_input", 2), ("reasoning", 1)):
        metrics.tokens.labels(lane, kind).inc(count)
    metrics.cost.labels(lane).inc(11)
    metrics.attempts.labels(lane, "up", AttemptResult.SUCCESS).inc()


def _samples(metrics: Metrics) -> list[str]:
    """The exposition without the `_created` timestamps (when each child was first made)."""
    return [line for line in generate_latest(metrics.registry).decode().splitlines() if "_created" not in line]


def test_flushed_plain_counts_render_exactly_as_direct_calls() -> None:
    plain, direct = Metrics(), Metrics()
    for i, value in enumerate(VALUES):
        record = _record(value, 200 if i % 3 else 503)
        plain.observe_request(record)
        plain.add(plain.attempts, Lane.RESALE, "up", AttemptResult.SUCCESS)
        _direct(direct, record)
    plain.flush()
    assert _samples(plain) == _samples(direct)
    assert max(DURATION_BUCKETS) < 5000.0 and min(TTFB_BUCKETS) > 0.0  # the values cover both ends


def test_counts_are_flushed_once_and_render_flushes() -> None:
    metrics = Metrics()
    metrics.observe_request(_record(0.2))
    assert b'okm_requests_total{endpoint="chat/completions",lane="resale",status="200"} 1.0' in metrics.render()
    metrics.flush()  # nothing pending: nothing added twice
    metrics.observe_request(_record(0.2))
    text = metrics.render()
    assert b'okm_requests_total{endpoint="chat/completions",lane="resale",status="200"} 2.0' in text
    assert b'okm_request_duration_seconds_count{endpoint="chat/completions",lane="resale"} 2.0' in text
    assert b'okm_tokens_total{kind="prompt",lane="resale"} 14.0' in text
