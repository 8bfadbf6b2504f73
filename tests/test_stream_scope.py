"""One stream's bounds in one timer (stream_watch.StreamScope): the drain cut, `max_s`, revoked access."""

from __future__ import annotations

import asyncio

from proxy.relay.drain import Drain, DrainDeadline
from proxy.relay.stream_watch import StreamCut, StreamScope, StreamWatch
from proxy.types import Phase, Principal

ALICE = Principal(1, "alice", "k-alice", False)
BOB = Principal(2, "bob", "k-bob", True)


async def run(scope: StreamScope, seconds: float = 30) -> str:
    try:
        async with scope:
            await asyncio.sleep(seconds)
    except DrainDeadline:
        return "drain"
    except StreamCut as cut:
        return cut.code
    return "finished"


async def test_a_scope_changes_nothing_until_a_bound_is_reached() -> None:
    drain, watch = Drain(), StreamWatch()
    assert await run(StreamScope(drain, watch, ALICE, None, 30), 0) == "finished"
    assert await run(StreamScope(drain, None, None, None, 30), 0) == "finished"
    assert drain.streams == 0 and watch.streams == 0


async def test_the_drain_cuts_every_scope_and_any_that_starts_later() -> None:
    drain, watch = Drain(), StreamWatch()
    running = [asyncio.create_task(run(StreamScope(drain, watch, p, None, 30))) for p in (ALICE, BOB, None)]
    await asyncio.sleep(0)
    assert drain.streams == 3 and watch.streams == 2  # a stream without a principal has no watch entry
    assert drain.cut() == 3 and drain.phase is Phase.CUTTING
    assert await asyncio.wait_for(asyncio.gather(*running), 2) == ["drain"] * 3
    assert drain.streams == 0 and watch.streams == 0
    assert await asyncio.wait_for(run(StreamScope(drain, watch, ALICE, None, 30)), 2) == "drain"


async def test_a_sweep_cuts_only_the_streams_whose_caller_lost_the_right() -> None:
    drain, watch = Drain(), StreamWatch()
    alice = asyncio.create_task(run(StreamScope(drain, watch, ALICE, None, 30)))
    bob = asyncio.create_task(run(StreamScope(drain, watch, BOB, "openai", 30)))
    await asyncio.sleep(0)
    seen: list[tuple[str, str | None]] = []

    def allowed(principal: Principal, byok_provider: str | None) -> str | None:
        seen.append((principal.key_id, byok_provider))
        return "the key was revoked" if principal is BOB else None

    assert watch.sweep(allowed) == 1
    assert sorted(seen) == [("k-alice", None), ("k-bob", "openai")]
    assert await asyncio.wait_for(bob, 2) == "access_revoked"
    assert not alice.done()
    alice.cancel()
    await asyncio.gather(alice, return_exceptions=True)
    assert watch.streams == 0 and drain.streams == 0


async def test_a_stream_past_its_longest_duration_is_cut() -> None:
    drain, watch = Drain(), StreamWatch()
    assert await asyncio.wait_for(run(StreamScope(drain, watch, ALICE, None, 0.05)), 2) == "stream_too_long"
    # without a principal no duration bound applies (as before: the watch needs a caller)
    assert await run(StreamScope(drain, watch, None, None, 0.0), 0.1) == "finished"


async def test_a_timeout_inside_the_scope_stays_the_callers_own() -> None:
    drain, watch = Drain(), StreamWatch()

    async def inner_timeout() -> str:
        async with StreamScope(drain, watch, ALICE, None, 30):
            try:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(30)
            except TimeoutError:
                return "own timeout"
        return "finished"

    assert await asyncio.wait_for(inner_timeout(), 2) == "own timeout"

    async def raises_timeout() -> None:
        async with StreamScope(drain, watch, ALICE, None, 30):
            raise TimeoutError("the caller's")

    try:
        await raises_timeout()
    except TimeoutError as exc:
        assert str(exc) == "the caller's"
    else:
        raise AssertionError("the caller's TimeoutError was swallowed")
