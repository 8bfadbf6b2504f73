"""A Responses SSE sequence synthesized from a final object, checked as bytes and through the real openai SDK."""

from __future__ import annotations

import copy
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from proxy.relay.responses_stream import synthesize_response_events
from proxy.relay.sse import Decoder

TEXT = "Hello there! " * 12 + "Ünïcödé ✓ 🙂 done."
USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 42,
    "output_tokens_details": {"reasoning_tokens": 7},
    "total_tokens": 53,
}


def _response(output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_abc123",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": "gpt-5.4-2026-01-01",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE,
    }


def _message(text: str = TEXT, item_id: str | None = "msg_1") -> dict[str, Any]:
    item = {
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    if item_id:
        item["id"] = item_id
    return item


FUNCTION_CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": orjson.dumps({"city": "Zürich", "days": list(range(40))}).decode(),
    "status": "completed",
}
REASONING = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [
        {"type": "summary_text", "text": "First I looked at the question carefully and made a plan."},
        {"type": "summary_text", "text": "Then I checked the weather tool's arguments."},
    ],
    "encrypted_content": "opaque",
}
REFUSAL_MESSAGE = {
    "type": "message",
    "id": "msg_r",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "refusal", "refusal": "I can't help with that request, sorry."}],
}
WEB_SEARCH = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}}


