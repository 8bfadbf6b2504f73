"""Fault injection through a real gateway on every lane: upstream faults before and after the first
byte, client faults (disconnects, slow readers, slowloris), each checked on the client, on what the
fake upstream saw, on /metrics and on the usage row, and each ending with nothing left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from proxy import appkeys
from testkit import payloads
from testkit.gateway import GatewayProcess
from testkit.payloads import blocks, data_of, openai_error, sse
from testkit.upstream import USAGE, Auto, Behaviour, End, FakeUpstream, Reply, Reset, Stream, split
from tests.conftest import MODEL, Answer, Gateway, pool_key, resale_key
from tests.fakes.hostile import (
    CLOSE,
    Flood,
    assert_settled,
    big_chat_event,
    close_after_answer,
    metric,
    process_config,
    scrape,
    slowloris,
    tasks_now,
    until,
)

CHAT = [{"role": "user", "content": "hi"}]
LANES = ("cheap", "resale", "byok")
BYOK_KEY = "sk-byok-ws-openai-0000"
MODELS = {"cheap": f"cheap/{MODEL}", "resale": f"resale/{MODEL}", "byok": f"byok/openai/{MODEL}"}
UPSTREAM = {"cheap": "pool-0", "resale": "resale-0", "byok": "byok-openai"}
KEYS = {"cheap": pool_key(0), "resale": resale_key(0), "byok": BYOK_KEY}
MAX_EVENT = 1_572_864  # 1.5 MiB: a 1 MiB event passes, a larger one is cut
IDLE_S = 0.5
EVENTS = payloads.chat_events(MODEL)  # role chunk, five content chunks, finish chunk


@dataclass
class Rig:
    gw: Gateway
    lane: str
    baseline: set[asyncio.Task[Any]]

    @property
    def fake(self) -> FakeUpstream:
        return {"cheap": self.gw.pool[0], "resale": self.gw.resale[0], "byok": self.gw.byok["openai"]}[self.lane]

    @property
    def model(self) -> str:
        return MODELS[self.lane]

    async def chat(self, stream: bool = True) -> Answer:
        body = {"model": self.model, "messages": CHAT, "stream": stream}
        return await self.gw.post("/v1/chat/completions", body, headers=CLOSE)

    async def metrics(self) -> str:
        return await scrape(self.gw.url, self.gw.session)

    async def settled(self) -> None:
        await assert_settled(self.gw, self.baseline)

    def saw_one_request_with_its_own_key(self) -> None:
        assert len(self.fake.requests) == 1
        assert self.fake.requests[0].bearer == KEYS[self.lane]
        others = [u for u in self.gw.upstreams if u is not self.fake]
        assert not any(u.requests for u in others), "a fault leaked into another upstream"


async def make_rig(gateway: Any, lane: str, **limits: Any) -> Rig:
    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",), limits={
        "idle_timeout_s": IDLE_S, "first_byte_timeout_s": 1, "max_event_bytes": MAX_EVENT, **limits})
    close_after_answer(*gw.upstreams)
    return Rig(gw, lane, tasks_now())


@pytest.fixture(params=LANES)
async def rig(gateway: Any, request: pytest.FixtureRequest) -> Rig:
    return await make_rig(gateway, request.param)


def inband_error(body: bytes) -> dict[str, Any]:
    last = blocks(body)[-1]
    assert b"[DONE]" not in body, "a broken stream must not end with [DONE]"
    return orjson.loads(data_of(last))["error"]


# --- upstream faults before the first byte -------------------------------------------------------

@dataclass(frozen=True)
class Early:
    """A fault before any byte reached the client: (cheap, resale/byok) status and code."""

    behaviour: Callable[[], Behaviour | None]  # None: the upstream refuses connections
    result: str  # okm_upstream_attempts_total{outcome}
    cheap: tuple[int, str]
    other: tuple[int, str | None]
    byok: tuple[int, str] | None = None  # where BYOK differs from resale


RATE_MSG = "Rate limit reached for gpt-test in organization org-Abc123Def456 on requests per min"
EARLY = {
    "429-retry-after": Early(lambda: Reply(429, openai_error(RATE_MSG, "requests", "rate_limit_exceeded"),
                                           headers={"Retry-After": "7", **CLOSE}),
                             "rate_limited", (429, "rate_limited"), (429, "rate_limit_exceeded")),
    "429-no-retry-after": Early(lambda: Reply(429, openai_error(RATE_MSG, "requests", "rate_limit_exceeded"),
                                              headers=CLOSE),
                                "rate_limited", (429, "rate_limited"), (429, "rate_limit_exceeded")),
    "500-openai-body": Early(lambda: Reply(500, openai_error("The server had an error", "server_error"),
                                           headers=CLOSE),
                             "server_error", (503, "no_healthy_upstream"), (500, None)),
    "502-html-page": Early(lambda: Reply(502, b"<html><body><h1>502 Bad Gateway</h1>cloudflare</body></html>",
                                         content_type="text/html", headers=CLOSE),
                           "server_error", (503, "no_healthy_upstream"), (502, "upstream_error")),
    "200-json-error-to-stream": Early(lambda: Reply(200, openai_error("You exceeded your quota", code="quota"),
                                                    headers=CLOSE),
                                      "server_error", (503, "no_healthy_upstream"), (502, "quota")),
    "connection-refused": Early(lambda: None, "connect_error", (503, "no_healthy_upstream"), (502, "upstream_error")),
    "reset-before-headers": Early(Reset, "connect_error", (503, "no_healthy_upstream"), (502, "upstream_error")),
    "reset-after-headers": Early(lambda: Stream((), end=End.RESET), "server_error", (503, "no_healthy_upstream"),
                                 (502, "upstream_error")),
    "eof-before-first-event": Early(lambda: Stream((b": just a comment\n\n",), headers=CLOSE), "server_error",
                                    (503, "no_healthy_upstream"), (502, "upstream_error")),
    "401-key-rejected": Early(lambda: Reply(401, openai_error(f"Incorrect API key provided: {pool_key(0)}",
                                                              code="invalid_api_key"), headers=CLOSE),
                              "auth_error", (503, "no_healthy_upstream"), (502, "upstream_error"),
                              byok=(403, "byok_upstream_auth_failed")),
}


@pytest.mark.parametrize("name", list(EARLY))
async def test_fault_before_the_first_byte(rig: Rig, caplog: pytest.LogCaptureFixture, name: str) -> None:
    case = EARLY[name]
    behaviour = case.behaviour()
    if behaviour is None:
        await rig.fake.stop()
    else:
        rig.fake.script(behaviour)
    answer = await rig.chat()
    expected = (rig.lane == "cheap" and case.cheap) or (rig.lane == "byok" and case.byok) or case.other
    assert answer.status == expected[0], answer.body[:400]
    assert answer.headers["Content-Type"].startswith("application/json")
    error = answer.error
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    if expected[1] is not None:
        assert error["code"] == expected[1]
    if name == "429-retry-after":
        assert answer.headers.get("Retry-After") == "7"
    elif name == "429-no-retry-after":  # the pool's cool-down, or nothing when the upstream gave none
        assert answer.headers.get("Retry-After") == ("30" if rig.lane == "cheap" else None)
    for secret in (pool_key(0), resale_key(0), "cloudflare", "<html"):
        assert secret not in answer.body.decode(errors="replace")
    if rig.lane != "byok":
        assert b"org-Abc123Def456" not in answer.body  # operator account ids are masked, BYOK errors are the tenant's
    if behaviour is not None:
        rig.saw_one_request_with_its_own_key()
    text = await rig.metrics()
    assert metric(text, "okm_upstream_attempts_total", lane=rig.lane, upstream=UPSTREAM[rig.lane],
                  outcome=case.result) == 1
    assert metric(text, "okm_requests_total", lane=rig.lane, status=str(expected[0])) == 1
    assert metric(text, "okm_inband_errors_total") == 0
    [row] = await rig.gw.usage_rows(1)
    assert (row["outcome"], row["status"], row["attempts"]) == ("upstream_error", expected[0], 1)
    assert "Traceback" not in caplog.text
    await rig.settled()


# --- upstream faults after the first byte --------------------------------------------------------


async def test_reset_after_events_is_an_inband_error(rig: Rig) -> None:
    rig.fake.script(Stream(tuple(EVENTS[:3]), end=End.RESET))
    answer = await rig.chat()
    assert answer.status == 200 and blocks(answer.body)[:3] == EVENTS[:3]
    assert len(blocks(answer.body)) == 4 and inband_error(answer.body)["code"] == "upstream_error"
    await _assert_interrupted(rig, "upstream_broke", "upstream_error")


async def test_clean_eof_without_done_is_an_inband_error(rig: Rig) -> None:
    rig.fake.script(Stream((*EVENTS, USAGE), headers=CLOSE))
    answer = await rig.chat()
    assert answer.status == 200 and blocks(answer.body)[:-1] == EVENTS  # the hidden usage chunk is still hidden
    assert "closed" in inband_error(answer.body)["message"]
    await _assert_interrupted(rig, "upstream_broke", "upstream_error")
    [row] = await rig.gw.usage_rows(1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (7, 5, 0)


async def test_stall_longer_than_the_idle_timeout_is_an_inband_timeout(rig: Rig) -> None:
    rig.fake.script(Stream((*EVENTS[:2], 30.0), end=End.HANG))
    start = time.monotonic()
    answer = await rig.chat()
    assert IDLE_S * 0.8 < time.monotonic() - start < IDLE_S + 1.0
    assert blocks(answer.body)[:2] == EVENTS[:2] and inband_error(answer.body)["code"] == "upstream_timeout"
    await _assert_interrupted(rig, "idle_timeout", "upstream_timeout")


async def test_midstream_error_event_is_forwarded_and_ends_the_stream(rig: Rig) -> None:
    error = sse(openai_error("The model is overloaded (org-Abc123Def456)", "server_error", "overloaded"))
    rig.fake.script(Stream((*EVENTS[:2], error), headers=CLOSE))
    answer = await rig.chat()
    got = blocks(answer.body)
    assert answer.status == 200 and got[:2] == EVENTS[:2] and b"[DONE]" not in answer.body
    assert len(got) == 3, "the upstream's error event ends the stream: no second error after it"
    relayed = orjson.loads(data_of(got[2]))["error"]
    assert relayed["code"] == "overloaded" and "overloaded" in relayed["message"]
    if rig.lane == "byok":
        assert got[2] == error  # the tenant's own provider: its bytes, untouched
    else:
        assert "org-Abc123Def456" not in relayed["message"], "operator account ids leak through in-band errors"
    text = await rig.metrics()
    assert metric(text, "okm_streams_interrupted_total") == 0 and metric(text, "okm_inband_errors_total") == 0
    [row] = await rig.gw.usage_rows(1)
    assert row["outcome"] == "upstream_error"
    await rig.settled()


async def test_midstream_responses_error_event_is_masked_on_operator_lanes(rig: Rig) -> None:
    events = payloads.responses_events(MODEL)[:4]
    error = {"type": "error", "code": "server_error", "message": "failed for proj_Abc123Def456 (org-Abc123Def456)",
             "param": None, "sequence_number": 4, "account": "acct_9f8e7d6c5b4a"}
    rig.fake.script(Stream((*events, sse(error, event="error")), headers=CLOSE))
    answer = await rig.gw.post("/v1/responses", {"model": rig.model, "input": "hi", "stream": True}, headers=CLOSE)
    got = blocks(answer.body)
    assert got[:4] == events and len(got) == 5 and got[4].startswith(b"event: error\n")
    relayed = orjson.loads(data_of(got[4]))
    if rig.lane == "byok":
        assert relayed == error
    else:  # masked, and fields beyond the documented ones dropped, as for errors before the first byte
        expected = {**error, "message": "failed for proj_*** (org-***)"}
        del expected["account"]
        assert relayed == expected
    await rig.settled()


async def test_one_malformed_event_is_forwarded_and_counted(rig: Rig) -> None:
    bad = b'data: {"id": "chatcmpl-fake1", "choices": [{"delta": {"content": "cut off\n\n'
    rig.fake.script(Stream((EVENTS[0], bad, *EVENTS[1:], USAGE, payloads.done()), headers=CLOSE))
    answer = await rig.chat()
    assert answer.body == b"".join((EVENTS[0], bad, *EVENTS[1:], payloads.done()))
    text = await rig.metrics()
    assert metric(text, "okm_malformed_events_total", lane=rig.lane) == 1
    assert metric(text, "okm_inband_errors_total") == 0
    [row] = await rig.gw.usage_rows(1)
    assert (row["outcome"], row["prompt_tokens"], row["completion_tokens"]) == ("ok", 7, 5)
    await rig.settled()


async def test_an_event_of_one_mib_is_delivered_intact(rig: Rig) -> None:
    big = big_chat_event(MODEL, 1 << 20)
    rig.fake.script(Stream((EVENTS[0], *split(big, *range(4096, len(big), 65536)), *EVENTS[1:], USAGE,
                            payloads.done()), headers=CLOSE))
    answer = await rig.chat()
    assert answer.body == b"".join((EVENTS[0], big, *EVENTS[1:], payloads.done()))
    [row] = await rig.gw.usage_rows(1)
    assert row["outcome"] == "ok"
    await rig.settled()


async def test_an_event_over_the_cap_is_an_inband_error_and_memory_stays_bounded(rig: Rig) -> None:
    # An event that never ends: a gateway that buffered it would read all 256 MiB.
    flood = Flood(b"x" * 65536, 256 << 20, head=(EVENTS[0], b'data: {"choices": [{"delta": {"content": "'))
    rig.fake.script(Stream(flood, headers=CLOSE))  # type: ignore[arg-type]  # reason: a lazy iterable of pieces
    answer = await rig.chat()
    assert blocks(answer.body)[0] == EVENTS[0]
    assert "size limit" in inband_error(answer.body)["message"]
    assert not flood.finished and flood.pulled < MAX_EVENT + (16 << 20), f"read {flood.pulled} bytes"
    await _assert_interrupted(rig, "event_too_large", "upstream_error")


async def test_an_event_over_the_cap_before_the_first_byte_is_a_502(gateway: Any) -> None:
    rig = await make_rig(gateway, "resale")
    flood = Flood(b"x" * 65536, 256 << 20, head=(b'data: {"choices": [{"delta": {"content": "',))
    rig.fake.script(Stream(flood, headers=CLOSE))  # type: ignore[arg-type]  # reason: a lazy iterable of pieces
    answer = await rig.chat()
    assert answer.status == 502 and "too large" in answer.error["message"]
    assert not flood.finished and flood.pulled < MAX_EVENT + (16 << 20)
    await rig.settled()


async def _assert_interrupted(rig: Rig, reason: str, outcome: str) -> None:
    text = await rig.metrics()
    assert metric(text, "okm_streams_interrupted_total", lane=rig.lane, reason=reason) == 1
    assert metric(text, "okm_inband_errors_total", lane=rig.lane) == 1
    assert metric(text, "okm_upstream_attempts_total", lane=rig.lane, outcome="success") == 1
    assert metric(text, "okm_requests_total", lane=rig.lane, status="200") == 1
    [row] = await rig.gw.usage_rows(1)
    assert (row["outcome"], row["status"]) == (outcome, 200)
    rig.saw_one_request_with_its_own_key()
    await rig.settled()


# --- client faults -------------------------------------------------------------------------------

PHASES = {
    "waiting-for-headers": (Stream(delay_s=30), True),
    "waiting-for-first-event": (Stream((30.0,), end=End.HANG), True),
    "non-stream-wait": (Reply(delay_s=30), False),
    "mid-stream": (Stream(tuple(EVENTS[:3]), end=End.HANG), True),
}


@pytest.mark.parametrize("phase", list(PHASES))
async def test_client_disconnect_closes_the_upstream_within_a_second(rig: Rig, phase: str) -> None:
    behaviour, stream = PHASES[phase]
    rig.fake.script(behaviour)
    body = orjson.dumps({"model": rig.model, "messages": CHAT, "stream": stream})
    got = b""
    headers = {**rig.gw.auth(), "Content-Type": "application/json", **CLOSE}
    midstream = phase == "mid-stream"
    if midstream:
        async with rig.gw.session.post(rig.gw.url + "/v1/chat/completions", data=body, headers=headers) as resp:
            while got.count(b"\n\n") < 3:
                got += await resp.content.readany()
            resp.close()
    else:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await rig.gw.post("/v1/chat/completions", data=body, headers=CLOSE)
    gone = time.monotonic()
    await rig.fake.wait_no_connections(within_s=1.0)
    assert time.monotonic() - gone < 1.0
    await until(lambda: rig.fake.cancelled == 1)  # the upstream's handler was cut short: it stopped generating
    [row] = await rig.gw.usage_rows(1)
    assert row["outcome"] == "client_cancelled" and row["status"] == (200 if midstream else 499)
    prompt_estimate = len(body) // 4
    if midstream:
        assert got == b"".join(EVENTS[:3])
        assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (prompt_estimate, 2, 1)
    else:  # the prompt went upstream: it is billed as an estimate, nothing was generated
        assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_estimated"]) == (prompt_estimate, 0, 1)
    text = await rig.metrics()
    phase_label = "streaming" if midstream else "waiting"
    assert metric(text, "okm_client_disconnects_total", phase=phase_label) == 1
    assert metric(text, "okm_requests_total", lane=rig.lane, status=str(row["status"])) == 1
    await rig.settled()


async def test_client_disconnect_while_its_usage_row_is_admitted_closes_the_upstream(gateway: Any) -> None:
    rig = await make_rig(gateway, "resale")
    rig.fake.script(Stream(tuple(EVENTS[:3]), end=End.HANG))
    async with rig.gw.app[appkeys.STORE].transaction():  # a store slow to commit: the admission row waits
        client = asyncio.create_task(rig.chat())
        await rig.fake.wait_requests(1)
        await asyncio.sleep(0.2)  # the first event is in; the gateway waits for the row before answering
        client.cancel()
        with pytest.raises(asyncio.CancelledError):
            await client
        await rig.fake.wait_no_connections(within_s=1.0)
    [row] = await rig.gw.usage_rows(1)
    assert (row["outcome"], row["status"]) == ("client_cancelled", 499)
    await rig.settled()


async def test_slow_reader_backpressures_the_upstream(gateway: Any) -> None:
    rig = await make_rig(gateway, "resale")
    unit = sse(payloads.chat_chunk(MODEL, {"content": "y" * 16000}))
    flood = Flood(unit, len(unit) * 3072, head=(EVENTS[0],), tail=payloads.done())  # ~48 MiB of events
    rig.fake.script(Stream(flood, headers=CLOSE))  # type: ignore[arg-type]  # reason: a lazy iterable of pieces
    body = {"model": rig.model, "messages": CHAT, "stream": True}
    digest, size = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        async with rig.gw.session.post(rig.gw.url + "/v1/chat/completions", json=body,
                                       headers={**rig.gw.auth(), **CLOSE}) as resp:
            chunk = await resp.content.readany()
            digest.update(chunk)
            size += len(chunk)
            await asyncio.sleep(2 * IDLE_S)  # the client reads nothing: every buffer on the way fills up
            stalled = flood.pulled
            await asyncio.sleep(IDLE_S)
            held = tracemalloc.get_traced_memory()[0]  # gateway, fake and client together, in this process
            tracemalloc.stop()
            assert flood.pulled == stalled, "the upstream kept writing while the client read nothing"
            assert stalled < 24 << 20, f"{stalled} bytes in flight for one stalled stream (mostly socket buffers)"
            assert held < 4 << 20, f"{held} bytes of Python memory held for one stalled stream"
            async for chunk in resp.content.iter_any():  # reading again lets the upstream go on, to the end
                digest.update(chunk)
                size += len(chunk)
    finally:
        tracemalloc.stop()
    expected = flood.expected()
    assert flood.finished and size == len(expected) and digest.digest() == hashlib.sha256(expected).digest(), \
        "a client slower than the idle timeout got a broken stream"
    [row] = await rig.gw.usage_rows(1)
    assert row["outcome"] == "ok"
    text = await rig.metrics()
    assert metric(text, "okm_streams_interrupted_total") == 0
    await rig.settled()


async def test_a_client_that_never_reads_again_is_dropped(gateway: Any) -> None:
    rig = await make_rig(gateway, "resale", client_stall_timeout_s=IDLE_S)
    unit = sse(payloads.chat_chunk(MODEL, {"content": "y" * 16000}))
    flood = Flood(unit, len(unit) * 3072, head=(EVENTS[0],), tail=payloads.done())
    rig.fake.script(Stream(flood, headers=CLOSE))  # type: ignore[arg-type]  # reason: a lazy iterable of pieces
    body = {"model": rig.model, "messages": CHAT, "stream": True}
    async with rig.gw.session.post(rig.gw.url + "/v1/chat/completions", json=body,
                                   headers={**rig.gw.auth(), **CLOSE}) as resp:
        await resp.content.readany()
        await rig.fake.wait_no_connections(within_s=IDLE_S + 1.5)  # the client read nothing for the stall limit
    [row] = await rig.gw.usage_rows(1)
    assert row["outcome"] == "client_cancelled"
    assert metric(await rig.gw.metrics(), "okm_client_disconnects_total", phase="stalled") == 1


async def test_slowloris_connections_are_closed_at_the_header_timeout(tmp_path: Any) -> None:
    fake = await FakeUpstream("resale-0").start()
    fake.default = Auto(headers=CLOSE)
    gateway = GatewayProcess(
        process_config(tmp_path, pool={}, resale={"resale-0": fake.url}, byok={}, model=MODEL,
                       limits={"client_header_timeout_s": 1}),
        {"OKM_KEY_PEPPER": "p" * 32, "RESALE_KEY": resale_key(0)}, tmp_path / "gateway.log")
    try:
        await gateway.start()
        port = int(gateway.url.rsplit(":", 1)[1])
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
        slow = [asyncio.create_task(slowloris("127.0.0.1", port, head, 0.1, give_up_s=5)) for _ in range(20)]
        await asyncio.sleep(0.3)
        healthy_at = time.monotonic()
        import aiohttp  # reason: only this test needs a client of its own

        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(gateway.url + "/healthz", headers=CLOSE) as resp:
                    assert resp.status == 200
        assert time.monotonic() - healthy_at < 0.5, "normal traffic waited behind slow connections"
        closed_after = await asyncio.gather(*slow)
        assert all(t is not None and 0.8 < t < 2.5 for t in closed_after), closed_after
    finally:
        gateway.kill()
        await fake.stop()


# --- one tenant's CPU and slow bodies (availability under attack) --------------------------------

PAD_BODY = b'{"model": "resale/' + MODEL.encode() + b'", "pad": [' + b",".join([b"{}"] * 1_400_000) + b"]}"
ADMIN = {"Authorization": "Bearer admin-test-token"}


async def set_limits(gw: Gateway, workspace: str, **limits: Any) -> None:
    async with gw.session.patch(f"{gw.url}/admin/workspaces/{workspace}/limits", json=limits, headers=ADMIN) as r:
        assert r.status == 200, await r.text()


async def test_a_body_of_a_million_containers_freezes_nothing(gateway: Any) -> None:
    """4 MiB of empty JSON containers: refused fast; /healthz stays quick; another tenant's stream,
    paced closer than its idle timeout, is not cut as an upstream timeout."""
    gw = await gateway(pool=0, resale=1, byok=(), workspaces={"attacker": None, "victim": None},
                       limits={"max_body_bytes": 5 << 20, "idle_timeout_s": 1})
    await set_limits(gw, "attacker", rpm_limit=1)
    paced = (*(p for e in EVENTS for p in (e, 0.25)), payloads.done())
    gw.resale[0].script(Stream(paced))
    stream = asyncio.create_task(gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT,
                                                                  "stream": True}, workspace="victim"))
    await until(lambda: bool(gw.resale[0].requests))
    lags: list[float] = []

    async def probe() -> None:
        while not stream.done():
            started = time.monotonic()
            assert (await gw.get("/healthz", authed=False)).status == 200
            lags.append(time.monotonic() - started)
            await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    started = time.monotonic()
    answers = [await gw.post("/v1/chat/completions", data=PAD_BODY, workspace="attacker") for _ in range(3)]
    took = time.monotonic() - started
    victim = await stream
    await prober
    assert answers[0].status == 400 and "JSON objects and arrays" in answers[0].error["message"]
    assert [a.status for a in answers[1:]] == [429, 429]  # the minute bucket applies before the parse
    assert took < 1.5, f"three refusals took {took:.2f}s"
    assert max(lags) < 0.5, f"/healthz waited {max(lags):.2f}s"
    assert victim.status == 200 and blocks(victim.body)[-1] == b"data: [DONE]\n\n", victim.body[-300:]
    assert b"upstream_timeout" not in victim.body


async def test_a_blocked_event_loop_is_not_blamed_on_the_upstream(gateway: Any) -> None:
    gw = await gateway(pool=0, resale=1, byok=(), limits={"idle_timeout_s": 0.5})
    gw.resale[0].script(Stream((*(p for e in EVENTS for p in (e, 0.1)), payloads.done())))
    async with gw.session.post(gw.url + "/v1/chat/completions", headers=gw.auth(),
                               json={"model": f"resale/{MODEL}", "messages": CHAT, "stream": True}) as resp:
        first = await resp.content.readany()
        time.sleep(1.2)  # the gateway's loop is this test's loop: a blocking handler elsewhere, simulated
        body = first + await resp.read()
    assert resp.status == 200 and blocks(body)[-1] == b"data: [DONE]\n\n", body[-300:]
    assert b"upstream_timeout" not in body
    assert (await gw.usage_rows(1))[0]["outcome"] == "ok"


# --- one request must not empty the pool ---------------------------------------------------------

MODERATION_403 = openai_error("Your request was flagged by our moderation system.", type="invalid_request_error",
                              code="content_policy_violation")


async def test_a_content_refusal_403_is_the_requests_fault_not_the_accounts(gateway: Any) -> None:
    gw = await gateway(pool=2, resale=1, byok=(), workspaces={"a": None, "b": None})
    for fake in gw.pool:
        fake.default = Reply(403, MODERATION_403)
    answer = await gw.post("/v1/chat/completions", {"model": MODELS["cheap"], "messages": CHAT}, workspace="a")
    for fake in gw.pool:
        fake.default = Auto()
    assert answer.status == 403 and "moderation" in answer.error["message"]
    assert sum(len(f.requests) for f in gw.pool) == 1  # not retried: another account would refuse it too
    text = await scrape(gw.url, gw.session)
    assert [metric(text, "okm_pool_account_healthy", account=f"pool-{i}") for i in (0, 1)] == [1, 1]
    answer = await gw.post("/v1/chat/completions", {"model": MODELS["cheap"], "messages": CHAT}, workspace="b")
    assert answer.status == 200


async def test_403s_take_out_no_more_than_the_ejection_cap(gateway: Any) -> None:
    gw = await gateway(pool=2, resale=1, byok=(), workspaces={"a": None, "b": None})
    for fake in gw.pool:
        fake.script(Reply(403, openai_error("You are not allowed to use this model.", type="invalid_request_error")))
    answer = await gw.post("/v1/chat/completions", {"model": MODELS["cheap"], "messages": CHAT}, workspace="a")
    assert answer.status == 503 and answer.error["code"] == "no_healthy_upstream"
    text = await scrape(gw.url, gw.session)
    assert sum(metric(text, "okm_pool_account_healthy", account=f"pool-{i}") for i in (0, 1)) == 1
    answer = await gw.post("/v1/chat/completions", {"model": MODELS["cheap"], "messages": CHAT}, workspace="b")
    assert answer.status == 200  # another tenant is still served


# --- decompression bombs from upstreams ----------------------------------------------------------


def gzip_bomb(head: bytes, padding: bytes, inflated: int = 32 << 20) -> bytes:
    """A valid answer whose tail (`padding` repeated) inflates to `inflated` bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = padding * ((1 << 20) // len(padding))
    return packer.compress(head) + b"".join(packer.compress(block) for _ in range(inflated >> 20)) + packer.flush()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("lane", LANES)
async def test_compressed_upstream_answers_are_refused_not_inflated(gateway: Any, lane: str, stream: bool) -> None:
    gw = await gateway(pool=1, resale=1, byok=("openai",))
    rig = Rig(gw, lane, tasks_now())
    if stream:
        bomb = gzip_bomb(b"".join(EVENTS), b": keep-alive\n\n")
    else:
        bomb = gzip_bomb(orjson.dumps(payloads.chat_completion(MODEL)), b" ")
    content_type = "text/event-stream" if stream else "application/json"
    rig.fake.script(Reply(200, bomb, headers={"Content-Encoding": "gzip", **CLOSE}, content_type=content_type))
    answer = await rig.chat(stream=stream)
    assert answer.status in (502, 503), answer.body[:300]
    assert answer.error["code"] in ("upstream_error", "no_healthy_upstream")
    assert rig.fake.requests[0].headers["Accept-Encoding"] == "identity"
    assert len(answer.body) < 2000
    await rig.settled()


@pytest.mark.parametrize("lane", LANES)
async def test_an_upstream_redirect_is_never_relayed(gateway: Any, lane: str) -> None:
    rig = await make_rig(gateway, lane)
    rig.fake.script(Reply(307, payloads.chat_completion(MODEL), headers={"Location": "https://evil.example/v1", **CLOSE}))
    answer = await rig.chat(stream=False)
    assert answer.status in (502, 503) and "Location" not in answer.headers
    assert b"evil.example" not in answer.body


async def test_an_odd_responses_object_from_a_non_stream_upstream_is_a_502(gateway: Any) -> None:
    gw = await gateway(pool=1, resale=1, byok=())
    odd = {**payloads.response_object(MODEL), "output": [{"type": "function_call", "arguments": 5, "name": "f"}]}
    gw.nostream.script(Reply(200, odd))
    answer = await gw.post("/v1/responses", {"model": "resale/gpt-nostream", "input": "hi", "stream": True})
    assert answer.status == 502 and answer.error["code"] == "upstream_error"


# --- a stream ends when its right to run does ----------------------------------------------------


async def test_a_stream_of_keep_alive_comments_ends_at_the_stream_limit(gateway: Any) -> None:
    gw = await gateway(pool=0, resale=1, byok=(), limits={"max_stream_s": 1, "idle_timeout_s": 1})
    comments = tuple(p for _ in range(40) for p in (b": keep-alive\n\n", 0.1))
    gw.resale[0].script(Stream((EVENTS[0], *comments, payloads.done())))
    started = time.monotonic()
    answer = await gw.post("/v1/chat/completions", {"model": MODELS["resale"], "messages": CHAT, "stream": True})
    assert time.monotonic() - started < 2.5
    last = orjson.loads(data_of(blocks(answer.body)[-1]))
    assert last["error"]["code"] == "stream_too_long" and b"[DONE]" not in answer.body


@pytest.mark.parametrize("how", ["revoke", "disable", "byok-disable"])
async def test_revoking_access_ends_an_open_stream(gateway: Any, how: str) -> None:
    gw = await gateway(pool=0, resale=1, byok=("openai",))
    lane = "byok" if how == "byok-disable" else "resale"
    fake = gw.byok["openai"] if lane == "byok" else gw.resale[0]
    fake.script(Stream(tuple(p for e in EVENTS * 20 for p in (e, 0.1))))
    admin = {"Authorization": "Bearer admin-test-token"}
    async with gw.session.post(gw.url + "/v1/chat/completions", headers=gw.auth(),
                               json={"model": MODELS[lane], "messages": CHAT, "stream": True}) as resp:
        first = await resp.content.readany()
        started = time.monotonic()
        if how == "revoke":
            key_id = (await gw.app[appkeys.STORE].list_api_keys("ws"))[0].id
            path = f"/admin/keys/{key_id}/revoke"
        else:
            path = f"/admin/workspaces/ws/{how}"
        async with gw.session.post(gw.url + path, headers=admin) as r:
            assert r.status == 200, await r.text()
        body = first + await resp.read()
    assert time.monotonic() - started < 3
    last = orjson.loads(data_of(blocks(body)[-1]))
    assert last["error"]["code"] == "access_revoked" and b"[DONE]" not in body
    assert (await gw.usage_rows(1))[0]["outcome"] == "interrupted"
