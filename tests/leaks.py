"""A test that leaves something open fails, in that test, instead of breaking a later one.

Checked after every test (the event loop of an async test is closed by then): SDK clients and
aiohttp sessions the test created and never closed, sockets it opened and left open, and asyncio
reporting a task destroyed while pending or an exception nobody retrieved. An async test also
fails if a task it started is still running once its fixtures are torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import pytest

_LOOP_COMPLAINTS = ("Task was destroyed but it is pending", "exception was never retrieved", "Unclosed")


TASK_GRACE_S = 1.0  # a task may still be finishing its own close when the last fixture is torn down


class _Created:
    """Instances of a class made while a test runs (held until the test ends, so that an
    unclosed one is seen here rather than collected and reported by a later test's loop)."""

    def __init__(self, cls: type) -> None:
        self.live: list[Any] = []
        original = cls.__init__

        def init(obj: Any, *args: Any, **kwargs: Any) -> None:
            original(obj, *args, **kwargs)
            self.live.append(obj)

        cls.__init__ = init  # type: ignore[misc]  # reason: instrumentation of a third-party class, tests only


_SDK_CLIENTS = _Created(openai.AsyncOpenAI)
_SESSIONS = _Created(aiohttp.ClientSession)


class _Complaints(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(c in message for c in _LOOP_COMPLAINTS):
            self.seen.append(message.splitlines()[0][:200])


def _sockets() -> set[str]:
    found = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:"):
                    found.add(f"{fd}:{target}")
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    _SDK_CLIENTS.live.clear()
    _SESSIONS.live.clear()
    before = _sockets()
    complaints = _Complaints()
    logging.getLogger("asyncio").addHandler(complaints)
    try:
        yield
        gc.collect()  # finalizers of anything unreachable run now, inside this test
        # What survived is long-lived (modules, collected tests, fixtures of wider scope): frozen,
        # the next test's collection scans only what that test made (a full scan of the suite's
        # heap after every test was most of the suite's run time).
        gc.freeze()
    finally:
        logging.getLogger("asyncio").removeHandler(complaints)
    problems = [f"an SDK client was not closed ({c.base_url})" for c in _SDK_CLIENTS.live if not c.is_closed()]
    problems += ["an aiohttp ClientSession was not closed" for s in _SESSIONS.live if not s.closed]
    _SDK_CLIENTS.live.clear()
    _SESSIONS.live.clear()
    problems += [f"asyncio: {m}" for m in complaints.seen]
    left = _sockets() - before
    if left:
        problems.append(f"{len(left)} socket(s) left open: {', '.join(sorted(left)[:5])}")
    if problems:
        pytest.fail("the test leaked: " + "; ".join(problems), pytrace=False)


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Added first to every async test (see `pytest_collection_modifyitems`), so torn down last."""
    before = asyncio.all_tasks()
    yield
    loop = asyncio.get_running_loop()
    end = loop.time() + TASK_GRACE_S
    while True:
        left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
        if not left or loop.time() > end:
            break
        await asyncio.sleep(0.01)
    for task in left:
        task.cancel()
    if left:
        names = ", ".join(sorted(f"{t.get_name()} ({t.get_coro()!r:.80})" for t in left)[:5])
        pytest.fail(f"the test leaked {len(left)} running task(s): {names}", pytrace=False)


def add_task_check(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        fixtures = getattr(item, "fixturenames", None)
        if fixtures is not None and inspect.iscoroutinefunction(function) and "no_leaked_tasks" not in fixtures:
            fixtures.insert(0, "no_leaked_tasks")
