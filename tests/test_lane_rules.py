"""Lane-specific rules end to end: the Budget lane's scrub and pool failover, the Business lane's
isolation from the pool and its non-stream Responses quirk, BYOK gates and tenant isolation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from testkit import payloads
from testkit.payloads import TEXT
from testkit.upstream import End, Reply, Reset, Stream
from tests.conftest import MODEL, NOSTREAM_MODEL, Gateway, pool_key, resale_key

CHAT = [{"role": "user", "content": "hi"}]
HOSTILE_HEADERS = {
    "X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7",
    "Cookie": "session=abc", "OpenAI-Organization": "org-client123456", "OpenAI-Project": "proj_client123456",
    "User-Agent": "client-agent/1.0", "X-Stainless-Lang": "python", "X-Custom": "anything",
    "OpenAI-Beta": "responses=v1", "Idempotency-Key": "idem-1", "Accept": "application/json",
}
END_USER = {"user": "end-user-42", "metadata": {"customer": "acme"}, "safety_identifier": "sid-1",
            "prompt_cache_key": "pck-1"}
# What aiohttp itself adds upstream (Host, Accept-Encoding, Content-*) plus the lane's key and allow-list.
TRANSPORT = {"host", "accept-encoding", "content-type", "content-length", "authorization"}
ACCOUNT_HEADERS = {
    "openai-organization": "org-AbCdEf1234567890XYZ", "openai-project": "proj_Abc123def456",
    "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-tokens": "149000",
    "set-cookie": "__cf_bm=accountcookie; path=/", "x-request-id": "req_upstream123", "openai-processing-ms": "12",
}


def no_upstream_calls(gw: Gateway) -> None:
    assert sum(len(u.requests) for u in gw.upstreams) == 0


# --- scrub -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lane", ["cheap", "resale"])
async def test_request_headers_and_body_upstream(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1, resale=1)
    sent = {"model": f"{lane}/{MODEL}", "messages": CHAT, "temperature": 0.5, "store": True, **END_USER}
    answer = await gw.post("/v1/chat/completions", sent, headers=HOSTILE_HEADERS)
    assert answer.status == 200
    fake = gw.pool[0] if lane == "cheap" else gw.resale[0]
    [got] = fake.requests
    names = {name.lower() for name in got.headers}
    if lane == "cheap":
        assert names == TRANSPORT | {"accept", "openai-beta"}
        assert got.body == {"model": MODEL, "messages": CHAT, "temperature": 0.5, "store": False}
        assert got.bearer == pool_key(0)
    else:
        assert names == TRANSPORT | {"accept", "openai-beta", "idempotency-key"}
        assert got.body == {**sent, "model": MODEL}
        assert got.bearer == resale_key(0)
    assert got.headers["OpenAI-Beta"] == "responses=v1" and got.headers["Accept"] == "application/json"
    assert gw.key.encode() not in got.raw and gw.key not in str(got.headers)


async def test_cheap_forces_store_false_on_responses(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    await gw.client.responses.create(model=f"cheap/{MODEL}", input="hi", store=True, user="u1")
    [got] = gw.pool[0].requests
    assert got.body["store"] is False and "user" not in got.body


@pytest.mark.parametrize("field,value", [("previous_response_id", "resp_123"), ("conversation", "conv_123")])
async def test_stateful_fields_refused_on_cheap_only(gateway: Any, field: str, value: str) -> None:
    gw: Gateway = await gateway(pool=1, resale=1)
    answer = await gw.post("/v1/responses", {"model": f"cheap/{MODEL}", "input": "hi", field: value})
    assert answer.status == 400
    assert answer.error["code"] == "stateful_request_not_allowed" and answer.error["param"] == field
    assert "resale/" in answer.error["message"]
    no_upstream_calls(gw)
    answer = await gw.post("/v1/responses", {"model": f"resale/{MODEL}", "input": "hi", field: value})
    assert answer.status == 200 and gw.resale[0].requests[0].body[field] == value


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("lane", ["cheap", "resale", "byok"])
async def test_account_identifying_response_headers(gateway: Any, lane: str, stream: bool) -> None:
    """Budget and Business answer from the operator's accounts: none of their headers reach the
    client. BYOK is the tenant's own account: its headers (rate limits included) pass."""
    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",))
    fake = {"cheap": gw.pool[0], "resale": gw.resale[0], "byok": gw.byok["openai"]}[lane]
    model = f"byok/openai/{MODEL}" if lane == "byok" else f"{lane}/{MODEL}"
    fake.script(Stream(headers=ACCOUNT_HEADERS) if stream else Reply(headers=ACCOUNT_HEADERS))
    answer = await gw.post("/v1/chat/completions", {"model": model, "messages": CHAT, "stream": stream})
    assert answer.status == 200
    seen = {k.lower(): v for k, v in answer.headers.items()}
    assert "set-cookie" not in seen and "accountcookie" not in str(seen)
    if lane in ("cheap", "resale"):
        assert not set(seen) & set(ACCOUNT_HEADERS) - {"x-request-id"}
        assert not {v for v in ACCOUNT_HEADERS.values()} & set(seen.values())
        assert "x-upstream-request-id" not in seen and not [k for k in seen if k.startswith("x-ratelimit")]
    else:
        assert seen["openai-organization"] == ACCOUNT_HEADERS["openai-organization"]
        assert seen["x-ratelimit-remaining-tokens"] == "149000"
        assert seen["x-upstream-request-id"] == "req_upstream123"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("lane", ["cheap", "resale", "byok"])
