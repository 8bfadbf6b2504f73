"""Upstream behaviour real providers show now and then: in-band errors, compressed answers, giant
events, streams without `event:` lines, clients that leave during a JSON answer, slow accounts.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import openai
import orjson
import pytest

from testkit import payloads
from testkit.payloads import TEXT, blocks, data_of, sse
from testkit.upstream import End, Reply, Stream
from tests.conftest import MODEL, Gateway

CHAT = [{"role": "user", "content": "hi"}]
UPSTREAM_ERROR = {"error": {"message": "The server had an error while processing your request.",
                            "type": "server_error", "param": None, "code": None}}


@pytest.mark.parametrize("end", [End.EOF, End.RESET])
async def test_upstream_inband_error_mid_stream_is_forwarded_once(gateway: Any, end: End) -> None:
    gw: Gateway = await gateway(resale=1)
    events = [*payloads.chat_events(MODEL)[:2], sse(UPSTREAM_ERROR)]
    gw.resale[0].script(Stream(tuple(events), end=end))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": True})
    got = blocks(answer.body)
    assert got[:3] == events and b"[DONE]" not in answer.body
    errors = [b for b in got if b'"error"' in b]
    if end is End.EOF:
        assert errors == [events[2]], "the upstream's own error ended the stream; no second error is owed"
    else:
        assert errors[0] == events[2]
    [row] = await gw.usage_rows(1)
    assert row["outcome"] == "upstream_error"


@pytest.mark.parametrize("lane", ["cheap", "resale", "byok"])
async def test_stream_whose_first_event_is_an_error_gets_an_error_status(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",))
    fake = {"cheap": gw.pool[0], "resale": gw.resale[0], "byok": gw.byok["openai"]}[lane]
    fake.default = Stream((sse(UPSTREAM_ERROR),))
    model = f"byok/openai/{MODEL}" if lane == "byok" else f"{lane}/{MODEL}"
    answer = await gw.post("/v1/chat/completions", {"model": model, "messages": CHAT, "stream": True})
    assert answer.status >= 500 and answer.headers["Content-Type"].startswith("application/json")
    error = answer.error
    assert isinstance(error["message"], str) and set(error) == {"message", "type", "param", "code"}
    if lane != "cheap":  # one pool account: the gateway's own "no healthy account" answer instead
        assert error["message"] == UPSTREAM_ERROR["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_compressed_upstream_answers_are_refused_never_inflated(gateway: Any, stream: bool) -> None:
    """The gateway asks for identity; an upstream that compresses anyway is failing (a gzip bomb
    would otherwise be inflated in the gateway's memory): an upstream error, never relayed."""
    gw: Gateway = await gateway(resale=1)
    if stream:
        data = b"".join([*payloads.chat_events(MODEL), payloads.done()])
        gw.resale[0].script(Stream((gzip.compress(data),), headers={"Content-Encoding": "gzip"}))
    else:
        data = orjson.dumps(payloads.chat_completion(MODEL))
        gw.resale[0].script(Reply(body=gzip.compress(data), headers={"Content-Encoding": "gzip"}))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": stream})
    assert answer.status == 502 and answer.error["code"] == "upstream_error"
    assert "gzip" in answer.error["message"]
    assert gw.resale[0].requests[0].headers["Accept-Encoding"] == "identity"


async def test_oversize_event_mid_stream_is_an_inband_error(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1, limits={"max_event_bytes": 2048})
    events = payloads.chat_events(MODEL)[:2]
    huge = sse(payloads.chat_chunk(MODEL, {"content": "x" * 5000}))
    gw.resale[0].script(Stream((*events, 0.05, huge, payloads.done())))  # the pause: the first events go out first
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": True})
    got = blocks(answer.body)
    assert got[:2] == events and len(got) == 3 and b"x" * 100 not in answer.body
    assert orjson.loads(data_of(got[2]))["error"]["code"] == "upstream_error"


async def test_responses_stream_without_event_lines(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1)
    events = [e.split(b"\n", 1)[1] for e in payloads.responses_events(MODEL)]  # drop each `event:` line
    gw.resale[0].script(Stream(tuple(events)))
    stream = await gw.client.responses.create(model=f"resale/{MODEL}", input="hi", stream=True)
    got = [e async for e in stream]
    assert got[-1].type == "response.completed" and got[-1].response.output_text == TEXT
    [row] = await gw.usage_rows(1)
    assert (row["outcome"], row["total_tokens"]) == ("ok", 12)


async def test_data_lines_without_a_space(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    data = b"".join(e.replace(b"data: ", b"data:") for e in [*payloads.chat_events(MODEL), payloads.done()])
    gw.pool[0].script(Stream((data,)))
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True})
    assert answer.body == data


@pytest.mark.parametrize("options", [None, {"include_usage": False}, {}])
async def test_usage_chunk_hidden_unless_the_client_asked(gateway: Any, options: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    extra = {} if options is None else {"stream_options": options}
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True, **extra)
    chunks = [c async for c in stream]
    assert all(c.usage is None and c.choices for c in chunks)
    assert gw.pool[0].requests[0].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stall", [Reply(delay_s=30), Stream((b'{"id": "chatcmpl-1", ', 30.0), end=End.HANG,
                                                             content_type="application/json")],
                         ids=["before-headers", "mid-body"])
