"""Cost on every lane, to the micro-unit, against a real gateway and fake upstreams that report
cached and reasoning tokens in JSON and in streams; the official openai SDK is the client."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from proxy import appkeys
from testkit import payloads
from testkit.upstream import End, Reply, Stream
from tests.conftest import EMBED_MODEL, MODEL, NOSTREAM_MODEL, Gateway, GatewayFactory

PRICES = {
    "cheap/*": {"input": "1.00", "cached_input": "0.10", "output": "4.00"},
    f"resale/{MODEL}": {"input": "2.00", "cached_input": "0.50", "output": "8.00", "max_output_tokens": 1000},
    f"resale/{EMBED_MODEL}": {"input": "0.02"},
    f"resale/{NOSTREAM_MODEL}": {"input": "3.00", "output": "6.00"},
    "byok/*": {"request": "0.0002"},
}
BILLING = {"enabled": True, "currency": "USD", "prices": PRICES}
CHAT_USAGE = {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 400}, "completion_tokens": 500,
              "completion_tokens_details": {"reasoning_tokens": 200}, "total_tokens": 1500}
RESP_USAGE = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 400}, "output_tokens": 500,
              "output_tokens_details": {"reasoning_tokens": 200}, "total_tokens": 1500}
RICH = (1000, 400, 500, 200)  # input, cached input, output, reasoning
CHEAP_COST = 600 * 1 + 400 // 10 + 500 * 4  # (1000-400)*1.00 + 400*0.10 + 500*4.00 per 1M → micro-units
RESALE_COST = 600 * 2 + 400 // 2 + 500 * 8
COLUMNS = ("request_id", "lane", "outcome", "prompt_tokens", "cached_input_tokens", "completion_tokens",
           "reasoning_tokens", "tokens_estimated", "cost_micros", "price_input", "price_cached_input", "price_output",
           "price_request", "hold_micros")


async def billed_gateway(gateway: GatewayFactory, credit: int = 100_000_000, **kwargs: Any) -> Gateway:
    gw = await gateway(billing=kwargs.pop("billing", BILLING), **kwargs)
    if credit:
        await gw.app[appkeys.STORE].add_ledger_entry("ws", credit, "topup", "test credit", "test")
    return gw


async def rows(gw: Gateway, count: int = 1) -> list[dict[str, Any]]:
    await gw.usage_rows(count)
    found = await gw.app[appkeys.STORE].fetchall(f"SELECT {', '.join(COLUMNS)} FROM usage ORDER BY started_at, rowid")
    return [dict(zip(COLUMNS, r, strict=True)) for r in found]


def chat_stream(usage: dict[str, Any]) -> Stream:
    chunk = {**payloads.chat_usage_chunk(MODEL), "usage": usage}
    return Stream(pieces=(*payloads.chat_events(MODEL), payloads.sse(chunk), payloads.done()))


def responses_stream(usage: dict[str, Any]) -> Stream:
    events = payloads.responses_events(MODEL)
    final = {"type": "response.completed", "response": {**payloads.response_object(MODEL), "usage": usage},
             "sequence_number": len(events) - 1}
    return Stream(pieces=(*events[:-1], payloads.sse(final, event="response.completed")))


def buckets(row: dict[str, Any]) -> tuple[int, int, int, int]:
    return row["prompt_tokens"], row["cached_input_tokens"], row["completion_tokens"], row["reasoning_tokens"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("lane", "cost", "price"), [("cheap", CHEAP_COST, (1_000_000, 100_000, 4_000_000)),
                                                     ("resale", RESALE_COST, (2_000_000, 500_000, 8_000_000))])
async def test_chat_cost_to_the_micro_unit(gateway: GatewayFactory, lane: str, cost: int, price: tuple[int, ...],
                                           stream: bool) -> None:
    gw = await billed_gateway(gateway, pool=1)
    fake = gw.pool[0] if lane == "cheap" else gw.resale[0]
    answer = {**payloads.chat_completion(MODEL), "usage": CHAT_USAGE}
    fake.script(chat_stream(CHAT_USAGE) if stream else Reply(body=answer))
    request = {"model": f"{lane}/{MODEL}", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        chunks = [c async for c in await gw.client.chat.completions.create(**request, stream=True)]
        assert all(c.usage is None for c in chunks)  # the client did not ask: the usage chunk stays hidden
    else:
        completion = await gw.client.chat.completions.create(**request)
        assert completion.usage is not None and completion.usage.prompt_tokens == 1000
    [row] = await rows(gw)
    assert buckets(row) == RICH and row["tokens_estimated"] == 0 and row["outcome"] == "ok"
    assert row["cost_micros"] == cost
    assert (row["price_input"], row["price_cached_input"], row["price_output"], row["price_request"]) == (*price, 0)
    account = await gw.app[appkeys.STORE].billing_account("ws")
    assert (account.charges_micros, account.held_micros, account.balance_micros) == (cost, 0, 100_000_000 - cost)


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_cost(gateway: GatewayFactory, stream: bool) -> None:
    gw = await billed_gateway(gateway)
    gw.resale[0].script(responses_stream(RESP_USAGE) if stream
                        else Reply(body={**payloads.response_object(MODEL), "usage": RESP_USAGE}))
    request = {"model": f"resale/{MODEL}", "input": "hi"}
    if stream:
        events = [e async for e in await gw.client.responses.create(**request, stream=True)]
        assert events[-1].type == "response.completed"
    else:
        assert (await gw.client.responses.create(**request)).usage.output_tokens == 500
    [row] = await rows(gw)
    assert buckets(row) == RICH and row["cost_micros"] == RESALE_COST and row["tokens_estimated"] == 0


async def test_synthesized_responses_stream_cost(gateway: GatewayFactory) -> None:
    gw = await billed_gateway(gateway)
    gw.nostream.script(Reply(body={**payloads.response_object(MODEL), "usage": RESP_USAGE}))
    stream = await gw.client.responses.create(model=f"resale/{NOSTREAM_MODEL}", input="hi", stream=True)
    types = [e.type async for e in stream]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert gw.nostream.requests[0].body["stream"] is False
    [row] = await rows(gw)
    # cached_input is unpriced for this model, so it costs the input price: 1000*3.00 + 500*6.00
    assert buckets(row) == RICH and row["cost_micros"] == 3000 + 3000


async def test_completions_stream_embeddings_and_byok_fee(gateway: GatewayFactory) -> None:
    gw = await billed_gateway(gateway, pool=1)
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    usage_chunk = {**payloads.usage_chunk_for("/v1/completions", MODEL), "usage": usage}
    gw.pool[0].script(Stream(pieces=(*payloads.completion_events(MODEL), payloads.sse(usage_chunk), payloads.done())))
    text = [c.choices[0].text async for c in await gw.client.completions.create(
        model=f"cheap/{MODEL}", prompt="hi", stream=True) if c.choices]
    assert "".join(text) == payloads.TEXT
    embed = {**payloads.embeddings(EMBED_MODEL, "x", None), "usage": {"prompt_tokens": 500, "total_tokens": 500}}
    gw.resale[0].script(Reply(body=embed))
    await gw.client.embeddings.create(model=f"resale/{EMBED_MODEL}", input="x")
    await gw.client.chat.completions.create(model=f"byok/openai/{MODEL}", messages=[{"role": "user", "content": "x"}])
    completions, embeddings, byok = await rows(gw, 3)
    assert (completions["cost_micros"], completions["completion_tokens"]) == (1000 + 2000, 500)
    assert (embeddings["cost_micros"], embeddings["completion_tokens"], embeddings["tokens_estimated"]) == (10, 0, 0)
    assert (byok["cost_micros"], byok["price_request"], byok["price_input"]) == (200, 200, 0)
    metrics = await gw.metrics()
    assert 'okm_cost_micros_total{lane="cheap"} 3000.0' in metrics
    assert 'okm_cost_micros_total{lane="resale"} 10.0' in metrics
    assert 'okm_cost_micros_total{lane="byok"} 200.0' in metrics


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -5, "completion_tokens": 3},
    {"prompt_tokens": "12", "completion_tokens": 1.5},
    {"prompt_tokens": True, "completion_tokens": 10**15},
    None,
])
async def test_untrusted_or_missing_usage_is_estimated_never_a_500(gateway: GatewayFactory, usage: Any) -> None:
    gw = await billed_gateway(gateway, pool=1)
    answer = payloads.chat_completion(MODEL, text="x" * 400)
    if usage is None:
        del answer["usage"]
    else:
        answer["usage"] = usage
    gw.pool[0].script(Reply(body=answer))
    reply = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    [row] = await rows(gw)
    assert row["tokens_estimated"] == 1 and row["outcome"] == "ok"
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["cost_micros"] > 0
    if usage is None:
        assert row["completion_tokens"] == 100  # 400 bytes of answer text, 4 bytes a token


async def test_stream_broken_midway_is_charged_for_what_was_delivered(gateway: GatewayFactory) -> None:
    gw = await billed_gateway(gateway, pool=1)
    big = "word " * 200
    pieces = (*payloads.chat_events(MODEL, pieces=(big, big))[:-1],)
    gw.pool[0].script(Stream(pieces=pieces, end=End.RESET))
    reply = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 200 and b'"code":"upstream_error"' in reply.body and b"[DONE]" not in reply.body
    [row] = await rows(gw)
    assert row["outcome"] == "upstream_error" and row["tokens_estimated"] == 1
    assert row["completion_tokens"] >= 2 * len(big) // 4 - 100  # the delivered text, not one token per event
    assert row["cost_micros"] >= row["completion_tokens"] * 4


async def test_client_leaving_before_the_usage_chunk_is_billed_what_the_upstream_produced(gateway: GatewayFactory) -> None:
    gw = await billed_gateway(gateway, pool=1)
    usage_chunk = {**payloads.chat_usage_chunk(MODEL), "usage": CHAT_USAGE}
    gw.pool[0].script(Stream(pieces=(*payloads.chat_events(MODEL, pieces=("all of it " * 50,)), 0.3,
                                     payloads.sse(usage_chunk), payloads.done())))
    body = {"model": f"cheap/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session, \
            session.post(gw.base_url + "/chat/completions", json=body, headers=gw.auth()) as resp:
        seen = b""
        async for chunk in resp.content.iter_any():
            seen += chunk
            if b'"finish_reason":"stop"' in seen:
                break  # hang up between the finish chunk and the usage chunk
    [row] = await rows(gw)
    assert row["outcome"] == "client_cancelled"
    assert buckets(row) == RICH and row["tokens_estimated"] == 0 and row["cost_micros"] == CHEAP_COST


async def test_client_leaving_mid_answer_is_estimated_and_the_upstream_cut_at_once(gateway: GatewayFactory) -> None:
    gw = await billed_gateway(gateway, pool=1)
    gw.pool[0].script(Stream(pieces=(*payloads.chat_events(MODEL)[:3], 5.0, payloads.done())))
    body = {"model": f"cheap/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session, \
            session.post(gw.base_url + "/chat/completions", json=body, headers=gw.auth()) as resp:
        await resp.content.readany()
    await gw.pool[0].wait_no_connections(within_s=1.0)
    [row] = await rows(gw)
    assert row["outcome"] == "client_cancelled" and row["tokens_estimated"] == 1 and row["cost_micros"] > 0
    await asyncio.sleep(0)
