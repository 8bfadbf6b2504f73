"""One conformance suite, run for every lane (cheap, resale, byok) through the official SDK:
streams, JSON answers, Responses, upstream errors before and after the first byte, disconnects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai
import pytest

from testkit import payloads
from testkit.payloads import TEXT
from testkit.upstream import End, FakeUpstream, Reply, Stream
from tests.conftest import DEFAULT_WORKSPACES, EMBED_MODEL, MODEL, Gateway, pool_key, resale_key

CHAT = [{"role": "user", "content": "hi"}]
ERROR = payloads.openai_error("Invalid value for 'temperature': must be <= 2.", param="temperature",
                              code="invalid_value")


@dataclass(frozen=True)
class LaneCase:
    name: str
    gw: Gateway
    fake: FakeUpstream  # the one upstream this lane may call
    model: str  # public model id
    key: str  # the key the upstream must receive

    @property
    def client(self) -> openai.AsyncOpenAI:
        return self.gw.client

    def others(self) -> list[FakeUpstream]:
        return [u for u in self.gw.upstreams if u is not self.fake]


@pytest.fixture(params=["cheap", "resale", "byok"])
async def lane(request: pytest.FixtureRequest, gateway: Any) -> LaneCase:
    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",))
    byok_key = DEFAULT_WORKSPACES["ws"]["openai"]  # type: ignore[index]  # reason: the default workspace has one
    cases = {
        "cheap": (gw.pool[0], f"cheap/{MODEL}", pool_key(0)),
        "resale": (gw.resale[0], f"resale/{MODEL}", resale_key(0)),
        "byok": (gw.byok["openai"], f"byok/openai/{MODEL}", byok_key),
    }
    fake, model, key = cases[request.param]
    return LaneCase(request.param, gw, fake, model, key)


def only_this_lane_was_called(lane: LaneCase, count: int = 1) -> None:
    assert len(lane.fake.requests) == count
    assert all(r.bearer == lane.key for r in lane.fake.requests)
    assert all(r.body["model"] == MODEL for r in lane.fake.requests if r.body)
    assert sum(len(u.requests) for u in lane.others()) == 0


async def test_chat_stream(lane: LaneCase) -> None:
    stream = await lane.client.chat.completions.create(model=lane.model, messages=CHAT, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert {c.model for c in chunks} == {MODEL}
    only_this_lane_was_called(lane)
    assert lane.fake.requests[0].body["stream"] is True
    [row] = await lane.gw.usage_rows(1)
    assert (row["lane"], row["public_model"], row["outcome"], row["total_tokens"]) == (lane.name, lane.model, "ok", 12)


async def test_chat_non_stream(lane: LaneCase) -> None:
    answer = await lane.client.chat.completions.create(model=lane.model, messages=CHAT)
    assert answer.choices[0].message.content == TEXT and answer.model == MODEL
    assert answer.usage.total_tokens == 12
    only_this_lane_was_called(lane)


async def test_completions_stream(lane: LaneCase) -> None:
    stream = await lane.client.completions.create(model=lane.model, prompt="hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == TEXT
    only_this_lane_was_called(lane)


async def test_embeddings(lane: LaneCase) -> None:
    model = lane.model.replace(MODEL, EMBED_MODEL)
    if lane.name == "byok":
        model = f"byok/openai/{EMBED_MODEL}"  # not listed for the provider, still passed through with the tenant's key
    answer = await lane.client.embeddings.create(model=model, input="hi")
    assert answer.data[0].embedding == [0.25, -0.5, 0.125, 1.0]
    assert lane.fake.requests[0].bearer == lane.key


async def test_responses_stream(lane: LaneCase) -> None:
    stream = await lane.client.responses.create(model=lane.model, input="hi", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == TEXT
    only_this_lane_was_called(lane)


async def test_responses_stream_helper(lane: LaneCase) -> None:
    async with lane.client.responses.stream(model=lane.model, input="hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == TEXT and final.usage.total_tokens == 12


async def test_responses_non_stream(lane: LaneCase) -> None:
    answer = await lane.client.responses.create(model=lane.model, input="hi")
    assert answer.output_text == TEXT and answer.model == MODEL
    only_this_lane_was_called(lane)


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_error_before_the_first_byte(lane: LaneCase, stream: bool) -> None:
    lane.fake.script(Reply(400, ERROR))
    with pytest.raises(openai.BadRequestError) as caught:
        await lane.client.chat.completions.create(model=lane.model, messages=CHAT, stream=stream)
    assert caught.value.status_code == 400
    assert caught.value.body == ERROR["error"]
    only_this_lane_was_called(lane)
    [row] = await lane.gw.usage_rows(1)
    assert (row["status"], row["outcome"]) == (400, "upstream_error")


async def test_upstream_failure_after_the_first_byte(lane: LaneCase) -> None:
    lane.fake.script(Stream(tuple(payloads.chat_events(MODEL)[:3]), end=End.RESET))
    stream = await lane.client.chat.completions.create(model=lane.model, messages=CHAT, stream=True)
    got = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 3 and "".join(c.choices[0].delta.content or "" for c in got) == "".join(payloads.PIECES[:2])
    assert "upstream" in caught.value.message
    only_this_lane_was_called(lane)  # never retried after the first byte
    [row] = await lane.gw.usage_rows(1)
    assert row["outcome"] == "upstream_error"


async def test_responses_failure_after_the_first_byte(lane: LaneCase) -> None:
    lane.fake.script(Stream(tuple(payloads.responses_events(MODEL)[:5]), end=End.RESET))
    stream = await lane.client.responses.create(model=lane.model, input="hi", stream=True)
    events = [e async for e in stream]
    assert [e.type for e in events][:5] == [e.split(b"\n")[0][7:].decode() for e in
                                            payloads.responses_events(MODEL)[:5]]
    assert events[-1].type == "error" and len(events) == 6
    assert events[-1].code == "upstream_error"
    only_this_lane_was_called(lane)


async def test_client_disconnect_cancels_the_upstream(lane: LaneCase) -> None:
    lane.fake.script(Stream(tuple(payloads.chat_events(MODEL)[:2]), end=End.HANG))
    stream = await lane.client.chat.completions.create(model=lane.model, messages=CHAT, stream=True)
    await anext(stream)
    await stream.close()
    assert await lane.fake.wait_no_connections(within_s=1.0) < 1.0
    [row] = await lane.gw.usage_rows(1)
    assert row["outcome"] == "client_cancelled"
    only_this_lane_was_called(lane)
