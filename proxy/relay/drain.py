"""The process phase (starting, ready, draining, closed, cutting) as one state, and a watch
around every relayed stream so that at the drain deadline each one is told to stop and can end
with an in-band error instead of a silent cut. It decides nothing about timing: the app and the
server move the phase forward.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from proxy.types import Phase


class DrainDeadline(Exception):
    """The drain deadline passed while this stream was still running."""


class Drain:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self._scopes: set[asyncio.Timeout] = set()

    def advance(self, phase: Phase) -> None:
        self.phase = max(self.phase, phase)

    @property
    def streams(self) -> int:
        """Streams currently inside `watch()`."""
        return len(self._scopes)

    def cut(self) -> int:
        """Stop every watched stream now (and any that starts later); returns how many were cut."""
        self.advance(Phase.CUTTING)
        now = asyncio.get_running_loop().time()
        for scope in self._scopes:
            if not scope.expired():  # a second cut must not touch a scope that already fired
                scope.reschedule(now)
        return len(self._scopes)

    def enter(self, scope: asyncio.Timeout) -> None:
        """A stream's own timeout scope (stream_watch.StreamScope) is cut with the others."""
        self._scopes.add(scope)

    def leave(self, scope: asyncio.Timeout) -> None:
        self._scopes.discard(scope)

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[None]:
        """Run a stream's relay; raises DrainDeadline in the caller if the drain cuts it."""
        scope = asyncio.timeout(0 if self.phase is Phase.CUTTING else None)  # started after the cut: cut at once
        try:
            async with scope:
                self._scopes.add(scope)
                try:
                    yield
                finally:
                    self._scopes.discard(scope)
        except TimeoutError as exc:
            if scope.expired():
                raise DrainDeadline() from exc
            raise
