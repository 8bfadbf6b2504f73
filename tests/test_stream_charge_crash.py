"""A delivered stream is charged before its end goes out: the gateway, a real `python -m proxy serve`
process, is SIGKILLed the moment the client has read the stream's terminal event (`data: [DONE]`,
`response.completed`), and the store already holds the request's row `ok`, with its charge and no
hold left. Chat, streamed Responses and a synthesized Responses stream (`responses_stream: false`).

The upstream keeps its connection open after the terminal event, as real ones may: the gateway's
tail wait then runs after the terminal event, so a charge written only when the handler returns
could not be in the store when the kill lands."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from proxy.store import Store
from proxy.types import Secret
from testkit import payloads
from testkit.gateway import GatewayProcess
from testkit.upstream import USAGE, FakeUpstream, Reply, Stream
from tests.conftest import MODEL, resale_key
from tests.fakes.hostile import CLOSE, process_config

PEPPER = "stream-charge-crash-pepper-0123456789"
PRICES = {"input": "1.00", "output": "2.00"}  # per 1M tokens: a micro-unit per input token, two per output
COST = payloads.PROMPT_TOKENS * 1 + payloads.COMPLETION_TOKENS * 2
CREDIT = 10_000_000
HOLD_OPEN_S = 5.0  # the upstream keeps the connection open this long after its terminal event


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def gateway(tmp: Path, upstream: FakeUpstream, *, responses_stream: bool) -> tuple[GatewayProcess, str]:
    store = await Store.open(tmp / "okm.sqlite3")
    try:
        await store.create_workspace("ws")
        _, key = await store.create_api_key("ws", Secret(PEPPER))
        await store.add_ledger_entry("ws", CREDIT, "topup", "stream charge test", "test")
    finally:
        await store.close()
    path = process_config(tmp, pool={}, resale={"resale-0": upstream.url}, byok={}, model=MODEL)
    config = yaml.safe_load(path.read_text())
    config["billing"] = {"enabled": True, "prices": {"resale/*": PRICES}}
    config["providers"]["resale-0"]["responses_stream"] = responses_stream
    config["lanes"].pop("cheap")
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {"OKM_KEY_PEPPER": PEPPER, "RESALE_KEY": resale_key(0)}
    return await GatewayProcess(path, env, tmp / "gateway.log").start(), key.reveal()


def assert_charged(db: Path, request_id: str) -> None:
    rows = query(db, "SELECT outcome, cost_micros, hold_micros, prompt_tokens, completion_tokens FROM usage "
                     "WHERE request_id = ?", (request_id,))
    assert rows == [("ok", COST, rows[0][2] if rows else 0, payloads.PROMPT_TOKENS, payloads.COMPLETION_TOKENS)]
    assert rows[0][2] > 0, "the stream should have taken a hold (prepaid workspace)"
    assert query(db, "SELECT count(*) FROM usage WHERE outcome = 'in_flight' AND hold_micros > 0") == [(0,)]
    assert query(db, "SELECT credits_micros, charges_micros, held_micros FROM billing_accounts") == [(CREDIT, COST, 0)]


async def stream_then_kill(proc: GatewayProcess, key: str, path: str, body: dict[str, Any], last: bytes) -> str:
    """POST a stream, SIGKILL the gateway as soon as the line `last` has arrived; the request id.

    aiohttp, not the SDK: the kill must follow the terminal event's arrival with no client-side
    buffering in between (the SDK reads on to the end of the body before its iteration ends)."""
    async with aiohttp.ClientSession() as session, session.post(
            proc.url + path, json=body, headers={"Authorization": f"Bearer {key}", **CLOSE}) as resp:
        assert resp.status == 200
        request_id = resp.headers["X-Request-Id"]
        async for line in resp.content:
            if line.startswith(last):
                proc.signal(signal.SIGKILL)  # the client has the end: nothing more may be needed
                break
        else:
            raise AssertionError(f"the stream ended without {last!r}")
    assert await proc.wait(5) == -signal.SIGKILL
    return request_id


@pytest.mark.parametrize("pause_s", [0.0, 0.2], ids=["at-once", "paced"])
async def test_chat_stream_is_charged_before_done_reaches_the_client(tmp_path: Path, pause_s: float) -> None:
    upstream = await FakeUpstream("resale-0").start()
    # at once: the whole answer comes with the first event; paced: [DONE] arrives on its own, later
    upstream.default = Stream((*payloads.chat_events(MODEL), pause_s, USAGE, pause_s, payloads.done(), HOLD_OPEN_S))
    proc, key = await gateway(tmp_path, upstream, responses_stream=True)
    try:
        body = {"model": f"resale/{MODEL}", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        request_id = await stream_then_kill(proc, key, "/v1/chat/completions", body, b"data: [DONE]")
        assert_charged(tmp_path / "okm.sqlite3", request_id)
    finally:
        proc.kill()
        await upstream.stop()


@pytest.mark.parametrize("responses_stream", [True, False], ids=["relayed", "synthesized"])
async def test_responses_stream_is_charged_before_completed_reaches_the_client(tmp_path: Path,
                                                                               responses_stream: bool) -> None:
    upstream = await FakeUpstream("resale-0").start()
    if responses_stream:
        events = payloads.responses_events(MODEL)
        upstream.default = Stream((*events[:-1], 0.2, events[-1], HOLD_OPEN_S))
    else:  # the gateway synthesizes the stream from this JSON answer
        upstream.default = Reply(body=payloads.response_object(MODEL))
    proc, key = await gateway(tmp_path, upstream, responses_stream=responses_stream)
    try:
        body = {"model": f"resale/{MODEL}", "stream": True, "input": "hi"}
        # the terminal event's data line: `event: response.completed` came just before it
        request_id = await stream_then_kill(proc, key, "/v1/responses", body, b'data: {"type":"response.completed"')
        assert_charged(tmp_path / "okm.sqlite3", request_id)
        assert len(upstream.requests) == 1 and upstream.requests[0].body["stream"] is responses_stream
    finally:
        proc.kill()
        await upstream.stop()


async def test_sdk_reads_a_charged_responses_stream_to_its_end(tmp_path: Path) -> None:
    """The order change is invisible to the official SDK: every event, the completed response and its usage."""
    upstream = await FakeUpstream("resale-0").start()
    upstream.default = Stream(tuple(payloads.responses_events(MODEL)))
    proc, key = await gateway(tmp_path, upstream, responses_stream=True)
    try:
        async with openai.AsyncOpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0, timeout=10) as client:
            stream = await client.responses.create(model=f"resale/{MODEL}", input="hi", stream=True)
            kinds = [event.type async for event in stream]
        assert kinds[-1] == "response.completed" and kinds.count("response.output_text.delta") == len(payloads.PIECES)
        [(outcome, cost)] = query(tmp_path / "okm.sqlite3", "SELECT outcome, cost_micros FROM usage")
        assert (outcome, cost) == ("ok", COST)
    finally:
        proc.kill()
        await upstream.stop()
