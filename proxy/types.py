"""Shared shapes passed between modules: lanes, routes, principals, usage, upstream targets.

Only frozen data lives here; no I/O and no behaviour beyond trivial helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class Lane(StrEnum):
    CHEAP = "cheap"
    RESALE = "resale"
    BYOK = "byok"


class Endpoint(StrEnum):
    """The proxied POST endpoints, by their path under /v1/."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    INPUT_TOKENS = "responses/input_tokens"
    MODERATIONS = "moderations"
    IMAGES_GENERATIONS = "images/generations"
    IMAGES_EDITS = "images/edits"
    AUDIO_SPEECH = "audio/speech"
    AUDIO_TRANSCRIPTIONS = "audio/transcriptions"
    AUDIO_TRANSLATIONS = "audio/translations"


# The rest of the stateless API: priced per request unless the answer reports tokens.
MEDIA_ENDPOINTS = frozenset({Endpoint.INPUT_TOKENS, Endpoint.MODERATIONS, Endpoint.IMAGES_GENERATIONS,
                             Endpoint.IMAGES_EDITS, Endpoint.AUDIO_SPEECH, Endpoint.AUDIO_TRANSCRIPTIONS,
                             Endpoint.AUDIO_TRANSLATIONS})
# Endpoints whose request is multipart/form-data (a file upload), not JSON.
FORM_ENDPOINTS = frozenset({Endpoint.IMAGES_EDITS, Endpoint.AUDIO_TRANSCRIPTIONS, Endpoint.AUDIO_TRANSLATIONS})
# Endpoints whose answer may be other than JSON (audio bytes; transcripts as text, SRT or VTT).
BYTES_ENDPOINTS = frozenset({Endpoint.AUDIO_SPEECH, Endpoint.AUDIO_TRANSCRIPTIONS, Endpoint.AUDIO_TRANSLATIONS})


class Outcome(StrEnum):
    """How a request ended, as recorded in usage rows, logs and metrics."""

    OK = "ok"
    REJECTED = "rejected"  # refused by the gateway before any upstream call
    UPSTREAM_ERROR = "upstream_error"  # upstream failed or answered an error
    UPSTREAM_TIMEOUT = "upstream_timeout"
    CLIENT_CANCELLED = "client_cancelled"  # the client went away
    INTERRUPTED = "interrupted"  # in flight when the process died or the drain deadline hit
    INTERNAL_ERROR = "internal_error"  # a gateway bug: answered 500, logged with a traceback


class Phase(IntEnum):
    """Where the process is; it only moves forward (a later phase implies the earlier ones)."""

    STARTING = 0  # the store is not open yet (or no longer): readiness fails
    READY = 1
    DRAINING = 2  # a stop was signalled: readiness fails, every answer closes its connection
    CLOSED = 3  # the listener is closed: late requests on kept-alive connections get 503
    CUTTING = 4  # the drain deadline passed: streams still running are being cut


class ShedReason(StrEnum):
    """Why a request was refused before any upstream call (label of okm_requests_shed_total)."""

    OVERLOADED = "overloaded"  # limits.max_concurrent_requests reached
    DRAINING = "draining"  # the listener is closed for a stop; the request came on a kept-alive connection
    WORKSPACE_RPM = "workspace_rpm"
    WORKSPACE_STREAMS = "workspace_streams"
    WORKSPACE_CONCURRENCY = "workspace_concurrency"  # its share of limits.max_concurrent_requests


class AuthFailure(StrEnum):
    """Why authentication failed; bounded, so it can be a metric label."""

    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    DISABLED = "disabled"


class AttemptResult(StrEnum):
    """What one upstream attempt did; drives pool health and failover."""

    SUCCESS = "success"
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx or garbage instead of an answer
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"  # no headers / first event in time
    AUTH_ERROR = "auth_error"  # 401/403 from the upstream
    CLIENT_ERROR = "client_error"  # other 4xx: the request's fault, not retried


class Secret:
    """A secret value that never prints itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "") -> None:
        self._value = value
        self.source = source  # where it came from, e.g. the env var name

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source or '***'})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a public model ID points: lane, bare model name and (BYOK) provider."""

    lane: Lane
    public_model: str  # exactly what the client sent, e.g. "byok/openai/gpt-5.4"
    model: str  # the name after the prefix, e.g. "gpt-5.4"
    provider: str | None = None  # BYOK provider name


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    workspace_id: int
    workspace_name: str
    key_id: str
    byok_enabled: bool
    prepaid: bool = True  # billing mode; postpaid workspaces are never refused for their balance
    budgeted: bool = False  # the workspace has a monthly budget
    key_limited: bool = False  # this key has a lifetime spend limit

    @property
    def needs_hold(self) -> bool:
        """Whether a priced request must take a billing hold (one store round trip) first."""
        return self.prepaid or self.budgeted or self.key_limited


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One concrete upstream to try: endpoint, credentials and quirks."""

    name: str  # configured upstream/account name: safe for metrics and usage rows
    kind: str  # "http" or "mock"
    base_url: str
    api_key: Secret | None
    model: str  # model name sent upstream
    responses_stream: bool = True  # False: /v1/responses is always called non-stream
    scrub: bool = False  # strict scrub (Budget pool)
    byok_provider: str | None = None  # set for BYOK targets: auth failures are the tenant's key


@dataclass(slots=True)
class Usage:
    """Token buckets of one request (proxy.relay.metering fills them).

    prompt_tokens is all input, cached included; completion_tokens all output, reasoning included.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False  # some count was not reported (or not believable) and was estimated
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Price:
    """One price-book entry in integer micro-units: per 1M tokens, and per request."""

    input: int = 0
    cached_input: int = 0
    output: int = 0
    request: int = 0
    max_output_tokens: int | None = None
    source: str = ""  # the price-book key it came from (an exact model ID or a `*` pattern)


@dataclass(slots=True)
class RequestRecord:
    """Everything known about one request, filled in as it goes; becomes a usage row."""

    request_id: str
    started_at: float  # unix time
    t0: float  # monotonic start, for durations
    endpoint: Endpoint
    stream: bool = False
    principal: Principal | None = None
    route: Route | None = None
    upstream: str | None = None  # configured upstream name that served (or last tried)
    status: int = 0
    outcome: Outcome = Outcome.OK
    usage: Usage = field(default_factory=Usage)
    ttfb_s: float | None = None
    duration_s: float | None = None
    attempts: int = 0
    delivered: bool = False  # the stream's terminal event reached the client: a later disconnect is no cancellation
    price: Price | None = None  # billing on: the price this request is charged at
    hold_micros: int = 0  # the billing hold taken before the upstream call (0: none)
    cost_micros: int = 0  # set when the request ends
    settled: tuple[object, ...] | None = None  # what a stream's final row committed before its terminal event said
    admitted: bool = False  # the admission row was committed with the billing hold (no separate write)
