"""Prometheus metrics: one registry per app, every family declared up front, bounded labels only.

Labels hold lanes, endpoints, status codes, configured upstream names and reasons — never a
key, a workspace, a prompt or a model string from a client.

The per-request families (requests, durations, time to first byte, tokens, cost, successful
attempts) are counted on the hot path as plain numbers (`add`, `observe_request`) and flushed
into the prometheus-client objects by `flush()`: before every render, every second under a
supervisor (where each worker's multiprocess files are what a scrape sums) and when a worker
stops. Names, labels, help text and types are those declared here; only when the numbers reach
the objects changes.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from proxy.types import RequestRecord

# LLM traffic spans milliseconds (auth failures) to many minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
# Upstream first tokens mostly land between 0.3 s and 5 s: finer buckets there keep p99 useful.
TTFB_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("okm_requests_total", "Requests answered, by lane, endpoint and HTTP status.",
                                ["lane", "endpoint", "status"], registry=r)
        self.duration = Histogram("okm_request_duration_seconds", "Whole request duration, including the stream.",
                                  ["lane", "endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.ttfb = Histogram("okm_time_to_first_byte_seconds", "Time until the first response byte went to the client.",
                              ["lane", "endpoint"], buckets=TTFB_BUCKETS, registry=r)
        self.attempts = Counter("okm_upstream_attempts_total", "Upstream attempts by configured upstream and outcome.",
                                ["lane", "upstream", "outcome"], registry=r)
        self.fallbacks = Counter("okm_fallbacks_total", "Requests retried on another upstream of the same lane.",
                                 ["lane"], registry=r)
        self.active_streams = Gauge("okm_active_streams", "Streams currently being relayed.", ["lane"], registry=r,
                                    multiprocess_mode="livesum")
        self.tokens = Counter("okm_tokens_total", "Tokens accounted, by kind (prompt, completion).",
                              ["lane", "kind"], registry=r)
        self.cost = Counter("okm_cost_micros", "Cost charged to workspaces, in micro-units of billing.currency.",
                            ["lane"], registry=r)
        self.billing_refusals = Counter("okm_billing_refusals", "Requests refused for money (402), by reason.",
                                        ["reason"], registry=r)
        self.pool_healthy = Gauge("okm_pool_account_healthy", "1 while a Budget pool account is in rotation.",
                                  ["account"], registry=r, multiprocess_mode="livemin")
        self.auth_failures = Counter("okm_auth_failures_total", "Rejected workspace credentials, by reason.",
                                     ["reason"], registry=r)
        self.client_disconnects = Counter("okm_client_disconnects_total", "Clients that left before the end, by phase.",
                                          ["phase"], registry=r)
        self.streams_interrupted = Counter("okm_streams_interrupted_total", "Streams ended by an in-band error, by reason.",
                                           ["lane", "reason"], registry=r)
        self.inband_errors = Counter("okm_inband_errors_total", "In-band error events written to clients.",
                                     ["lane"], registry=r)
        self.malformed_events = Counter("okm_malformed_events_total", "Upstream stream events that were not valid JSON.",
                                        ["lane"], registry=r)
        self.shed = Counter("okm_requests_shed_total", "Requests refused to protect the gateway or a workspace limit.",
                            ["reason"], registry=r)
        self.secrets_masked = Counter("okm_secrets_masked_total",
                                      "Operator secrets found in bytes bound for a client and masked, by where.",
                                      ["where"], registry=r)
        self.usage_write_failures = Counter("okm_usage_write_failures_total", "Usage rows that could not be written.",
                                            registry=r)
        self.config_reloads = Counter("okm_config_reloads_total", "Config reloads, by result (ok, failed).",
                                      ["result"], registry=r)
        self.in_flight = Gauge("okm_requests_in_flight",
                               "Proxied requests in flight (what limits.max_concurrent_requests caps).", registry=r,
                               multiprocess_mode="livesum")
        self.draining = Gauge("okm_draining", "1 while the process is stopping (readiness fails).", registry=r,
                              multiprocess_mode="livemax")
        self.worker_restarts = Counter("okm_worker_restarts_total",
                                       "Worker processes the supervisor restarted after they died.", registry=r)
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set by the supervisor for its workers
        self._scrape_hooks: list[Callable[[], None]] = []
        self._children: dict[tuple[object, ...], Any] = {}  # see child()
        self._pending: dict[tuple[Any, ...], float] = {}  # (family, *labels) -> amount not yet flushed
        self._observed: dict[tuple[Any, ...], _Observed] = {}  # (family, *labels) -> a histogram child's buffer

    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run `hook` before each render, so gauges read from live state (pool health) are current."""
        self._scrape_hooks.append(hook)

    def child(self, family: Any, *labels: str) -> Any:
        """`family.labels(*labels)`, memoized: labels() takes a lock and hashes every call."""
        key = (id(family), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def add(self, family: Any, *labels: object, amount: float = 1) -> None:
        """`family.labels(*labels).inc(amount)`, as a plain number until the next flush()."""
        key = (family, *labels)
        pending = self._pending
        pending[key] = pending.get(key, 0) + amount

    def _histogram(self, family: Any, *labels: str) -> _Observed:
        key = (family, *labels)
        found = self._observed.get(key)
        if found is None:
            found = self._observed[key] = _Observed(self.child(family, *labels))
        return found

    def observe_request(self, record: RequestRecord) -> None:
        """Everything a finished request adds: count, duration, time to first byte, tokens."""
        lane = record.route.lane._value_ if record.route else "none"
        endpoint = record.endpoint._value_
        self.add(self.requests, lane, endpoint, record.status)
        self._histogram(self.duration, lane, endpoint).observe(record.duration_s or 0.0)
        if record.ttfb_s is not None:
            self._histogram(self.ttfb, lane, endpoint).observe(record.ttfb_s)
        usage = record.usage
        if usage.prompt_tokens > 0:
            self.add(self.tokens, lane, "prompt", amount=usage.prompt_tokens)
        if usage.completion_tokens > 0:
            self.add(self.tokens, lane, "completion", amount=usage.completion_tokens)
        if usage.cached_input_tokens > 0:
            self.add(self.tokens, lane, "cached_input", amount=usage.cached_input_tokens)
        if usage.reasoning_tokens > 0:
            self.add(self.tokens, lane, "reasoning", amount=usage.reasoning_tokens)
        if record.cost_micros > 0:
            self.add(self.cost, lane, amount=record.cost_micros)

    def flush(self) -> None:
        """Move the plain counts into the prometheus-client objects (their multiprocess files)."""
        pending, self._pending = self._pending, {}
        for (family, *labels), amount in pending.items():
            self.child(family, *(str(label) for label in labels)).inc(amount)
        for observed in self._observed.values():
            observed.flush()

    def refresh(self) -> None:
        self.flush()
        for hook in self._scrape_hooks:
            hook()

    def render(self) -> bytes:
        """This process's registry; under workers, every worker's files summed (each counted once)."""
        self.refresh()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        registry.register(_Declared(self.registry, MultiProcessCollector(None, self.multiprocess_dir)))
        return generate_latest(registry)


class _Observed:
    """Observations of one histogram child not yet flushed into it: the same buckets (`le`:
    the first upper bound >= the value, as Histogram.observe), counted as plain numbers."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds = tuple(child._upper_bounds)  # reason: prometheus-client keeps them private; tests/test_metrics_flush.py pins it
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts, total = self._counts, self._sum
        if not any(counts):
            return
        self._counts, self._sum = [0] * len(self._bounds), 0.0
        self._child._sum.inc(total)
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class _Declared(Collector):
    """Multiprocess families, plus every declared family none has written yet (HELP/TYPE from start)."""

    def __init__(self, local: CollectorRegistry, shared: MultiProcessCollector) -> None:
        self._local, self._shared = local, shared

    def collect(self) -> Iterator[Metric]:
        seen = set()
        for family in self._shared.collect():
            seen.add(family.name)
            yield family
        for family in self._local.collect():
            if family.name not in seen:
                yield Metric(family.name, family.documentation, family.type)


def metrics_handler(metrics: Metrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A `/metrics` handler bound to one registry (served on the main or the metrics listener)."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
