"""The one fake upstream's request-chosen answers (testkit.profiles): the same bytes whichever
transport serves them, the raw asyncio one the benchmark uses or the aiohttp FakeUpstream."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from testkit import payloads, profiles, raw_upstream
from testkit.upstream import FakeUpstream, Profiled

STREAM_USAGE = {"stream": True, "stream_options": {"include_usage": True}}
CASES = [
    ("/ev50/ms0/v1/chat/completions", {"model": "m"}),
    ("/ev5/ms1/v1/chat/completions", {"model": "m", **STREAM_USAGE}),
    ("/ev1/ms0/v1/chat/completions", {"model": "m", "stream": True}),
    ("/ok/v1/chat/completions", {"model": "fast"}),
    ("/ok/v1/chat/completions", {"model": "slow-3-1", **STREAM_USAGE}),
    ("/limited/v1/chat/completions", {"model": "fast", "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), CASES)
async def test_the_raw_transport_and_the_fake_upstream_send_the_same_answer(path: str, body: dict[str, object]) -> None:
    server = await raw_upstream.serve(0)
    raw_port = server.sockets[0].getsockname()[1]
    try:
        async with FakeUpstream("profiled", Profiled()) as fake, aiohttp.ClientSession() as session:
            answers = []
            for port in (raw_port, fake.port):
                async with session.post(f"http://127.0.0.1:{port}{path}", data=orjson.dumps(body)) as resp:
                    answers.append((resp.status, resp.headers["Content-Type"], resp.headers.get("Retry-After"),
                                    await resp.read()))
    finally:
        server.close()
        await server.wait_closed()
    assert answers[0] == answers[1]
    assert answers[0][3] == _expected(profiles.by_request(path, body))


def _expected(answer: profiles.Answer) -> bytes:
    return answer.body if answer.events is None else b"".join((*answer.events, *answer.tail))


# Pure: what each profile answers (no event loop).
@pytest.mark.parametrize(("path", "body", "status", "events", "last", "completion_tokens"), [
    ("/ev4/ms0/v1/chat/completions", {"stream": True}, 200, 4, b"data: [DONE]\n\n", None),
    ("/ev4/ms0/v1/chat/completions", {"stream": True, **STREAM_USAGE}, 200, 4, b"data: [DONE]\n\n", 50),
    ("/ok/v1/chat/completions", {"model": "slow-7-20", **STREAM_USAGE}, 200, 7, b"data: [DONE]\n\n", 7),
    ("/ok/v1/chat/completions", {"model": "fast", "stream": True}, 200, 2, b"data: [DONE]\n\n", None),
    ("/limited/v1/chat/completions", {"model": "fast"}, 429, None, None, None),
])
def test_profiles(path: str, body: payloads.JSON, status: int, events: int | None, last: bytes | None,
                  completion_tokens: int | None) -> None:
    answer = profiles.by_request(path, body)
    assert answer.status == status
    assert (None if answer.events is None else len(answer.events)) == events
    if last is not None:
        assert answer.tail[-1] == last
        usage = [orjson.loads(payloads.data_of(t))["usage"] for t in answer.tail[:-1] if b'"usage"' in t]
        assert [u["completion_tokens"] for u in usage] == ([completion_tokens] if completion_tokens else [])