async def test_client_leaving_a_json_request_closes_the_upstream(gateway: Any, stall: Any) -> None:
    gw: Gateway = await gateway(pool=1, limits={"first_byte_timeout_s": 10, "idle_timeout_s": 10})
    gw.pool[0].script(stall)
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.3):
            await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT)
    assert await gw.pool[0].wait_no_connections(within_s=1.0) < 1.0
    [row] = await gw.usage_rows(1)
    assert row["outcome"] == "client_cancelled"


async def test_slow_pool_account_times_out_and_fails_over(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=2, pool_weights=(1e9, 1), limits={"first_byte_timeout_s": 0.3})
    gw.pool[0].script(Stream((30.0,), end=End.HANG))
    start = time.monotonic()
    answer = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in answer])
    assert text == TEXT and time.monotonic() - start < 1.0
    assert await gw.pool[0].wait_no_connections(within_s=1.0) < 1.0
    [row] = await gw.usage_rows(1)
    assert (row["attempts"], row["upstream"]) == (2, "pool-1")


async def test_active_streams_gauge_returns_to_zero_after_a_disconnect(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    gw.pool[0].script(Stream(tuple(payloads.chat_events(MODEL)[:2]), end=End.HANG))
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    await anext(stream)
    assert 'okm_active_streams{lane="cheap"} 1.0' in await gw.metrics()
    await stream.close()
    await gw.pool[0].wait_no_connections(within_s=1.0)
    await gw.usage_rows(1)
    assert 'okm_active_streams{lane="cheap"} 0.0' in await gw.metrics()


async def test_sdk_sees_upstream_status_errors_as_typed_exceptions(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1)
    gw.resale[0].script(Reply(422, payloads.openai_error("Unsupported parameter: 'foo'", param="foo")))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await gw.client.chat.completions.create(model=f"resale/{MODEL}", messages=CHAT, stream=True)
    assert caught.value.body["param"] == "foo"


async def test_oversize_first_event_is_502(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1, limits={"max_event_bytes": 2048})
    gw.resale[0].script(Stream((sse(payloads.chat_chunk(MODEL, {"content": "x" * 5000})), payloads.done())))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": True})
    assert answer.status == 502 and answer.error["code"] == "upstream_error"


@pytest.mark.parametrize("body,content_type", [(b"<html><body>Welcome to nginx!</body></html>", "text/html"),
                                               (b"garbage\x00\xff", "application/json")], ids=["html", "garbage"])
async def test_200_answer_that_is_not_json_is_502(gateway: Any, body: bytes, content_type: str) -> None:
    gw: Gateway = await gateway(resale=1)
    gw.resale[0].script(Reply(200, body, content_type=content_type))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT})
    assert answer.status == 502 and answer.error["code"] == "upstream_error"
    assert b"nginx" not in answer.body


async def test_json_body_stalling_mid_way_is_504(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1, limits={"idle_timeout_s": 0.3})
    gw.resale[0].script(Stream((b'{"id": "chatcmpl-1", ', 30.0), end=End.HANG, content_type="application/json"))
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT})
    assert answer.status == 504 and answer.error["code"] == "upstream_timeout"
    assert await gw.resale[0].wait_no_connections(within_s=1.0) < 1.0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_stream_ends_at_the_terminal_event_even_if_the_upstream_lingers(gateway: Any, path: str) -> None:
    gw: Gateway = await gateway(resale=1, limits={"idle_timeout_s": 1})
    body: dict[str, Any] = {"model": f"resale/{MODEL}", "stream": True}
    if path.endswith("responses"):
        events, body["input"] = payloads.responses_events(MODEL), "hi"
    else:
        events, body["messages"] = [*payloads.chat_events(MODEL), payloads.done()], CHAT
    gw.resale[0].script(Stream(tuple(events), end=End.HANG))  # never closes after the terminal event
    start = time.monotonic()
    answer = await gw.post(path, body)
    assert time.monotonic() - start < 0.5
    assert answer.body == b"".join(events)
    assert await gw.resale[0].wait_no_connections(within_s=1.0) < 1.0


async def test_an_unexpected_gateway_error_is_an_openai_500_with_no_traceback(tmp_path, aiohttp_client) -> None:
    """A bug in a handler (here: a handler that raises) still answers OpenAI-shaped JSON, names
    the request id, leaves a usage-free record in /metrics, and never shows a traceback."""
    from aiohttp import web

    from proxy.app import build_app
    from proxy.config import load_config
    from proxy.types import Endpoint

    (tmp_path / "gateway.yaml").write_text("store: {path: okm.sqlite3}\n")
    app = build_app(load_config(tmp_path / "gateway.yaml", {"OKM_KEY_PEPPER": "pepper"}))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    broken.okm_endpoint = Endpoint.CHAT  # type: ignore[attr-defined]  # reason: routed like a proxied endpoint
    app.router.add_post("/v1/broken", broken)
    client = await aiohttp_client(app)
    resp = await client.post("/v1/broken", json={})
    body = await resp.json()
    assert resp.status == 500 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "internal_error" and resp.headers["X-Request-Id"] in body["error"]["message"]
    assert "secret internals" not in await resp.text() and "Traceback" not in await resp.text()
    metrics = await (await client.get("/metrics")).text()
    assert 'okm_requests_total{endpoint="chat/completions",lane="none",status="500"} 1.0' in metrics
