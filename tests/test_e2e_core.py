"""End to end through a real gateway and fake upstreams: the official SDK, raw SSE bytes, latency,
client disconnects, truncated streams, usage accounting and upstream errors before the first byte.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import orjson
import pytest
from aiohttp_sse_client import client as sse_client

from testkit import payloads
from testkit.payloads import PIECES, TEXT, blocks, data_of, sse
from testkit.upstream import End, Reply, Stream
from tests.conftest import EMBED_MODEL, MODEL, Gateway

CHAT = [{"role": "user", "content": "hi"}]


def no_traceback(caplog: pytest.LogCaptureFixture, *bodies: bytes) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "an exception was logged with a traceback"
    for body in bodies:
        assert b"Traceback" not in body and b'File "' not in body


# --- the official SDK on every endpoint -------------------------------------------------------------


async def test_sdk_chat_non_stream(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    answer = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT)
    assert answer.choices[0].message.content == TEXT
    assert answer.model == MODEL  # the upstream's model field, not the public id
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 5)
    assert gw.pool[0].requests[0].body["model"] == MODEL
    [row] = await gw.usage_rows(1)
    assert (row["lane"], row["outcome"], row["status"], row["total_tokens"]) == ("cheap", "ok", 200, 12)


async def test_sdk_chat_stream(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in chunks)  # the hidden usage chunk never shows


async def test_sdk_responses_stream(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1)
    stream = await gw.client.responses.create(model=f"resale/{MODEL}", input="hi", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert events[-1].response.output_text == TEXT
    assert events[-1].response.usage.total_tokens == 12
    assert gw.resale[0].requests[0].body["stream"] is True


async def test_sdk_embeddings(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    answer = await gw.client.embeddings.create(model=f"cheap/{EMBED_MODEL}", input=["a", "b"])
    assert [d.embedding for d in answer.data] == [[0.25, -0.5, 0.125, 1.0], [0.5, -0.5, 0.125, 1.0]]
    assert answer.usage.prompt_tokens == 7
    assert gw.pool[0].requests[0].path == "/v1/embeddings"


async def test_sdk_models_list(gateway: Any) -> None:
    gw: Gateway = await gateway()
    ids = {m.id async for m in gw.client.models.list()}
    assert ids == {f"cheap/{MODEL}", f"cheap/{EMBED_MODEL}", f"resale/{MODEL}", f"resale/{EMBED_MODEL}",
                   "resale/gpt-nostream", f"byok/openai/{MODEL}"}  # acme: no key stored, so not listed


async def test_raw_stream_is_the_upstreams_bytes_minus_the_hidden_usage_chunk(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True})
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/event-stream")
    sent = payloads.default_events("/v1/chat/completions", gw.pool[0].requests[0].body)
    usage_chunk = sse(payloads.chat_usage_chunk(MODEL))
    assert usage_chunk in sent  # the upstream did send it ...
    assert answer.body == b"".join(e for e in sent if e != usage_chunk)  # ... and only it was dropped


async def _sse_client_events(gw: Gateway, path: str, body: dict[str, Any], last: str) -> list[tuple[str, str]]:
    seen = []
    async with sse_client.EventSource(gw.base_url + path, option={"method": "POST"}, session=gw.session,
                                      json=body, headers=gw.auth()) as source:
        async for event in source:  # it would reconnect at the end: stop at the last event
            seen.append((event.type, event.data))
            if last in (event.type, event.data):
                break
    return seen


async def test_sse_client_sees_the_upstreams_responses_events(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1)
    body = {"model": f"resale/{MODEL}", "input": "hi", "stream": True}
    seen = await _sse_client_events(gw, "/responses", body, "response.completed")
    sent = payloads.responses_events(MODEL)
    assert seen == [(orjson.loads(data_of(b))["type"], data_of(b).decode()) for b in sent]


async def test_sse_client_sees_the_upstreams_chat_events_minus_usage(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    body = {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True}
    seen = await _sse_client_events(gw, "/chat/completions", body, "[DONE]")
    sent = payloads.default_events("/v1/chat/completions", gw.pool[0].requests[0].body)
    usage_chunk = sse(payloads.chat_usage_chunk(MODEL))
    assert seen == [(None, data_of(b).decode()) for b in sent if b != usage_chunk]
    assert len(seen) == len(sent) - 1


# --- latency and disconnects -----------------------------------------------------------------------


async def test_first_event_reaches_the_client_before_the_upstream_finishes(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1, limits={"idle_timeout_s": 3})
    events = payloads.chat_events(MODEL)
    gw.pool[0].script(Stream((events[0], 1.0, *events[1:], payloads.done())))
    start = time.monotonic()
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    first = await anext(stream)
    first_at = time.monotonic() - start
    rest = [c async for c in stream]
    assert first.choices[0].delta.role == "assistant"
    assert first_at < 0.5, f"first event took {first_at:.2f}s"
    assert time.monotonic() - start >= 1.0 and len(rest) == len(events) - 1


async def test_client_disconnect_mid_stream_closes_the_upstream_connection(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    fake = gw.pool[0]
    fake.script(Stream(tuple(payloads.chat_events(MODEL)[:2]), end=End.HANG))
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    await anext(stream)
    assert fake.open_connections == 1
    await stream.close()
    assert await fake.wait_no_connections(within_s=1.0) < 1.0
    async with asyncio.timeout(1.0):  # the handler's cancellation lands a loop turn after the connection closes
        while fake.cancelled < 1:
            await asyncio.sleep(0.005)
    assert fake.cancelled == 1
    [row] = await gw.usage_rows(1)
    assert row["outcome"] == "client_cancelled"


@pytest.mark.parametrize("stall", [Reply(delay_s=30), Stream(delay_s=30), Stream((30.0,))],
                         ids=["before-headers", "before-headers-stream", "after-headers-before-first-event"])
async def test_client_disconnect_while_waiting_for_the_first_token(gateway: Any, stall: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    fake = gw.pool[0]
    fake.script(stall)
    body = {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True}
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.3):
            await gw.post("/v1/chat/completions", body)
    assert len(fake.requests) == 1
    assert await fake.wait_no_connections(within_s=1.0) < 1.0
    [row] = await gw.usage_rows(1)
    assert row["outcome"] == "client_cancelled"


# --- streams that break after the first byte -------------------------------------------------------


@pytest.mark.parametrize("end", [End.RESET, End.EOF])
async def test_truncated_chat_stream_ends_with_an_inband_error_and_no_done(gateway: Any, end: End) -> None:
    gw: Gateway = await gateway(resale=1)
    events = payloads.chat_events(MODEL)[:3]
    gw.resale[0].script(Stream(tuple(events), end=end))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": True})
    assert answer.status == 200
    got = blocks(answer.body)
    assert got[:3] == events
    assert len(got) == 4 and b"[DONE]" not in answer.body
    error = orjson.loads(data_of(got[3]))["error"]
    assert error["code"] == "upstream_error" and error["message"]
    [row] = await gw.usage_rows(1)
    assert row["outcome"] == "upstream_error"


@pytest.mark.parametrize("end", [End.RESET, End.EOF])
async def test_truncated_responses_stream_ends_with_an_error_event(gateway: Any, end: End) -> None:
    gw: Gateway = await gateway(resale=1)
    events = payloads.responses_events(MODEL)[:5]
    gw.resale[0].script(Stream(tuple(events), end=end))
    answer = await gw.post("/v1/responses", {"model": f"resale/{MODEL}", "input": "hi", "stream": True})
    got = blocks(answer.body)
    assert got[:5] == events and len(got) == 6
    assert got[5].startswith(b"event: error\n")
    assert orjson.loads(data_of(got[5]))["type"] == "error"


async def test_sdk_raises_on_the_inband_error(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    gw.pool[0].script(Stream(tuple(payloads.chat_events(MODEL)[:2]), end=End.RESET))
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    got = []
    with pytest.raises(openai.APIError, match="upstream"):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 2


# --- usage accounting ------------------------------------------------------------------------------


async def test_gateway_asks_for_usage_and_hides_the_extra_chunk(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    chunks = [c async for c in stream]
    assert gw.pool[0].requests[0].body["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)
    [row] = await gw.usage_rows(1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (7, 5, 0)
    metrics = await gw.metrics()
    assert 'okm_tokens_total{kind="completion",lane="cheap"} 5.0' in metrics


async def test_usage_chunk_shown_when_the_client_asked(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True,
                                                     stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert gw.pool[0].requests[0].body["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12


@pytest.mark.parametrize("stream", [True, False])
async def test_responses_never_get_stream_options(gateway: Any, stream: bool) -> None:
    gw: Gateway = await gateway(resale=1)
    answer = await gw.post("/v1/responses", {"model": f"resale/{MODEL}", "input": "hi", "stream": stream})
    assert answer.status == 200
    assert "stream_options" not in gw.resale[0].requests[0].body


# --- upstream errors before the first byte ---------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 422, 500])
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_error_bodies_pass_through_with_their_status(gateway: Any, caplog: Any, status: int,
                                                                  stream: bool) -> None:
    gw: Gateway = await gateway(resale=1)
    error = payloads.openai_error("The model produced an invalid tool call.", code="invalid_tool_call", param="tools")
    gw.resale[0].script(Reply(status, error))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": stream})
    assert answer.status == status
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == error
    no_traceback(caplog, answer.body)


@pytest.mark.parametrize("body,content_type", [
    (b"<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>", "text/html"),
    (b"\x00\xffnot json at all{{", "application/json"),
    (b'{"detail": "something else"}', "application/json"),
], ids=["html", "garbage", "json-not-openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_non_openai_error_bodies_become_502(gateway: Any, caplog: Any, body: bytes, content_type: str,
                                                  stream: bool) -> None:
    gw: Gateway = await gateway(resale=1)
    gw.resale[0].script(Reply(502, body, content_type=content_type))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": stream})
    assert answer.status == 502
    error = answer.error
    assert error["code"] == "upstream_error" and "upstream" in error["message"]
    assert b"nginx" not in answer.body and b"detail" not in answer.body
    no_traceback(caplog, answer.body)


async def test_metrics_declared_up_front_and_counted(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    before = await gw.metrics()
    for family in ("okm_requests_total", "okm_request_duration_seconds", "okm_time_to_first_byte_seconds",
                   "okm_upstream_attempts_total", "okm_fallbacks_total", "okm_active_streams", "okm_tokens_total",
                   "okm_pool_account_healthy", "okm_auth_failures_total"):
        assert f"# TYPE {family} " in before
    await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT)
    after = await gw.metrics()
    assert 'okm_requests_total{endpoint="chat/completions",lane="cheap",status="200"} 1.0' in after
    assert 'okm_upstream_attempts_total{lane="cheap",outcome="success",upstream="pool-0"} 1.0' in after
    assert gw.key not in after and "sk-pool" not in after


async def test_chunks_are_not_buffered_when_the_client_reads_raw(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    events = payloads.chat_events(MODEL, pieces=PIECES)
    gw.pool[0].script(Stream((events[0], 0.3, events[1], 0.3, *events[2:], payloads.done())))
    arrivals = []
    body = {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True}
    start = time.monotonic()
    async with gw.session.post(gw.url + "/v1/chat/completions", json=body, headers=gw.auth()) as resp:
        assert "gzip" not in resp.headers.get("Content-Encoding", "")
        async for chunk in resp.content.iter_any():
            arrivals.append((time.monotonic() - start, chunk))
    assert arrivals[0][1] == events[0] and arrivals[0][0] < 0.25
    second = next(t for t, c in arrivals if events[1] in c)
    assert 0.25 < second < 0.55