async def test_error_answers_keep_the_retry_hint_and_rate_limits_only_on_byok(gateway: Any, lane: str,
                                                                              stream: bool) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",))
    fake = {"cheap": gw.pool[0], "resale": gw.resale[0], "byok": gw.byok["openai"]}[lane]
    model = f"byok/openai/{MODEL}" if lane == "byok" else f"{lane}/{MODEL}"
    fake.script(Reply(400, {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}},
                      headers={"x-should-retry": "false", "x-ratelimit-remaining-requests": "7",
                               "openai-organization": "org-AbCdEf1234567890XYZ"}))
    answer = await gw.post("/v1/chat/completions", {"model": model, "messages": CHAT, "stream": stream})
    assert answer.status == 400
    seen = {k.lower(): v for k, v in answer.headers.items()}
    assert seen["x-should-retry"] == "false"
    assert "openai-organization" not in seen
    assert seen.get("x-ratelimit-remaining-requests") == ("7" if lane == "byok" else None)


async def test_account_ids_masked_in_cheap_error_text(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    message = (f"Organization org-AbCdEf1234567890XYZ (project proj_Abc123def456, account pool-0, key "
               f"{pool_key(0)}) cannot use this model.")
    gw.pool[0].script(Reply(400, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                            "code": "model_not_allowed", "org_id": "org-AbCdEf1234567890XYZ"}}))
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT})
    assert answer.status == 400
    text = answer.body.decode()
    assert "org-***" in text and "proj_***" in text and "cannot use this model" in text
    for secret in ("AbCdEf1234567890XYZ", "Abc123def456", "pool-0", pool_key(0), "org_id"):
        assert secret not in text


# --- Budget pool failover --------------------------------------------------------------------------

FAILURES = {
    "429": Reply(429, payloads.openai_error("Rate limit reached", "requests", "rate_limit_exceeded"),
                 headers={"Retry-After": "30"}),
    "500": Reply(500, payloads.openai_error("The server had an error", "server_error")),
    "503-html": Reply(503, b"<html>Service Unavailable</html>", content_type="text/html"),
    "reset": Reset(),
    "reset-after-headers": Stream((), end=End.RESET),
    "eof-before-any-event": Stream(()),
    "401": Reply(401, payloads.openai_error("Incorrect API key provided", "invalid_request_error", "invalid_api_key")),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("failure", [*FAILURES, "refused"])
async def test_pool_fails_over_before_the_first_byte(gateway: Any, failure: str, stream: bool) -> None:
    gw: Gateway = await gateway(pool=2, pool_weights=(1e9, 1))  # pool-0 is always picked first while healthy
    first, second = gw.pool
    if failure == "refused":
        await first.stop()
    else:
        first.script(FAILURES[failure])
    stream_resp = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=stream)
    text = "".join([c.choices[0].delta.content or "" async for c in stream_resp]) if stream else \
        stream_resp.choices[0].message.content
    assert text == TEXT
    assert len(first.requests) == (0 if failure == "refused" else 1) and len(second.requests) == 1
    [row] = await gw.usage_rows(1)
    assert (row["attempts"], row["upstream"], row["outcome"]) == (2, "pool-1", "ok")
    assert 'okm_fallbacks_total{lane="cheap"} 1.0' in await gw.metrics()
    # The failed account sits out the next request (cool-down, ejection or disabled).
    await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT)
    assert len(first.requests) == (0 if failure == "refused" else 1) and len(second.requests) == 2


