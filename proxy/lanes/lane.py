"""The one interface every lane implements; the pipeline talks to a lane only through it.

A lane owns its targets, its health bookkeeping and the error for a request whose every attempt
failed; nothing outside the lane reaches into its pool or asks which lane it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from proxy import errors
from proxy.types import AttemptResult, Lane, Route, Secret, UpstreamTarget


class FailedAttempt(Protocol):
    """What a lane learns from one failed attempt (relay.attempt.AttemptFailed is one)."""

    @property
    def result(self) -> AttemptResult: ...

    @property
    def error(self) -> errors.ProxyError: ...

    @property
    def retry_after(self) -> float | None: ...


class SealedLane(Protocol):
    lane: Lane
    scrub: bool  # strict scrub of the client's request and the upstream's answer

    def targets(self, route: Route, key: Secret | None = None) -> Iterator[UpstreamTarget]:
        """The upstreams a request may try, in order; `key` is the workspace's own (BYOK only)."""
        ...

    def begin(self, target: UpstreamTarget) -> None: ...

    def end(self, target: UpstreamTarget) -> None: ...

    def report(self, target: UpstreamTarget, result: AttemptResult, retry_after: float | None) -> None: ...

    def exhausted(self, route: Route, failures: Sequence[FailedAttempt]) -> errors.ProxyError:
        """The client's error once no target is left; it names no account."""
        ...
