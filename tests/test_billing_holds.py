"""Prepaid holds, budgets and key limits through a real gateway, fake upstreams and the openai SDK:
402s send nothing upstream, a balance for k holds admits at most k concurrent requests, streams are
never cut for money, and the admin API does what the CLI does."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import openai
import pytest

from proxy import appkeys
from proxy.billing.money import parse_amount
from proxy.reload import reload_config
from testkit import payloads
from testkit.upstream import Reply, Stream
from tests.conftest import MODEL, Gateway, GatewayFactory

ADMIN = {"Authorization": "Bearer admin-test-token"}
# Output at 1.00 per 1M tokens and free input: a hold is exactly max_tokens micro-units.
BILLING = {"enabled": True, "prices": {"cheap/*": {"input": "0", "output": "1.00"},
                                       "resale/*": {"input": "0", "output": "1.00"}, "byok/*": {"request": "0.0002"}}}
CHAT = [{"role": "user", "content": "hi"}]


async def admin(gw: Gateway, method: str, path: str, json: Any = None) -> tuple[int, Any]:
    async with gw.session.request(method, gw.url + path, json=json, headers=ADMIN) as resp:
        body = await resp.read()
        return resp.status, (await resp.json() if resp.content_type == "application/json" else body.decode())


async def billed(gateway: GatewayFactory, credit: str | None, **kwargs: Any) -> Gateway:
    gw = await gateway(billing=BILLING, pool=1, **kwargs)
    if credit is not None:
        status, _ = await admin(gw, "POST", "/admin/workspaces/ws/billing/credit", {"amount": credit, "note": "test"})
        assert status == 201
    return gw


async def test_no_balance_is_a_402_and_nothing_goes_upstream(gateway: GatewayFactory) -> None:
    gw = await billed(gateway, None)
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, max_tokens=1000)
    assert caught.value.status_code == 402
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert "0.000000 USD" in error["message"] and "0.001000 USD" in error["message"]  # balance and hold named
    stream_refused = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True})
    assert stream_refused.status == 402 and stream_refused.headers["Content-Type"].startswith("application/json")
    assert gw.pool[0].requests == []
    first, _ = await gw.usage_rows(2)
    assert (first["status"], first["outcome"], first["attempts"]) == (402, "rejected", 0)
    assert 'okm_billing_refusals_total{reason="insufficient_quota"} 2.0' in await gw.metrics()
    assert await gw.app[appkeys.STORE].holds_of(1) == (0, 0)


async def test_fifty_concurrent_requests_against_a_balance_for_ten_holds(gateway: GatewayFactory) -> None:
    gw = await billed(gateway, "0.010500")  # ten holds of 1000 micro-units, not eleven
    gw.pool[0].default = Reply(delay_s=0.4)  # every admitted request is still in flight when the others arrive

    async def one() -> int:
        try:
            await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, max_tokens=1000)
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert len(gw.pool[0].requests) <= 10 and statuses.count(200) == len(gw.pool[0].requests)
    assert statuses.count(200) == 10 and statuses.count(402) == 40
    store = gw.app[appkeys.STORE]
    await gw.usage_rows(50)
    account = await store.billing_account("ws")
    assert account.held_micros == 0 and await store.holds_of(1) == (0, 0)
    assert account.charges_micros == 10 * payloads.COMPLETION_TOKENS  # 5 output tokens at 1.00 per 1M each
    assert account.balance_micros == 10_500 - 10 * payloads.COMPLETION_TOKENS


async def test_a_stream_is_never_cut_for_money_and_overshoots_by_one_request(gateway: GatewayFactory) -> None:
    gw = await billed(gateway, "0.001000")  # exactly one hold
    usage = {**payloads.chat_usage_chunk(MODEL), "usage": {"prompt_tokens": 7, "completion_tokens": 3000}}
    gw.pool[0].script(Stream(pieces=(*payloads.chat_events(MODEL), payloads.sse(usage), payloads.done())))
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, max_tokens=1000,
                                                     stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == payloads.TEXT  # the upstream's whole answer, though it cost three holds' worth
    await gw.usage_rows(1)
    account = await gw.app[appkeys.STORE].billing_account("ws")
    assert account.balance_micros == 1000 - 3000  # below zero by this one request's overshoot, no more
    refused = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "max_tokens": 1})
    assert refused.status == 402 and "-0.002000 USD" in refused.error["message"]
    assert len(gw.pool[0].requests) == 1


async def test_budget_and_key_limit_refuse_before_the_upstream(gateway: GatewayFactory) -> None:
    gw = await billed(gateway, None)
    assert (await admin(gw, "PUT", "/admin/workspaces/ws/billing/mode", {"mode": "postpaid"}))[0] == 200
    ok = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "max_tokens": 1000})
    assert ok.status == 200  # postpaid: no balance needed
    await gw.usage_rows(1)
    first = await gw.app[appkeys.STORE].get_usage(ok.headers["X-Request-ID"])
    assert first is not None and first.hold_micros == 0  # postpaid without limits: no hold, no store trip
    status, balance = await admin(gw, "PUT", "/admin/workspaces/ws/billing/budget", {"budget": "0.000500"})
    assert status == 200 and balance["budget_micros"] == 500
    over = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "max_tokens": 1000})
    assert over.status == 402 and over.error["code"] == "budget_exceeded" and "0.000500 USD" in over.error["message"]
    within = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "max_tokens": 100})
    assert within.status == 200
    assert (await admin(gw, "PUT", "/admin/workspaces/ws/billing/budget", {"budget": None}))[0] == 200
    status, created = await admin(gw, "POST", "/admin/workspaces/ws/keys", {"name": "ci", "limit": "0.000100"})
    assert status == 201 and created["spend_limit_micros"] == 100
    limited = gw.sdk("ws")
    limited.api_key = created["key"]
    with pytest.raises(openai.APIStatusError) as caught:
        await limited.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, max_tokens=1000)
    assert caught.value.status_code == 402 and caught.value.body["code"] == "key_limit_exceeded"
    await limited.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, max_tokens=50)
    status, key = await admin(gw, "PUT", f"/admin/keys/{created['id']}/limit", {"limit": None})
    assert status == 200 and key["spend_limit"] is None and key["spent_micros"] == payloads.COMPLETION_TOKENS
    assert len(gw.pool[0].requests) == 3
    metrics = await gw.metrics()
    assert 'okm_billing_refusals_total{reason="budget_exceeded"} 1.0' in metrics
    assert 'okm_billing_refusals_total{reason="key_limit_exceeded"} 1.0' in metrics


async def test_admin_billing_api_and_the_statement_equals_the_export(gateway: GatewayFactory) -> None:
    gw = await billed(gateway, "5")
    for tokens in (10, 20, 30):
        await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, max_tokens=tokens)
    await gw.client.chat.completions.create(model=f"byok/openai/{MODEL}", messages=CHAT)
    await gw.usage_rows(4)
    status, bad = await admin(gw, "POST", "/admin/workspaces/ws/billing/credit", {"amount": "1e3"})
    assert status == 400 and "'1e3' is not a decimal amount" in bad["error"]["message"]
    status, bad = await admin(gw, "POST", "/admin/workspaces/ws/billing/credit", {"amount": 2.5})
    assert status == 400 and "decimal string" in bad["error"]["message"]
    status, entry = await admin(gw, "POST", "/admin/workspaces/ws/billing/credit",
                                {"amount": "-1", "note": "refund reversed", "actor": "ops-jane"})
    assert status == 201 and entry["kind"] == "adjustment" and entry["actor"] == "admin-api:ops-jane"
    status, balance = await admin(gw, "GET", "/admin/workspaces/ws/billing")
    expected = 4_000_000 - 3 * payloads.COMPLETION_TOKENS - 200
    assert status == 200 and balance["balance_micros"] == expected and balance["held_micros"] == 0
    status, ledger = await admin(gw, "GET", "/admin/workspaces/ws/billing/ledger")
    assert [e["amount"] for e in ledger["data"]] == ["5.000000", "-1.000000"]
    month = balance["month"]
    status, statement = await admin(gw, "GET", f"/admin/workspaces/ws/billing/statement?month={month}")
    assert status == 200 and statement["closing_balance_micros"] == expected
    assert {(line["plan"], line["requests"]) for line in statement["lines"]} == {("cheap", 3), ("byok", 1)}
    status, exported = await admin(gw, "GET", "/admin/workspaces/ws/usage/export?format=csv")
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert status == 200 and len(rows) == 4
    assert sum(parse_amount(r["cost"]) for r in rows) == statement["charges_micros"]
    status, prices = await admin(gw, "GET", "/admin/billing/prices")
    assert status == 200 and {p["model"] for p in prices["data"]} == {"cheap/*", "resale/*", "byok/*"}
    assert (await admin(gw, "GET", "/admin/workspaces/ws/usage/export?format=xml"))[0] == 400
    assert (await admin(gw, "GET", "/admin/workspaces/nope/billing"))[0] == 404


async def test_prices_reload_and_old_rows_keep_theirs(gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await billed(gateway, "5")
    for name, value in gw.env.items():  # a reload reads the process environment, as after SIGHUP
        monkeypatch.setenv(name, value)
    await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT)
    source = gw.config.source
    source.write_text(source.read_text().replace("output: '1.00'", "output: '3.00'"), encoding="utf-8")
    result = await reload_config(gw.app)
    assert result.ok, result.message
    await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT)
    await gw.usage_rows(2)
    rows = await gw.app[appkeys.STORE].fetchall("SELECT price_output, cost_micros FROM usage ORDER BY started_at")
    assert [tuple(r) for r in rows] == [(1_000_000, 5), (3_000_000, 15)]
