"""How a request ended, as one value, and the one function that records it: the request's
outcome (usage row, access log, metrics) and the stream counters that go with it.

The pipeline, the stream writer and the middlewares only name what happened; the rules for
what that means live here. A client leaving after its stream's terminal event changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy import errors
from proxy.telemetry.metrics import Metrics
from proxy.types import Outcome, RequestRecord


class End(StrEnum):
    COMPLETE = "complete"  # the stream reached its terminal event, or a JSON answer was sent
    UPSTREAM_ERROR_EVENT = "upstream_error_event"  # the upstream ended the stream with its own in-band error
    UPSTREAM_BROKE = "upstream_broke"  # mid-stream: the connection broke or closed early
    IDLE_TIMEOUT = "idle_timeout"  # mid-stream: the upstream went silent
    EVENT_TOO_LARGE = "event_too_large"  # mid-stream: an event over limits.max_event_bytes
    DRAIN_DEADLINE = "drain_deadline"  # mid-stream: the stop's deadline cut it
    STREAM_TOO_LONG = "stream_too_long"  # mid-stream: limits.max_stream_s reached (relay.stream_watch)
    ACCESS_REVOKED = "access_revoked"  # mid-stream: its key, workspace or BYOK access went away
    CUT = "cut"  # cancelled by the stop's cut before its stream was watched
    CLIENT_LEFT = "client_left"  # the client went away (waiting, or mid-stream)
    CLIENT_STALLED = "client_stalled"  # the client stopped reading (limits.client_stall_timeout_s)
    REFUSED = "refused"  # a ProxyError answered before or instead of any upstream answer
    UPSTREAM_FAILED = "upstream_failed"  # a ProxyError caused by the upstreams tried
    UPSTREAM_TIMED_OUT = "upstream_timed_out"
    INTERNAL_ERROR = "internal_error"  # a bug of ours, answered 500


@dataclass(frozen=True, slots=True)
class _Rule:
    outcome: Outcome
    interrupted: str | None = None  # okm_streams_interrupted_total reason (plus one in-band error)
    disconnect: bool = False  # counted in okm_client_disconnects_total, unless already settled


_RULES: dict[End, _Rule] = {
    End.COMPLETE: _Rule(Outcome.OK),
    End.UPSTREAM_ERROR_EVENT: _Rule(Outcome.UPSTREAM_ERROR),
    End.UPSTREAM_BROKE: _Rule(Outcome.UPSTREAM_ERROR, "upstream_broke"),
    End.IDLE_TIMEOUT: _Rule(Outcome.UPSTREAM_TIMEOUT, "idle_timeout"),
    End.EVENT_TOO_LARGE: _Rule(Outcome.UPSTREAM_ERROR, "event_too_large"),
    End.DRAIN_DEADLINE: _Rule(Outcome.INTERRUPTED, "drain_deadline"),
    End.STREAM_TOO_LONG: _Rule(Outcome.INTERRUPTED, "stream_too_long"),
    End.ACCESS_REVOKED: _Rule(Outcome.INTERRUPTED, "access_revoked"),
    End.CUT: _Rule(Outcome.INTERRUPTED),
    End.CLIENT_LEFT: _Rule(Outcome.CLIENT_CANCELLED, disconnect=True),
    End.CLIENT_STALLED: _Rule(Outcome.CLIENT_CANCELLED, disconnect=True),
    End.REFUSED: _Rule(Outcome.REJECTED),
    End.UPSTREAM_FAILED: _Rule(Outcome.UPSTREAM_ERROR),
    End.UPSTREAM_TIMED_OUT: _Rule(Outcome.UPSTREAM_TIMEOUT),
    End.INTERNAL_ERROR: _Rule(Outcome.INTERNAL_ERROR),
}
# Ends that change nothing once the stream's terminal event went out, or once one of them was
# recorded (each layer a cancellation passes through reports it).
_LATE = frozenset({End.CUT, End.CLIENT_LEFT, End.CLIENT_STALLED})
_LEFT = frozenset({Outcome.CLIENT_CANCELLED, Outcome.INTERRUPTED})


def record_end(record: RequestRecord, metrics: Metrics, end: End) -> None:
    """Set the request's outcome from how it ended and count what goes with it, once."""
    if end in _LATE and (record.delivered or record.outcome in _LEFT):
        return
    rule = _RULES[end]
    record.outcome = rule.outcome
    lane = record.route.lane if record.route else "none"
    if rule.interrupted is not None:
        metrics.streams_interrupted.labels(lane, rule.interrupted).inc()
        metrics.inband_errors.labels(lane).inc()
    if rule.disconnect:
        phase = "stalled" if end is End.CLIENT_STALLED else ("waiting" if record.status == 0 else "streaming")
        metrics.client_disconnects.labels(phase).inc()


def end_of_error(exc: errors.ProxyError, record: RequestRecord) -> End:
    """How a request answered with `exc` ended: refused, or failed by its upstreams."""
    if isinstance(exc, errors.UpstreamTimeoutError):
        return End.UPSTREAM_TIMED_OUT
    if record.attempts and isinstance(exc, (errors.UpstreamError, errors.ServiceUnavailableError,
                                            errors.RateLimitedError, errors.ByokUpstreamAuthError)):
        return End.UPSTREAM_FAILED
    if record.attempts and exc.status >= 400 and isinstance(exc, errors.UpstreamStatusError):
        return End.UPSTREAM_FAILED
    return End.REFUSED
