"""What real clients send, end to end through the official SDK (or the exact request a named client
sends) against fake upstreams on loopback: stream-only fields on forced non-stream calls, schema
positions in the forbidden-field check, model retrieval, and the synthesized Responses events."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import openai
import orjson
import pytest

from tests.conftest import MODEL, NOSTREAM_MODEL, Gateway
from tests.fakes.upstream import Reply

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