def _decode(events: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    decoder = Decoder()
    parsed = decoder.feed(b"".join(events))
    assert decoder.close() == b""
    assert len(parsed) == len(events)
    return [(e.event, orjson.loads(e.data)) for e in parsed]


def test_every_event_is_one_sse_block_with_matching_type_and_increasing_sequence() -> None:
    events = synthesize_response_events(_response([_message()]), chunk_chars=10)
    decoded = _decode(events)
    for raw, (name, body) in zip(events, decoded, strict=True):
        assert raw.startswith(b"event: " + name.encode() + b"\ndata: ")
        assert raw.endswith(b"\n\n")
        assert body["type"] == name
    assert [body["sequence_number"] for _, body in decoded] == list(range(len(decoded)))


def test_message_sequence_order_and_text() -> None:
    decoded = _decode(synthesize_response_events(_response([_message()]), chunk_chars=10))
    names = [name for name, _ in decoded]
    deltas = [body for name, body in decoded if name == "response.output_text.delta"]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert len(deltas) == -(-len(TEXT) // 10)
    assert "".join(d["delta"] for d in deltas) == TEXT
    assert all(len(d["delta"]) <= 10 for d in deltas)
    assert all(
        (d["item_id"], d["output_index"], d["content_index"], d["logprobs"]) == ("msg_1", 0, 0, []) for d in deltas
    )
    by_name = dict(decoded)
    assert by_name["response.output_text.done"]["text"] == TEXT
    assert by_name["response.content_part.added"]["part"] == {"type": "output_text", "text": "", "annotations": []}
    assert by_name["response.content_part.done"]["part"]["text"] == TEXT
    assert by_name["response.output_item.added"]["item"]["status"] == "in_progress"
    assert by_name["response.output_item.added"]["item"]["content"] == []
    assert by_name["response.output_item.done"]["item"] == _message()


def test_created_and_in_progress_carry_an_empty_in_progress_response() -> None:
    decoded = _decode(synthesize_response_events(_response([_message()])))
    for _name, body in decoded[:2]:
        response = body["response"]
        assert (response["id"], response["status"], response["output"], response["usage"]) == (
            "resp_abc123",
            "in_progress",
            [],
            None,
        )
        assert response["model"] == "gpt-5.4-2026-01-01"
    name, body = decoded[-1]
    assert name == "response.completed"
    assert body["response"] == _response([_message()])


@pytest.mark.parametrize(
    ("status", "final_event"),
    [
        ("completed", "response.completed"),
        ("incomplete", "response.incomplete"),
        ("failed", "response.failed"),
        (None, "response.completed"),
    ],
)
def test_final_event_follows_the_response_status(status: str | None, final_event: str) -> None:
    response = _response([_message()], status="completed")
    response["status"] = status
    name, body = _decode(synthesize_response_events(response))[-1]
    assert name == final_event
    assert body["response"]["status"] == status


def test_function_call_reasoning_refusal_and_other_items() -> None:
    output = [REASONING, FUNCTION_CALL, REFUSAL_MESSAGE, WEB_SEARCH]
    decoded = _decode(synthesize_response_events(_response(output), chunk_chars=16))
    names = [name for name, _ in decoded]
    args = [b for n, b in decoded if n == "response.function_call_arguments.delta"]
    assert "".join(b["delta"] for b in args) == FUNCTION_CALL["arguments"]
    assert all((b["item_id"], b["output_index"]) == ("fc_1", 1) for b in args)
    assert dict(decoded)["response.function_call_arguments.done"]["arguments"] == FUNCTION_CALL["arguments"]
    for index, part in enumerate(REASONING["summary"]):
        deltas = [b for n, b in decoded if n == "response.reasoning_summary_text.delta" and b["summary_index"] == index]
        assert "".join(b["delta"] for b in deltas) == part["text"]
        (done,) = [b for n, b in decoded if n == "response.reasoning_summary_text.done" and b["summary_index"] == index]
        assert done["text"] == part["text"]
    refusal = [b["delta"] for n, b in decoded if n == "response.refusal.delta"]
    assert "".join(refusal) == REFUSAL_MESSAGE["content"][0]["refusal"]
    assert dict(decoded)["response.refusal.done"]["refusal"] == REFUSAL_MESSAGE["content"][0]["refusal"]
    added = [b for n, b in decoded if n == "response.output_item.added"]
    done = [b for n, b in decoded if n == "response.output_item.done"]
    assert [b["output_index"] for b in added] == [b["output_index"] for b in done] == [0, 1, 2, 3]
    assert [b["item"] for b in done] == output
    assert added[0]["item"]["summary"] == [] and added[1]["item"]["arguments"] == ""
    assert added[3]["item"] == WEB_SEARCH
    assert names.index("response.reasoning_summary_part.added") < names.index("response.reasoning_summary_part.done")


def test_missing_ids_are_filled_consistently() -> None:
    response = _response([_message(item_id=None)])
    del response["id"]
    decoded = _decode(synthesize_response_events(response))
    rid = decoded[0][1]["response"]["id"]
    assert rid.startswith("resp_") and decoded[-1][1]["response"]["id"] == rid
    item_id = dict(decoded)["response.output_item.added"]["item"]["id"]
    assert dict(decoded)["response.output_text.delta"]["item_id"] == item_id
    assert decoded[-1][1]["response"]["output"][0]["id"] == item_id


def test_input_is_not_mutated_and_empty_text_has_no_delta() -> None:
    response = _response([_message(text="")])
    before = copy.deepcopy(response)
    decoded = _decode(synthesize_response_events(response))
    assert response == before
    assert "response.output_text.delta" not in [name for name, _ in decoded]
    assert dict(decoded)["response.output_text.done"]["text"] == ""


@pytest.mark.parametrize("output", [{"a": 1}, ["not an object"], [{"type": "message", "content": "text"}]])
def test_malformed_output_is_refused(output: Any) -> None:
    with pytest.raises(ValueError, match="list of objects"):
        synthesize_response_events(_response(output))


# --- end to end through the official SDK --------------------------------------------------------


async def _client_for(aiohttp_server: Any, response: dict[str, Any]) -> openai.AsyncOpenAI:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["stream"] is True
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in synthesize_response_events(response, chunk_chars=7):
            await resp.write(event)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/responses", handler)
    server = await aiohttp_server(app)
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0)


async def test_sdk_create_stream_yields_expected_events(aiohttp_server: Any) -> None:
    client = await _client_for(aiohttp_server, _response([_message()]))
    async with client:
        stream = await client.responses.create(model="resale/gpt-5.4", input="hi", stream=True)
        events = [event async for event in stream]
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert events[-1].response.output_text == TEXT
    assert events[-1].response.usage.total_tokens == 53


async def test_sdk_stream_helper_final_response(aiohttp_server: Any) -> None:
    client = await _client_for(aiohttp_server, _response([_message()]))
    async with client, client.responses.stream(model="resale/gpt-5.4", input="hi") as stream:
        snapshots = [e.snapshot async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert snapshots[-1] == TEXT
    assert final.output_text == TEXT
    assert final.id == "resp_abc123"
    assert final.usage.input_tokens == 11 and final.usage.output_tokens == 42


async def test_sdk_stream_helper_with_reasoning_and_function_call(aiohttp_server: Any) -> None:
    output = [REASONING, FUNCTION_CALL, _message("Calling the tool now.")]
    client = await _client_for(aiohttp_server, _response(output))
    async with client, client.responses.stream(model="resale/gpt-5.4", input="weather?") as stream:
        arg_snapshots = [e.snapshot async for e in stream if e.type == "response.function_call_arguments.delta"]
        final = await stream.get_final_response()
    assert arg_snapshots[-1] == FUNCTION_CALL["arguments"]
    assert [item.type for item in final.output] == ["reasoning", "function_call", "message"]
    reasoning, call, _ = final.output
    assert [s.text for s in reasoning.summary] == [s["text"] for s in REASONING["summary"]]
    assert (call.name, call.call_id, call.arguments) == ("get_weather", "call_1", FUNCTION_CALL["arguments"])
    assert final.output_text == "Calling the tool now."
