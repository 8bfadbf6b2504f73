"""Prometheus families, exact metric movements per request fate, the access log, X-Request-Id and
redaction: what an operator scraping /metrics or reading the journal sees."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.redaction import redact
from proxy.store.keys import generate_api_key
from proxy.telemetry.metrics import Metrics
from tests.ops_support import (
    ADMIN_TOKEN,
    PEPPER,
    POOL_KEY,
    RESALE_KEY,
    app_gateway,
    bearer,
    chat,
    config_data,
    fake_upstream,
    make_keys,
    process_gateway,
    read_stream,
    sample,
    usage_rows,
    write_config,
)

FAMILIES = {
    "okm_requests_total": "counter", "okm_request_duration_seconds": "histogram",
    "okm_time_to_first_byte_seconds": "histogram", "okm_upstream_attempts_total": "counter",
    "okm_fallbacks_total": "counter", "okm_active_streams": "gauge", "okm_tokens_total": "counter",
    "okm_pool_account_healthy": "gauge", "okm_auth_failures_total": "counter",
    "okm_client_disconnects_total": "counter", "okm_streams_interrupted_total": "counter",
    "okm_inband_errors_total": "counter", "okm_malformed_events_total": "counter", "okm_requests_shed_total": "counter",
    "okm_secrets_masked_total": "counter",
    "okm_usage_write_failures_total": "counter", "okm_config_reloads_total": "counter",
    "okm_requests_in_flight": "gauge", "okm_draining": "gauge", "okm_worker_restarts_total": "counter",
    "okm_cost_micros_total": "counter", "okm_billing_refusals_total": "counter",
}
CHAT = "chat/completions"


async def scrape(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


class Delta:
    """Metric values before and after an action, read from the real /metrics text."""

    def __init__(self, before: str, after: str) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return sample(self.after, name, **labels) - sample(self.before, name, **labels)


async def test_every_family_is_declared_before_the_first_request(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up))
        await make_keys(tmp_path / "okm.sqlite3", "acme")
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            text = await scrape(session, url)
    for family, kind in FAMILIES.items():
        assert f"# TYPE {family} {kind}" in text, family
        assert f"# HELP {family} " in text, family
    # pool health is read live at scrape time: the configured account shows as healthy at once
    assert sample(text, "okm_pool_account_healthy", account="pool-ok") == 1


async def test_metrics_move_by_exactly_one_request(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            endpoint = url + "/v1/chat/completions"
            t0 = await scrape(session, url)
            async with session.post(endpoint, json=chat("resale/fast"), headers=bearer(key)) as r:
                assert r.status == 200
            t1 = await scrape(session, url)
            async with session.post(endpoint, json=chat("resale/slow-3-50", stream=True), headers=bearer(key)) as r:
                assert (await read_stream(r))[-1] == b"[DONE]"
            t2 = await scrape(session, url)
            for bad in ({}, bearer(generate_api_key()[1])):  # no key; a well-formed key nobody issued
                async with session.post(endpoint, json=chat("resale/fast"), headers=bad) as r:
                    assert r.status == 401
            t3 = await scrape(session, url)

    ok = Delta(t0, t1)
    assert ok("okm_requests_total", lane="resale", endpoint=CHAT, status="200") == 1
    assert ok("okm_request_duration_seconds_count", lane="resale", endpoint=CHAT) == 1
    assert ok("okm_time_to_first_byte_seconds_count", lane="resale", endpoint=CHAT) == 1
    assert ok("okm_upstream_attempts_total", lane="resale", upstream="fake", outcome="success") == 1
    assert ok("okm_tokens_total", lane="resale", kind="prompt") == 7
    assert ok("okm_tokens_total", lane="resale", kind="completion") == 2
    assert ok("okm_fallbacks_total", lane="resale") == 0

    stream = Delta(t1, t2)
    assert stream("okm_requests_total", lane="resale", endpoint=CHAT, status="200") == 1
    assert stream("okm_tokens_total", lane="resale", kind="completion") == 3
    assert sample(t2, "okm_active_streams", lane="resale") == 0

    auth = Delta(t2, t3)
    assert auth("okm_auth_failures_total", reason="missing") == 1
    assert auth("okm_auth_failures_total", reason="unknown") == 1
    assert auth("okm_requests_total", lane="none", endpoint=CHAT, status="401") == 2
    assert auth("okm_upstream_attempts_total", lane="resale", upstream="fake", outcome="success") == 0


async def test_client_disconnect_mid_stream(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            before = await scrape(session, url)
            async with aiohttp.ClientSession() as leaving:
                body = chat("resale/slow-40-100", stream=True)
                response = await leaving.post(url + "/v1/chat/completions", json=body, headers=bearer(key))
                await response.content.readuntil(b"\n\n")  # the first event arrived; now leave
                during = await scrape(session, url)
                response.close()
            for _ in range(100):
                after = await scrape(session, url)
                if Delta(before, after)("okm_client_disconnects_total", phase="streaming"):
                    break
                await asyncio.sleep(0.02)
    assert sample(during, "okm_active_streams", lane="resale") == 1
    assert sample(during, "okm_requests_in_flight") == 1
    d = Delta(before, after)
    assert d("okm_client_disconnects_total", phase="streaming") == 1
    assert d("okm_requests_total", lane="resale", endpoint=CHAT, status="200") == 1  # the 200 had gone out
    assert sample(after, "okm_active_streams", lane="resale") == 0
    assert sample(after, "okm_requests_in_flight") == 0
    rows = usage_rows(tmp_path / "okm.sqlite3")
    assert [r["outcome"] for r in rows] == ["client_cancelled"]


async def test_upstream_429_fails_over_inside_the_pool(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        pool = [
            # weights make the limited account the first choice (all but certainly)
            {"name": "pool-limited", "base_url": f"{up}/limited/v1", "api_key_env": "POOL_KEY", "weight": 1000,
             "models": ["fast"]},
            {"name": "pool-ok", "base_url": f"{up}/ok/v1", "api_key_env": "POOL_KEY", "weight": 0.001,
             "models": ["fast"]},
        ]
        data = config_data(up)
        data["lanes"]["cheap"] = {"pool": pool}
        config = write_config(tmp_path, data)
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            t0 = await scrape(session, url)
            async with session.post(url + "/v1/chat/completions", json=chat("cheap/fast"), headers=bearer(key)) as r:
                assert r.status == 200
            t1 = await scrape(session, url)
            async with session.post(url + "/v1/chat/completions", json=chat("cheap/fast"), headers=bearer(key)) as r:
                assert r.status == 200
            t2 = await scrape(session, url)
    first = Delta(t0, t1)
    assert first("okm_upstream_attempts_total", lane="cheap", upstream="pool-limited", outcome="rate_limited") == 1
    assert first("okm_upstream_attempts_total", lane="cheap", upstream="pool-ok", outcome="success") == 1
    assert first("okm_fallbacks_total", lane="cheap") == 1
    assert first("okm_requests_total", lane="cheap", endpoint=CHAT, status="200") == 1
    assert sample(t1, "okm_pool_account_healthy", account="pool-limited") == 0  # cooling down (Retry-After 30)
    assert sample(t1, "okm_pool_account_healthy", account="pool-ok") == 1
    second = Delta(t1, t2)  # the cooled-down account is skipped: no second failover
    assert second("okm_fallbacks_total", lane="cheap") == 0
    assert second("okm_upstream_attempts_total", lane="cheap", upstream="pool-ok", outcome="success") == 1


async def test_request_id_on_every_answer_and_in_the_usage_row(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            ids = {}
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast"), headers=bearer(key)) as r:
                ids["json"] = r.headers["X-Request-Id"]
            async with session.post(url + "/v1/chat/completions", json=chat("resale/slow-3-50", stream=True),
                                    headers=bearer(key)) as r:
                ids["stream"] = r.headers["X-Request-Id"]
                await r.read()
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast")) as r:
                ids["error"] = r.headers["X-Request-Id"]
            async with session.get(url + "/healthz") as r:
                ids["health"] = r.headers["X-Request-Id"]
    assert len(set(ids.values())) == 4 and all(i.startswith("req_") for i in ids.values())
    rows = {r["request_id"]: r for r in usage_rows(tmp_path / "okm.sqlite3")}
    assert rows[ids["json"]]["stream"] == 0 and rows[ids["stream"]]["stream"] == 1


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("key okm_AAAAAAAAAAAA_" + "s3cr3t" * 8, "s3cr3t"),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ('{"api_key": "hunter2hunter2"}', "hunter2hunter2"),
        ("upstream said sk-proj-abcdefghijkl", "abcdefghijkl"),
        ("token=tok_0123456789", "tok_0123456789"),
    ],
)
def test_redact_masks_credential_shapes(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_redact_masks_configured_secret_values() -> None:
    assert redact("dial with plain-looking-value-123 now", ["plain-looking-value-123"]) == "dial with [redacted] now"


async def test_no_secret_or_prompt_in_logs_or_metrics_and_metrics_on_its_own_listener(tmp_path: Path) -> None:
    prompt = "canary-prompt-text-e3b0c442"
    unknown = generate_api_key()[1]
    async with fake_upstream() as up:
        data = config_data(up, metrics={"listen": {"host": "127.0.0.1", "port": 0}})
        config = write_config(tmp_path, data)
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with process_gateway(config) as gw, aiohttp.ClientSession() as session:
            endpoint = gw.url + "/v1/chat/completions"
            body = {**chat("resale/fast"), "messages": [{"role": "user", "content": prompt}]}
            async with session.post(endpoint, json=body, headers=bearer(key)) as r:
                assert r.status == 200
                completion = (await r.json())["choices"][0]["message"]["content"]
            async with session.post(endpoint, json={**body, "stream": True}, headers=bearer(key)) as r:
                await r.read()
            probes = [bearer(unknown), {"api-key": unknown}, {"Authorization": f"Basic {key}"}, bearer(key[:-3])]
            for headers in probes:
                async with session.post(endpoint, json=body, headers=headers) as r:
                    assert r.status == 401
            async with session.post(endpoint + f"?api_key={key}", json=body) as r:
                assert r.status == 401
            async with session.get(gw.url + "/admin/workspaces", headers=bearer(ADMIN_TOKEN + "x")) as r:
                assert r.status in (401, 403)
            async with session.get(gw.url + "/metrics") as r:
                assert r.status == 404  # metrics.listen set: only on its own listener
            metrics_text = await scrape(session, gw.metrics_url)
            gw.signal(signal.SIGTERM)
            assert await gw.wait() == 0
    output = gw.output
    assert sample(metrics_text, "okm_auth_failures_total", reason="unknown") >= 1
    for secret in (key, key.split("_")[-1], unknown, unknown.split("_")[-1], PEPPER, ADMIN_TOKEN, POOL_KEY, RESALE_KEY,
                   prompt, completion.strip()):
        assert secret not in output, secret
        assert secret not in metrics_text, secret
    access = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    served = [a for a in access if a["status"] == 200]
    assert len(access) == 7 and len(served) == 2  # one line per proxied request
    for line in served:
        assert line["request_id"].startswith("req_") and line["lane"] == "resale" and line["model"] == "resale/fast"
        assert line["upstream"] == "fake" and line["outcome"] == "ok" and line["prompt_tokens"] == 7
        assert line["ttfb_ms"] > 0 and line["duration_ms"] >= line["ttfb_ms"] and line["completion_tokens"] == 2
    assert {a["request_id"] for a in served} <= {r["request_id"] for r in usage_rows(tmp_path / "okm.sqlite3")}


def test_metrics_doc_names_every_family() -> None:
    declared = {m.name for m in Metrics().registry.collect()}  # counters without their _total suffix
    assert declared == {name.removesuffix("_total") for name in FAMILIES}
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    assert not [name for name in FAMILIES if f"`{name}`" not in doc]


async def test_usage_write_failures_are_counted(tmp_path: Path) -> None:
    async with fake_upstream() as up:
        config = write_config(tmp_path, config_data(up))
        key = (await make_keys(tmp_path / "okm.sqlite3", "acme"))["acme"]
        async with app_gateway(config) as (url, _), aiohttp.ClientSession() as session:
            before = await scrape(session, url)
            with sqlite3.connect(tmp_path / "okm.sqlite3") as db:  # the store breaks under the gateway
                db.execute("ALTER TABLE usage RENAME TO usage_gone")
            async with session.post(url + "/v1/chat/completions", json=chat("resale/fast"), headers=bearer(key)) as r:
                assert r.status == 200  # a lost usage row never fails the request
            for _ in range(50):
                after = await scrape(session, url)
                if Delta(before, after)("okm_usage_write_failures_total") >= 2:
                    break
                await asyncio.sleep(0.02)
    assert Delta(before, after)("okm_usage_write_failures_total") == 2  # the admission row and the final row
