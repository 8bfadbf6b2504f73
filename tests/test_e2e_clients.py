"""What real clients send, end to end through the official SDK (or the exact request a named client
sends) against fake upstreams on loopback: stream-only fields on forced non-stream calls, schema
positions in the forbidden-field check, model retrieval, and the synthesized Responses events."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import openai
import orjson
import pytest

from testkit import payloads
from testkit.upstream import Reply, Stream
from tests.conftest import MODEL, NOSTREAM_MODEL, Gateway

LOGIN_SCHEMA = {"type": "object", "properties": {"api_key": {"type": "string"}, "base_url": {"type": "string"}},
                "required": ["api_key"]}


# --- 1. stream-only fields never reach a non-stream upstream call ------------------------------------


async def test_stream_options_are_dropped_when_the_stream_becomes_a_non_stream_call(gateway: Any) -> None:
    gw: Gateway = await gateway()
    stream = await gw.client.responses.create(model=f"resale/{NOSTREAM_MODEL}", input="hi", stream=True,
                                              stream_options={"include_obfuscation": False})
    events = [e.type async for e in stream]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    [got] = gw.nostream.requests
    assert got.body["stream"] is False and "stream_options" not in got.body


async def test_stream_options_still_reach_a_streaming_upstream(gateway: Any) -> None:
    gw: Gateway = await gateway()
    stream = await gw.client.responses.create(model=f"resale/{MODEL}", input="hi", stream=True,
                                              stream_options={"include_obfuscation": False})
    assert [e.type async for e in stream][-1] == "response.completed"
    assert gw.resale[0].requests[0].body["stream_options"] == {"include_obfuscation": False}


# --- 4. JSON Schema positions are exempt from the forbidden-field check -------------------------------


@pytest.mark.parametrize("lane", ["cheap", "resale", "byok/openai"])
async def test_legacy_functions_schema_with_an_api_key_property(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway()
    answer = await gw.client.chat.completions.create(
        model=f"{lane}/{MODEL}", messages=[{"role": "user", "content": "log in"}],
        functions=[{"name": "login", "description": "log in to a service", "parameters": LOGIN_SCHEMA}])
    assert answer.choices[0].message.content
    [got] = [r for u in gw.upstreams for r in u.requests]
    assert got.body["functions"][0]["parameters"] == LOGIN_SCHEMA


async def test_structured_output_and_tool_schemas_on_responses(gateway: Any) -> None:
    gw: Gateway = await gateway()
    await gw.client.responses.create(
        model=f"cheap/{MODEL}", input="hi",
        tools=[{"type": "function", "name": "login", "parameters": LOGIN_SCHEMA, "strict": False}],
        text={"format": {"type": "json_schema", "name": "creds", "schema": LOGIN_SCHEMA}})
    [got] = [r for u in gw.pool for r in u.requests]
    assert got.body["tools"][0]["parameters"] == LOGIN_SCHEMA and got.body["text"]["format"]["schema"] == LOGIN_SCHEMA


async def test_a_real_base_url_field_is_still_refused(gateway: Any) -> None:
    gw: Gateway = await gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.chat.completions.create(
            model=f"cheap/{MODEL}", messages=[{"role": "user", "content": "hi"}],
            functions=[{"name": "login", "parameters": LOGIN_SCHEMA}], extra_body={"api_base": "http://evil"})
    assert caught.value.body["param"] == "api_base"  # type: ignore[index]  # reason: the SDK types body as object
    assert sum(len(u.requests) for u in gw.upstreams) == 0


# --- 5. GET /v1/models/{model} ------------------------------------------------------------------------


async def test_sdk_models_retrieve_with_slashes_in_the_id(gateway: Any) -> None:
    gw: Gateway = await gateway()
    for model_id in (f"cheap/{MODEL}", f"resale/{MODEL}", f"byok/openai/{MODEL}"):
        model = await gw.client.models.retrieve(model_id)  # sent as /v1/models/cheap%2Fgpt-test
        assert (model.id, model.object) == (model_id, "model")


async def test_models_retrieve_plain_and_encoded_forms_and_visibility(gateway: Any) -> None:
    gw: Gateway = await gateway(workspaces={"ws": {"openai": "sk-byok-ws-openai-0000"}, "plain": None})
    plain = await gw.get(f"/v1/models/byok/openai/{MODEL}")
    encoded = await gw.get("/v1/models/" + quote(f"byok/openai/{MODEL}", safe=""))
    assert plain.status == encoded.status == 200 and plain.json() == encoded.json()
    assert plain.json()["id"] == f"byok/openai/{MODEL}"
    other = gw.sdk("plain")  # BYOK not enabled there: the list hides byok/*, so does retrieve
    assert f"byok/openai/{MODEL}" not in {m.id for m in (await other.models.list()).data}
    with pytest.raises(openai.NotFoundError) as caught:
        await other.models.retrieve(f"byok/openai/{MODEL}")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await gw.client.models.retrieve("cheap/no-such-model")
    unauthenticated = await gw.get(f"/v1/models/cheap/{MODEL}", authed=False)
    assert unauthenticated.status == 401


# --- 7. the synthesized function_call_arguments.done event names the function -----------------------


async def test_synthesized_function_call_arguments_done_has_the_name(gateway: Any) -> None:
    gw: Gateway = await gateway()
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
            "arguments": orjson.dumps({"city": "Zürich"}).decode(), "status": "completed"}
    body = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": MODEL,
            "output": [call], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}
    gw.nostream.script(Reply(body=body))
    stream = await gw.client.responses.create(model=f"resale/{NOSTREAM_MODEL}", input="weather?", stream=True)
    [done] = [e async for e in stream if e.type == "response.function_call_arguments.done"]
    assert done.name == "get_weather" and done.arguments == call["arguments"]  # type: ignore[attr-defined]  # reason: older SDK types lack `name`


# --- 2. a stream whose terminal event was delivered is ok, whatever the client does next --------------


async def _read_until_terminal_then_close(gw: Gateway, path: str, body: dict[str, Any], marker: bytes) -> bytes:
    """What Codex does: read the SSE body and drop the connection the moment the terminal event is in."""
    seen = b""
    async with gw.session.post(gw.url + path, json=body, headers=gw.auth()) as resp:
        assert resp.status == 200
        while marker not in seen:
            chunk = await resp.content.readany()
            assert chunk, "the stream ended before its terminal event"
            seen += chunk
        resp.close()  # closes the TCP connection, as Codex does
    return seen


@pytest.mark.parametrize("lane", ["cheap", "resale", "byok/openai"])
@pytest.mark.parametrize("endpoint", ["responses", "chat"])
async def test_client_leaving_right_after_the_terminal_event_is_ok_and_the_upstream_is_reused(
        gateway: Any, lane: str, endpoint: str) -> None:
    gw: Gateway = await gateway(pool=1)
    [upstream] = {"cheap": gw.pool, "resale": gw.resale, "byok/openai": [gw.byok["openai"]]}[lane]
    if endpoint == "responses":
        path, body, marker = "/v1/responses", {"model": f"{lane}/{MODEL}", "input": "hi", "stream": True}, b"response.completed"
        events = payloads.responses_events(MODEL)
    else:
        path, marker = "/v1/chat/completions", b"[DONE]"
        body = {"model": f"{lane}/{MODEL}", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        events = [*payloads.chat_events(MODEL), payloads.done()]
    upstream.script(Stream((*events, 0.03)))  # the end of the upstream body trails the terminal event
    before = _metric(await gw.metrics(), "okm_client_disconnects_total")
    await _read_until_terminal_then_close(gw, path, body, marker)
    [row] = await gw.usage_rows(1)
    assert (row["status"], row["outcome"]) == (200, "ok")
    assert _metric(await gw.metrics(), "okm_client_disconnects_total") == before
    await asyncio.sleep(0.1)
    assert upstream.open_connections == 1  # released to the pool, not closed
    await gw.client.chat.completions.create(model=f"{lane}/{MODEL}", messages=[{"role": "user", "content": "hi"}])
    first, second = upstream.requests
    assert first.connection == second.connection


async def test_sdk_stream_closed_at_response_completed_is_ok(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    gw.pool[0].script(Stream((*payloads.responses_events(MODEL), 0.03)))
    stream = await gw.client.responses.create(model=f"cheap/{MODEL}", input="hi", stream=True)
    async for event in stream:
        if event.type == "response.completed":
            break
    await stream.close()  # the official SDK drops the connection with the body unread
    [row] = await gw.usage_rows(1)
    assert (row["status"], row["outcome"], row["total_tokens"]) == (200, "ok", 12)


async def test_codex_style_close_on_a_synthesized_stream_is_ok(gateway: Any) -> None:
    gw: Gateway = await gateway()
    body = {"model": f"resale/{NOSTREAM_MODEL}", "input": "hi", "stream": True}
    await _read_until_terminal_then_close(gw, "/v1/responses", body, b"response.completed")
    [row] = await gw.usage_rows(1)
    assert (row["status"], row["outcome"]) == (200, "ok")


async def test_a_client_leaving_before_the_terminal_event_is_still_cancelled(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    gw.pool[0].script(Stream((*payloads.responses_events(MODEL)[:3], 5.0)))
    body = {"model": f"cheap/{MODEL}", "input": "hi", "stream": True}
    await _read_until_terminal_then_close(gw, "/v1/responses", body, b"response.in_progress")
    [row] = await gw.usage_rows(1)
    assert row["outcome"] == "client_cancelled"
    await gw.pool[0].wait_no_connections()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


# --- 6. reasoning + tools on Budget: replayed statelessly, or a 400 naming the client setting -------

WEATHER_TOOL = {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {}},
                "strict": False}
REASONING = {"type": "reasoning", "id": "rs_abc123", "summary": [], "encrypted_content": "gAAAAB-opaque"}
CALL = {"type": "function_call", "id": "fc_abc123", "call_id": "call_1", "name": "weather", "arguments": "{}",
        "status": "completed"}


def _tool_turn_response() -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": MODEL,
            "output": [REASONING, CALL], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [WEATHER_TOOL],
            "usage": {"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}}


async def test_budget_reasoning_and_tools_replay_statelessly_with_the_sdk(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    gw.pool[0].script(Reply(body=_tool_turn_response()))
    user = {"role": "user", "content": "weather in Zürich?"}
    first = await gw.client.responses.create(model=f"cheap/{MODEL}", input=[user], tools=[WEATHER_TOOL],  # type: ignore[list-item]  # reason: a plain dict tool
                                             reasoning={"effort": "low"})
    assert gw.pool[0].requests[0].body["include"] == ["reasoning.encrypted_content"]
    assert gw.pool[0].requests[0].body["store"] is False
    replay = [user, *[item.model_dump(exclude_none=True) for item in first.output],
              {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    second = await gw.client.responses.create(model=f"cheap/{MODEL}", input=replay, tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]  # reason: plain dicts
                                              reasoning={"effort": "low"})
    assert second.output_text
    sent = gw.pool[0].requests[1].body
    assert sent["input"][1]["encrypted_content"] == "gAAAAB-opaque" and sent["include"] == ["reasoning.encrypted_content"]


async def test_vercel_ai_sdk_item_reference_on_budget_is_a_400_naming_the_setting(gateway: Any) -> None:
    gw: Gateway = await gateway()
    # the second step of a tool turn as @ai-sdk/openai sends it with its default store: true
    body = {"model": f"cheap/{MODEL}", "tools": [WEATHER_TOOL], "reasoning": {"effort": "low"}, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather in Zürich?"}]},
        {"type": "item_reference", "id": "rs_abc123"},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}", "id": "fc_abc123"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}
    answer = await gw.post("/v1/responses", body)
    assert answer.status == 400 and answer.error["code"] == "stateful_request_not_allowed"
    assert answer.error["param"] == "input[1]" and "providerOptions: {openai: {store: false}}" in answer.error["message"]
    assert sum(len(u.requests) for u in gw.upstreams) == 0
    resale = await gw.post("/v1/responses", {**body, "model": f"resale/{MODEL}"})  # stored state is fine there
    assert resale.status == 200


async def test_agents_sdk_reasoning_replayed_without_encrypted_content_is_a_400(gateway: Any) -> None:
    gw: Gateway = await gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.responses.create(model=f"cheap/{MODEL}", tools=[WEATHER_TOOL], input=[  # type: ignore[list-item]  # reason: plain dicts
            {"role": "user", "content": "weather?"}, {"type": "reasoning", "id": "rs_abc123", "summary": []}, CALL,
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    message = caught.value.message
    assert 'ModelSettings(store=False, response_include=["reasoning.encrypted_content"])' in message
    assert caught.value.code == "stateful_request_not_allowed"


async def test_an_upstream_item_not_found_on_budget_becomes_the_400(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=2)
    not_found = payloads.openai_error("Item with id 'msg_9' not found. Items are not persisted when `store` is set "
                                      "to false. Try again with `store` set to true, or remove this item from your input.",
                                      param="input")
    for fake in gw.pool:
        fake.script(Reply(404, not_found))
    answer = await gw.post("/v1/responses", {"model": f"cheap/{MODEL}", "input": [
        {"type": "message", "id": "msg_9", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]}]})
    assert answer.status == 400 and answer.error["code"] == "stateful_request_not_allowed"
    assert "store: false" in answer.error["message"] and "msg_9" not in answer.error["message"]
    assert sum(len(u.requests) for u in gw.pool) == 1  # the request's fault: not retried on another account