async def test_no_failover_on_a_client_error(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=2, pool_weights=(1e9, 1))
    gw.pool[0].script(Reply(400, payloads.openai_error("bad 'messages'", param="messages")))
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT})
    assert answer.status == 400 and answer.error["param"] == "messages"
    assert (len(gw.pool[0].requests), len(gw.pool[1].requests)) == (1, 0)


async def test_every_account_rate_limited_is_429_with_retry_after(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=2)
    limited = payloads.openai_error("Rate limit reached for org-AbCdEf1234567890XYZ", "requests", "rate_limit_exceeded")
    gw.pool[0].script(Reply(429, limited, headers={"Retry-After": "7"}))
    gw.pool[1].script(Reply(429, limited, headers={"Retry-After": "9"}))
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT})
    assert answer.status == 429 and answer.headers["Retry-After"] == "7"
    assert answer.error["code"] == "rate_limited" and "org-" not in answer.body.decode()
    again = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True})
    assert again.status == 429 and 1 <= int(again.headers["Retry-After"]) <= 7
    assert sum(len(u.requests) for u in gw.pool) == 2  # cooled accounts are not asked again


@pytest.mark.parametrize("stream", [False, True])
async def test_every_account_rate_limited_with_retry_after_zero_is_429(gateway: Any, stream: bool) -> None:
    gw: Gateway = await gateway(pool=2)
    limited = payloads.openai_error("Rate limit reached", "requests", "rate_limit_exceeded")
    for fake in gw.pool:
        fake.script(Reply(429, limited, headers={"Retry-After": "0"}))
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": stream})
    assert answer.status == 429 and answer.error["code"] == "rate_limited"
    assert int(answer.headers["Retry-After"]) >= 1  # "0" would tell the client to hammer the pool
    assert sum(len(u.requests) for u in gw.pool) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_every_account_failing_is_503_naming_no_account(gateway: Any, stream: bool) -> None:
    gw: Gateway = await gateway(pool=2)
    for i, fake in enumerate(gw.pool):
        fake.script(Reply(500, payloads.openai_error(f"pool-{i} at {fake.url} failed", "server_error")))
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": stream})
    assert answer.status == 503 and answer.error["code"] == "no_healthy_upstream"
    text = answer.body.decode() + str(answer.headers)
    for i, fake in enumerate(gw.pool):
        assert f"pool-{i}" not in text and pool_key(i) not in text and str(fake.port) not in text
    assert sum(len(u.requests) for u in gw.pool) == 2


# --- Business lane ---------------------------------------------------------------------------------


async def test_resale_fails_over_in_order_and_never_to_the_pool(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=2, resale=3)
    gw.resale[0].script(Reply(500, payloads.openai_error("down", "server_error")))
    await gw.resale[1].stop()
    answer = await gw.client.chat.completions.create(model=f"resale/{MODEL}", messages=CHAT)
    assert answer.choices[0].message.content == TEXT
    assert [len(u.requests) for u in gw.resale] == [1, 0, 1]
    assert gw.resale[2].requests[0].bearer == resale_key(2)
    no_pool = [len(u.requests) for u in gw.pool]
    assert no_pool == [0, 0]


@pytest.mark.parametrize("stream", [False, True])
async def test_resale_all_failing_while_the_pool_is_healthy(gateway: Any, stream: bool) -> None:
    gw: Gateway = await gateway(pool=2, resale=2)
    gw.resale[0].script(Reply(503, b"<html>down</html>", content_type="text/html"))
    gw.resale[1].script(Reset())
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": stream})
    assert answer.status == 502 and answer.error["code"] == "upstream_error"
    assert [len(u.requests) for u in gw.resale] == [1, 1]
    assert [len(u.requests) for u in gw.pool] == [0, 0]
    assert (await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT})).status == 200


async def test_forced_non_stream_responses_with_create_stream(gateway: Any) -> None:
    gw: Gateway = await gateway()
    stream = await gw.client.responses.create(model=f"resale/{NOSTREAM_MODEL}", input="hi", stream=True)
    events = [e async for e in stream]
    [got] = gw.nostream.requests
    assert got.body["stream"] is False and got.body["model"] == MODEL
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    assert events[-1].response.output_text == TEXT


async def test_forced_non_stream_responses_with_the_stream_helper(gateway: Any) -> None:
    gw: Gateway = await gateway()
    async with gw.client.responses.stream(model=f"resale/{NOSTREAM_MODEL}", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == TEXT and final.output_text == TEXT
    assert final.usage.input_tokens == 7 and final.usage.output_tokens == 5
    assert gw.nostream.requests[0].body["stream"] is False
    [row] = await gw.usage_rows(1)
    assert (row["stream"], row["total_tokens"], row["outcome"]) == (1, 12, "ok")


async def test_forced_non_stream_provider_still_streams_chat(gateway: Any) -> None:
    gw: Gateway = await gateway()
    stream = await gw.client.chat.completions.create(model=f"resale/{NOSTREAM_MODEL}", messages=CHAT, stream=True)
    chunks = [c async for c in stream]
    assert gw.nostream.requests[0].body["stream"] is True
    assert len(chunks) == len(payloads.chat_events(MODEL)) and "".join(
        c.choices[0].delta.content or "" for c in chunks) == TEXT
    answer = await gw.client.responses.create(model=f"resale/{NOSTREAM_MODEL}", input="hi")
    assert answer.output_text == TEXT and gw.nostream.requests[1].body.get("stream") in (None, False)


# --- BYOK and every lane's body guard --------------------------------------------------------------


async def test_byok_not_enabled_is_403(gateway: Any) -> None:
    gw: Gateway = await gateway(workspaces={"plain": None})
    answer = await gw.post("/v1/chat/completions", {"model": f"byok/openai/{MODEL}", "messages": CHAT})
    assert answer.status == 403 and answer.error["code"] == "byok_not_enabled"
    assert "cheap/" in answer.error["message"]
    assert not [m.id async for m in gw.client.models.list() if m.id.startswith("byok/")]
    no_upstream_calls(gw)


async def test_byok_without_a_stored_key_is_400_naming_the_provider(gateway: Any) -> None:
    gw: Gateway = await gateway()  # workspace "ws" has an openai key, no acme key
    answer = await gw.post("/v1/chat/completions", {"model": f"byok/acme/{MODEL}", "messages": CHAT})
    assert answer.status == 400 and answer.error["code"] == "byok_key_not_configured"
    assert "acme" in answer.error["message"]
    no_upstream_calls(gw)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [False, True])
async def test_byok_key_rejected_upstream_is_403(gateway: Any, status: int, stream: bool) -> None:
    gw: Gateway = await gateway()
    gw.byok["openai"].script(Reply(status, payloads.openai_error("Incorrect API key provided: sk-byok***0000",
                                                                 code="invalid_api_key")))
    answer = await gw.post("/v1/chat/completions", {"model": f"byok/openai/{MODEL}", "messages": CHAT,
                                                    "stream": stream})
    assert answer.status == 403 and answer.error["code"] == "byok_upstream_auth_failed"
    assert "your openai key was rejected" in answer.error["message"]
    assert len(gw.byok["openai"].requests) == 1 and sum(len(u.requests) for u in gw.pool + gw.resale) == 0


@pytest.mark.parametrize("body", [
    {"base_url": "http://attacker.example/v1"},
    {"api_key": "sk-attacker"},
    {"api_base": "http://attacker.example"},
    {"extra": {"deep": [{"Base-URL": "http://attacker.example"}]}},
    {"messages": [{"role": "user", "content": "hi", "api_key": "sk-attacker"}]},
], ids=["base_url", "api_key", "api_base", "nested-alias", "in-a-message"])
@pytest.mark.parametrize("model", [f"cheap/{MODEL}", f"resale/{MODEL}", f"byok/openai/{MODEL}"])
async def test_base_url_or_key_in_the_body_is_400(gateway: Any, model: str, body: dict[str, Any]) -> None:
    gw: Gateway = await gateway()
    answer = await gw.post("/v1/chat/completions", {"model": model, "messages": CHAT, **body})
    assert answer.status == 400 and answer.error["code"] == "invalid_request"
    assert "not allowed" in answer.error["message"] and answer.error["param"]
    no_upstream_calls(gw)


async def test_byok_isolation_under_interleaved_load(gateway: Any) -> None:
    keys = {"alpha": "sk-byok-alpha-0001", "beta": "sk-byok-beta-0002"}
    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",),
                                workspaces={name: {"openai": key} for name, key in keys.items()})
    names = list(keys)

    async def call(i: int) -> int:
        workspace = names[i % 2]
        body = {"model": f"byok/openai/{MODEL}", "messages": [{"role": "user", "content": f"{workspace}#{i}"}]}
        return (await gw.post("/v1/chat/completions", body, workspace=workspace)).status

    statuses = []
    for batch in range(10):
        statuses += await asyncio.gather(*(call(i) for i in range(batch * 100, batch * 100 + 100)))
    assert statuses == [200] * 1000
    received = gw.byok["openai"].requests
    assert len(received) == 1000
    for request in received:
        workspace = request.body["messages"][0]["content"].split("#")[0]
        assert request.bearer == keys[workspace]
    assert {r.body["messages"][0]["content"] for r in received} == {f"{names[i % 2]}#{i}" for i in range(1000)}



async def test_request_deadline_bounds_failover_across_the_pool(gateway: Any) -> None:
    """Each account stalls before its headers: the per-attempt first-byte timeout fails over, and
    limits.request_deadline_s ends the whole request with a 504 before every account is tried."""
    gw: Gateway = await gateway(pool=3, limits={"first_byte_timeout_s": 0.6, "request_deadline_s": 1.0})
    for fake in gw.pool:
        fake.default = Reply(delay_s=5)
    started = asyncio.get_running_loop().time()
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT})
    elapsed = asyncio.get_running_loop().time() - started
    assert answer.status == 504 and answer.error["code"] == "upstream_timeout"
    assert 0.9 < elapsed < 1.8
    assert sum(len(f.requests) for f in gw.pool) == 2  # the second attempt was cut at the deadline


async def test_a_replaced_byok_key_is_used_within_the_refresh_bound(gateway: Any) -> None:
    """Ciphertexts are cached per auth-table version: a key replaced from another process (the
    CLI) is used within about a second, never the stale one after that."""
    from proxy.store import Store
    from proxy.workspaces.crypto import encrypt_provider_key

    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",), workspaces={"ws": {"openai": "sk-byok-old-0001"}})
    body = {"model": f"byok/openai/{MODEL}", "messages": CHAT}
    assert (await gw.post("/v1/chat/completions", body)).status == 200
    other = await Store.open(gw.store_path)  # another connection, as the CLI would have
    try:
        [workspace] = [w for w in await other.list_workspaces() if w.name == "ws"]
        blob = encrypt_provider_key(gw.master, workspace.id, "openai", "sk-byok-new-0002")
        await other.put_byok_key(workspace.id, "openai", blob, gw.master.key_id)
    finally:
        await other.close()
    await asyncio.sleep(1.2)  # the authenticator checks the store's change counter once a second
    assert (await gw.post("/v1/chat/completions", body)).status == 200
    assert [r.bearer for r in gw.byok["openai"].requests] == ["sk-byok-old-0001", "sk-byok-new-0002"]
