"""Tenant isolation and secret hygiene through a real gateway: interleaved BYOK traffic from two
workspaces, an auth cache under churn, ciphertexts moved between rows, and canary secrets hunted in
logs, /metrics, every answer and the SQLite files.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import zlib
from typing import Any

import orjson
import pytest

from proxy import appkeys
from proxy.store import keys
from proxy.types import Secret
from testkit import payloads
from testkit.upstream import End, Reply, Stream
from tests.conftest import MODEL, PEPPER, Answer, Gateway, pool_key, resale_key
from tests.fakes.hostile import CLOSE, metric, scrape

BYOK = {
    "alpha": {"openai": "sk-canary-byok-alpha-openai-7f3a9c", "acme": "acme-canary-alpha-91d2e0"},
    "beta": {"openai": "sk-canary-byok-beta-openai-c4b812", "acme": "acme-canary-beta-5a66f1"},
}
PROVIDERS = ("openai", "acme")


def chat_body(model: str, marker: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": marker}], "stream": stream}


async def test_2000_interleaved_byok_requests_each_carry_their_own_workspaces_key(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=0, resale=1, byok=PROVIDERS, workspaces=BYOK)
    ids = {name: (await gw.app[appkeys.STORE].get_workspace(name)).id for name in BYOK}
    plan = [(("alpha", "beta")[i % 2], PROVIDERS[(i // 2) % 2], i % 7 == 0) for i in range(2000)]
    request_ids: dict[str, tuple[str, str]] = {}

    async def call(i: int) -> None:
        workspace, provider, stream = plan[i]
        body = chat_body(f"byok/{provider}/{MODEL}", f"{workspace}/{provider}/{i}", stream)
        answer = await gw.post("/v1/chat/completions", body, workspace=workspace)
        assert answer.status == 200, answer.body[:200]
        assert (b"[DONE]" in answer.body) is stream
        request_ids[{k.lower(): v for k, v in answer.headers.items()}["x-request-id"]] = (workspace, provider)

    for start in range(0, len(plan), 200):
        await asyncio.gather(*(call(i) for i in range(start, start + 200)))
    workspace_keys = set(gw.keys.values())
    for provider in PROVIDERS:
        received = gw.byok[provider].requests
        assert len(received) == 1000
        for request in received:
            workspace, sent_provider, _ = request.body["messages"][0]["content"].split("/")
            assert sent_provider == provider and request.bearer == BYOK[workspace][provider]
            assert request.headers.get("api-key") is None and request.bearer not in workspace_keys
    rows = await gw.usage_rows(2000, within_s=10)
    assert len(rows) == 2000 and {r["outcome"] for r in rows} == {"ok"}
    for row in rows:
        workspace, provider = request_ids[row["request_id"]]
        assert (row["workspace_id"], row["upstream"]) == (ids[workspace], f"byok-{provider}")


async def test_auth_cache_never_answers_for_another_workspace_under_churn(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=PROVIDERS,
                                workspaces={"alpha": {"openai": BYOK["alpha"]["openai"]},
                                            "beta": {"acme": BYOK["beta"]["acme"]}})
    store, auth = gw.app[appkeys.STORE], gw.app[appkeys.AUTH]
    live = {"alpha": [gw.keys["alpha"]], "beta": [gw.keys["beta"]]}
    expect = {"alpha": f"byok/openai/{MODEL}", "beta": f"byok/acme/{MODEL}"}
    wrong = {"alpha": f"byok/acme/{MODEL}", "beta": f"byok/openai/{MODEL}"}

    async def models(key: str) -> set[str]:
        async with gw.session.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
            return {m["id"] for m in (await resp.json())["data"]}

    async def churn() -> None:
        for name in ("alpha", "beta"):
            _, key = await store.create_api_key(name, Secret(PEPPER))  # bumps auth_version: the cache reloads
            fresh[name] = key.reveal()

    for _ in range(15):
        fresh: dict[str, str] = {}
        calls = [(name, key) for name in live for key in live[name]] * 3
        results, _ = await asyncio.gather(asyncio.gather(*(models(key) for _, key in calls)), churn())
        for (name, _), ids in zip(calls, results, strict=True):
            assert expect[name] in ids and wrong[name] not in ids
        await auth.refresh()  # the new keys join the next round
        for name, key in fresh.items():
            live[name].append(key)


async def test_a_key_created_by_the_admin_api_works_for_concurrent_first_requests(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=())
    admin = {"Authorization": f"Bearer {gw.config.admin_token.reveal()}"}
    async with gw.session.post(f"{gw.url}/admin/workspaces/ws/keys", json={}, headers=admin) as resp:
        assert resp.status == 201
        key = (await resp.json())["key"]

    async def status() -> int:
        async with gw.session.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status

    assert await asyncio.gather(*(status() for _ in range(20))) == [200] * 20


def forged(key_of: str, secret_of: str) -> str:
    """One workspace's key id with another key's secret, re-checksummed so it is well-formed."""
    alphabet = keys.ALPHABET
    body = key_of[: len(keys.PREFIX) + keys.KEY_ID_LEN + 1] + secret_of[len(keys.PREFIX) + keys.KEY_ID_LEN + 1:
                                                                      -keys.CHECKSUM_LEN]
    value, digits = zlib.crc32(body.encode()), []
    while value:
        value, rem = divmod(value, 62)
        digits.append(alphabet[rem])
    return body + "".join(reversed(digits)).rjust(keys.CHECKSUM_LEN, alphabet[0])


async def test_a_key_id_with_another_keys_secret_is_refused(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=(), workspaces={"alpha": None, "beta": None})
    for victim, thief in (("alpha", "beta"), ("beta", "alpha")):
        key = forged(gw.keys[victim], gw.keys[thief])
        assert keys.is_well_formed(key) and key not in gw.keys.values()
        answer = await gw.post("/v1/chat/completions", chat_body(f"cheap/{MODEL}", "x"),
                               headers={"Authorization": f"Bearer {key}", **CLOSE})
        assert answer.status == 401 and answer.error["code"] == "invalid_api_key"
    assert not gw.pool[0].requests
    assert metric(await scrape(gw.url, gw.session), "okm_auth_failures_total", reason="unknown") == 2


async def test_a_ciphertext_copied_to_another_workspace_does_not_decrypt(gateway: Any,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    gw: Gateway = await gateway(pool=0, resale=1, byok=("openai",),
                                workspaces={"alpha": {"openai": BYOK["alpha"]["openai"]},
                                            "beta": {"openai": BYOK["beta"]["openai"]}})
    store = gw.app[appkeys.STORE]
    alpha, beta = (await store.get_workspace("alpha")), (await store.get_workspace("beta"))
    stolen = await store.get_byok_key(alpha.id, "openai")
    await store.put_byok_key(beta.id, "openai", stolen, gw.master.key_id)
    answer = await gw.post("/v1/chat/completions", chat_body(f"byok/openai/{MODEL}", "x"), workspace="beta",
                           headers=CLOSE)
    assert answer.status >= 500 and "cannot be decrypted" in answer.error["message"]
    assert "store it again" in answer.error["message"]
    assert not gw.byok["openai"].requests, "a moved ciphertext reached the upstream"
    for secret in BYOK["alpha"]["openai"], BYOK["beta"]["openai"]:
        assert secret not in answer.body.decode() and secret not in caplog.text
    ok = await gw.post("/v1/chat/completions", chat_body(f"byok/openai/{MODEL}", "x"), workspace="alpha")
    assert ok.status == 200 and gw.byok["openai"].requests[0].bearer == BYOK["alpha"]["openai"]


# --- canaries ------------------------------------------------------------------------------------


async def canary_workload(gw: Gateway) -> list[Answer]:
    """Traffic that handles every secret, including errors that quote them."""
    answers: list[Answer] = []
    post = gw.post
    for model in (f"cheap/{MODEL}", f"resale/{MODEL}", f"byok/openai/{MODEL}"):
        for stream in (False, True):
            answers.append(await post("/v1/chat/completions", chat_body(model, "hello", stream), workspace="alpha"))
    gw.pool[0].script(
        Reply(401, payloads.openai_error(f"Incorrect API key provided: {pool_key(0)}", code="invalid_api_key")))
    answers.append(await post("/v1/chat/completions", chat_body(f"cheap/{MODEL}", "x"), workspace="alpha"))
    gw.resale[0].script(
        Reply(400, payloads.openai_error(f"bad request for key {resale_key(0)} (org-Zz9Yy8Xx7Ww6)")),
        Reply(500, f"<html>upstream {resale_key(0)} broke</html>", content_type="text/html"),
        Stream((*payloads.chat_events(MODEL)[:2],
                payloads.sse(payloads.openai_error(f"overloaded; key {resale_key(0)}", "server_error")))),
        Stream((*payloads.chat_events(MODEL)[:2],), end=End.RESET))
    for stream in (False, False, True, True):
        answers.append(await post("/v1/chat/completions", chat_body(f"resale/{MODEL}", "x", stream), workspace="beta"))
    gw.byok["openai"].script(Reply(401, payloads.openai_error(
        f"Incorrect API key provided: {BYOK['alpha']['openai']}", code="invalid_api_key")))
    answers.append(await post("/v1/chat/completions", chat_body(f"byok/openai/{MODEL}", "x"), workspace="alpha"))
    for headers in ({"Authorization": "Bearer " + gw.keys["alpha"][:-1] + "Q"},
                    {"Authorization": "Bearer " + pool_key(0)}, {"api-key": BYOK["beta"]["openai"]}):
        answers.append(await post("/v1/chat/completions", chat_body(f"cheap/{MODEL}", "x"), headers=headers))
    async with gw.session.post(f"{gw.url}/v1/chat/completions?api_key={gw.keys['beta']}", json={},
                               headers=gw.auth("beta")) as resp:
        answers.append(Answer(resp.status, dict(resp.headers), await resp.read()))
    answers.append(await post("/v1/chat/completions", {**chat_body(f"resale/{MODEL}", "x"),
                                                       "extra": {"api_key": BYOK["beta"]["acme"]}}, workspace="beta"))
    admin = {"Authorization": f"Bearer {gw.config.admin_token.reveal()}"}
    async with gw.session.put(f"{gw.url}/admin/workspaces/beta/byok/acme", json={"key": BYOK["beta"]["acme"]},
                              headers=admin) as resp:
        assert resp.status == 200 and BYOK["beta"]["acme"].encode() not in await resp.read()
    async with gw.session.get(f"{gw.url}/admin/workspaces", headers=gw.auth("alpha")) as resp:
        answers.append(Answer(resp.status, dict(resp.headers), await resp.read()))
    answers.append(await post("/v1/chat/completions", chat_body(f"byok/acme/{MODEL}", "x"), workspace="beta"))
    assert gw.byok["acme"].requests[-1].bearer == BYOK["beta"]["acme"]
    return answers


async def test_canary_secrets_never_leak(gateway: Any, caplog: pytest.LogCaptureFixture,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level("DEBUG")
    gw: Gateway = await gateway(pool=1, resale=1, byok=PROVIDERS,
                                workspaces={"alpha": {"openai": BYOK["alpha"]["openai"]}, "beta": {}})
    answers = await canary_workload(gw)
    assert any(a.status >= 400 for a in answers) and any(a.status == 200 for a in answers)
    master = gw.config.byok_master_key.reveal()
    canaries = {
        "workspace key alpha": gw.keys["alpha"], "workspace key beta": gw.keys["beta"],
        "pool key": pool_key(0), "resale key": resale_key(0), "cheapai key": "sk-cheapai-operatorsecret",
        "pepper": PEPPER, "admin token": gw.config.admin_token.reveal(), "master key": master,
        "master key bytes (hex)": base64.b64decode(master).hex(),
        **{f"byok {w}/{p}": k for w, per in BYOK.items() for p, k in per.items()},
    }
    places = {
        "answers": b"\n".join(a.body + str(a.headers).encode() for a in answers).decode(errors="replace"),
        "logs": caplog.text + "".join(capsys.readouterr()),
        "metrics": await scrape(gw.url, gw.session),
    }
    store_bytes = b""
    await gw.usage_rows(len(answers))  # settled: the usage writer is idle
    for suffix in ("", "-wal", "-shm"):
        path = gw.store_path.with_name(gw.store_path.name + suffix)
        if path.exists():
            store_bytes += path.read_bytes()
    assert gw.store_path.with_name(gw.store_path.name + "-wal").exists()
    leaks = [f"{name} in {where}" for name, secret in canaries.items() for where, text in places.items()
             if secret in text]
    leaks += [f"{name} in the SQLite files" for name, secret in canaries.items()
              if secret.encode() in store_bytes or secret.encode("utf-16-le") in store_bytes]
    assert "org-Zz9Yy8Xx7Ww6" not in places["answers"]  # operator account ids are masked too
    assert not leaks, leaks


@pytest.mark.parametrize("n", [2])
async def test_interleaved_streams_of_two_workspaces_never_cross(gateway: Any, n: int) -> None:
    """Streams of both workspaces interleaved event by event: each client gets only its own events."""
    gw: Gateway = await gateway(pool=0, resale=1, byok=("openai",), workspaces=BYOK)
    fake = gw.byok["openai"]
    for i in range(40):
        events = [payloads.sse(payloads.chat_chunk(MODEL, {"content": f"#{i}.{j}"})) for j in range(5)]
        fake.script(Stream((*itertools.chain.from_iterable((e, 0.005) for e in events), payloads.done())))

    async def call(i: int) -> tuple[str, bytes]:
        workspace = ("alpha", "beta")[i % n]
        answer = await gw.post("/v1/chat/completions", chat_body(f"byok/openai/{MODEL}", f"{workspace}", True),
                               workspace=workspace)
        return workspace, answer.body

    results = await asyncio.gather(*(call(i) for i in range(40)))
    by_request = {r.body["messages"][0]["content"]: r.bearer for r in fake.requests}
    assert set(by_request) == {"alpha", "beta"} and all(BYOK[w]["openai"] == k for w, k in by_request.items())
    for _, body in results:  # every stream is one script, whole: no event of another stream got mixed in
        contents = [e["choices"][0]["delta"]["content"] for e in map(orjson.loads, _datas(body))]
        assert len({c.split(".")[0] for c in contents}) == 1 and len(contents) == 5


def _datas(body: bytes) -> list[bytes]:
    return [payloads.data_of(b) for b in payloads.blocks(body) if payloads.data_of(b) != b"[DONE]"]


# --- slow bodies: one tenant cannot take every global slot ---------------------------------------

ADMIN = {"Authorization": "Bearer admin-test-token"}


async def _slow_post(gw: Gateway, key: str, declared: int = 1000, sent: int = 25) -> tuple[asyncio.StreamReader,
                                                                                           asyncio.StreamWriter]:
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {declared}\r\n\r\n".encode() + b" " * sent)
    await writer.drain()
    return reader, writer


async def _status_within(reader: asyncio.StreamReader, seconds: float) -> int | None:
    try:
        async with asyncio.timeout(seconds):
            line = await reader.readline()
    except TimeoutError:
        return None
    return int(line.split()[1]) if line else None


@pytest.mark.parametrize("rpm", [None, 1])
async def test_slow_bodies_from_one_workspace_leave_room_for_others(gateway: Any, rpm: int | None) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=(), workspaces={"slow": None, "other": None},
                                limits={"max_concurrent_requests": 4, "client_body_timeout_s": 5})
    if rpm is not None:
        async with gw.session.patch(f"{gw.url}/admin/workspaces/slow/limits", json={"rpm_limit": rpm},
                                    headers=ADMIN) as r:
            assert r.status == 200
        async with gw.session.get(f"{gw.url}/v1/models", headers=gw.auth("slow")) as r:
            assert r.status == 200  # the auth cache has the new limit before the burst
    conns = [await _slow_post(gw, gw.keys["slow"]) for _ in range(4)]
    try:
        statuses = [await _status_within(reader, 0.5) for reader, _ in conns]
        held = 1 if rpm == 1 else 2  # one minute token; else half of max_concurrent_requests
        assert sorted(statuses, key=str) == [429] * (4 - held) + [None] * held, statuses
        answer = await gw.post("/v1/chat/completions", chat_body(f"cheap/{MODEL}", "hi"), workspace="other")
        assert answer.status == 200, answer.body[:300]
        text = await scrape(gw.url, gw.session)
        reason = "workspace_rpm" if rpm == 1 else "workspace_concurrency"
        assert metric(text, "okm_requests_shed_total", reason=reason) == 4 - held
        assert metric(text, "okm_requests_shed_total", reason="overloaded") == 0
    finally:
        for _, writer in conns:
            writer.close()


# --- canary sweep: a hostile upstream echoes every operator secret in every way ------------------

SWEEP_LANES = {"cheap": f"cheap/{MODEL}", "resale": f"resale/{MODEL}", "byok": f"byok/openai/{MODEL}"}


def operator_canaries(gw: Gateway) -> list[str]:
    """Every secret the operator's config holds, listed independently of the gateway's own list."""
    master = gw.config.byok_master_key
    assert master is not None
    return [pool_key(0), resale_key(0), "sk-cheapai-operatorsecret", "admin-test-token", PEPPER, master.reveal()]


def hostile_echoes(secrets: list[str]) -> dict[str, tuple[str, Any]]:
    """name → (endpoint path, what the upstream answers), each carrying every secret."""
    quoted = " ".join(f"Authorization: Bearer {s}" for s in secrets)
    chunk = payloads.chat_chunk(MODEL, {"content": quoted})
    completion = payloads.chat_completion(MODEL)
    return {
        "200-with-error-object": ("chat", Reply(200, {"error": {"message": quoted, "type": "x", "param": None,
                                                               "code": None}})),
        "200-extra-field": ("chat", Reply(200, {**completion, "debug": {"echo": quoted, "keys": secrets}})),
        "400-error": ("chat", Reply(400, {"error": {"message": quoted, "type": "invalid_request_error"},
                                          "extra": secrets})),
        "header": ("chat", Reply(200, completion, headers={"X-Echo": quoted, "X-Debug-Auth": secrets[0]})),
        "non-json-data-line": ("stream", Stream((payloads.sse(chunk), f"data: {quoted}\n\n".encode(),
                                                 payloads.done()))),
        "content-event": ("stream", Stream((payloads.sse(chunk), payloads.done()))),
        "comment-line": ("stream", Stream((f": {quoted}\n\n".encode(), payloads.sse(chunk), payloads.done()))),
        "inband-error-event": ("stream", Stream((payloads.sse(chunk), payloads.sse({"error": {"message": quoted}})))),
        "stream-header": ("stream", Stream((payloads.sse(chunk), payloads.done()), headers={"X-Echo": quoted})),
    }


async def test_canary_sweep_no_operator_secret_reaches_any_answer(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=("openai",))
    secrets = operator_canaries(gw)
    fakes = {"cheap": gw.pool[0], "resale": gw.resale[0], "byok": gw.byok["openai"]}
    leaks: list[str] = []
    sent = 0
    for lane, model in SWEEP_LANES.items():
        for name, (kind, behaviour) in hostile_echoes(secrets).items():
            fakes[lane].script(behaviour)
            answer = await gw.post("/v1/chat/completions", {"model": model, "messages": [{"role": "user",
                                   "content": "hi"}], "stream": kind == "stream"}, headers=CLOSE)
            sent += 1
            seen = answer.body + "\n".join(f"{k}: {v}" for k, v in answer.headers.items()).encode()
            leaks += [f"{lane}/{name}: {s[:12]}…" for s in secrets if s.encode() in seen]
    # the Responses stream built from a non-stream answer (resale, responses_stream: false)
    gw.nostream.script(Reply(200, payloads.response_object(MODEL, text=" ".join(secrets))))
    answer = await gw.post("/v1/responses", {"model": "resale/gpt-nostream", "input": "hi", "stream": True})
    leaks += [f"synthesized: {s[:12]}…" for s in secrets if s.encode() in answer.body]
    # Responses streams (event: lines) and embeddings, on every lane
    quoted = " ".join(secrets)
    delta = payloads.sse({"type": "response.output_text.delta", "delta": quoted, "sequence_number": 1},
                         event="response.output_text.delta")
    done = payloads.sse({"type": "response.completed", "response": payloads.response_object(MODEL, text=quoted),
                         "sequence_number": 2}, event="response.completed")
    for lane, model in SWEEP_LANES.items():
        fakes[lane].script(Stream((delta, done)))
        answer = await gw.post("/v1/responses", {"model": model, "input": "hi", "stream": True})
        fakes[lane].script(Reply(200, {"object": "list", "data": [], "model": quoted, "usage": {"echo": secrets}}))
        embedded = await gw.post("/v1/embeddings", {"model": model, "input": "hi"})
        for name, got in (("responses-stream", answer), ("embeddings", embedded)):
            seen = got.body + "\n".join(f"{k}: {v}" for k, v in got.headers.items()).encode()
            leaks += [f"{lane}/{name}: {s[:12]}…" for s in secrets if s.encode() in seen]
        sent += 2
    assert not leaks, leaks
    text = await scrape(gw.url, gw.session)
    assert sum(metric(text, "okm_secrets_masked_total", where=w) for w in ("body", "event", "header")) >= sent


# --- what a Budget request may carry to a pooled account -----------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"])
async def test_budget_requests_reach_the_pool_with_allowed_fields_only(gateway: Any, path: str) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=())
    marker = "ident-canary-7731"
    base: dict[str, Any] = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi", "name": marker}]},
                            "/v1/responses": {"input": "hi"}, "/v1/embeddings": {"input": "hi"}}[path]
    body = {
        "model": f"cheap/{MODEL}", **base,
        "extra_body": {"user": marker, "metadata": {"m": marker}, "safety_identifier": marker,
                       "prompt_cache_key": marker, "previous_response_id": marker},
        "user_id": marker, "end_user": marker, "User": marker, "litellm_metadata": {"who": marker},
        "client_metadata": {"installation_id": marker, "session_id": marker},  # what Codex sends
        "metadata": {"m": marker}, "user": marker,
    }
    headers = {"OpenAI-Beta": f"assistants=v2 {gw.key}", "Accept": f"application/json, {marker}/x"}
    answer = await gw.post(path, body, headers=headers)
    assert answer.status == 200, answer.body[:300]
    received = gw.pool[0].requests[0]
    assert marker not in orjson.dumps(received.body).decode()
    assert gw.key not in str(dict(received.headers)) and marker not in str(dict(received.headers))
    assert set(received.body) <= {"model", "store", "messages", "input", "stream", "stream_options", "include"}


@pytest.mark.parametrize("extra", [{"background": True}, {"prompt": {"id": "pmpt_abc", "version": "2"}}])
async def test_budget_refuses_responses_that_need_stored_state(gateway: Any, extra: dict[str, Any]) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=())
    answer = await gw.post("/v1/responses", {"model": f"cheap/{MODEL}", "input": "hi", **extra})
    assert answer.status == 400 and answer.error["code"] == "stateful_request_not_allowed"
    assert answer.error["param"] == next(iter(extra)) and not gw.pool[0].requests


ACCOUNT_IDS = ("org_01hx7kq9m2n3p4q5r6s7t8v9w", "b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "RTPO****…786a",
               "xai-AbC1****wXyZ", "xai-0123456789abcdefABCDEF")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("lane", ["cheap", "resale"])
async def test_non_openai_account_identifiers_are_masked_in_upstream_errors(gateway: Any, lane: str,
                                                                            stream: bool) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=())
    fake = gw.pool[0] if lane == "cheap" else gw.resale[0]
    message = (f"Organization {ACCOUNT_IDS[0]} (project {ACCOUNT_IDS[1]}) over quota; key gsk_{ACCOUNT_IDS[2]} "
               f"and {ACCOUNT_IDS[3]}, {ACCOUNT_IDS[4]}")
    error = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "quota"}}
    chunk = payloads.sse(payloads.chat_chunk(MODEL, {"content": "x"}))
    fake.script(Stream((chunk, payloads.sse(error))) if stream else Reply(400, error))
    answer = await gw.post("/v1/chat/completions", {"model": f"{lane}/{MODEL}", "messages": [{"role": "user",
                           "content": "hi"}], "stream": stream})
    assert answer.status == (200 if stream else 400)
    assert b"over quota" in answer.body
    assert not [i for i in ACCOUNT_IDS if i.encode() in answer.body], answer.body[-400:]


# --- check-config never prints a secret it was handed by mistake ---------------------------------


@pytest.mark.parametrize("where", ["api_key_env", "base_url"])
def test_check_config_does_not_echo_a_secret_put_in_the_wrong_place(tmp_path: Any, where: str) -> None:
    import subprocess
    import sys

    secret = "sk-proj-Canary0123456789abcdef0123456789" if where == "api_key_env" else "hunter2canarypass"
    base_url = f"https://ops:{secret}@api.example.com/v1" if where == "base_url" else "https://api.example.com/v1"
    key_env = secret if where == "api_key_env" else "P1_KEY"
    (tmp_path / "gateway.yaml").write_text(
        f"store: {{path: okm.sqlite3}}\nproviders:\n  p1: {{base_url: \"{base_url}\", api_key_env: \"{key_env}\"}}\n"
        "lanes:\n  resale:\n    models:\n      m: {upstreams: [{provider: p1}]}\n")
    done = subprocess.run([sys.executable, "-m", "proxy", "check-config", "--config", str(tmp_path / "gateway.yaml")],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OKM_KEY_PEPPER": "pepper-for-test", "P1_KEY": "x"})
    assert done.returncode == 1
    assert f"providers.p1.{where}" in done.stderr
    assert secret not in done.stdout + done.stderr


def test_log_redaction_keeps_variable_names_and_masks_keys() -> None:
    from proxy.redaction import redact

    line = redact("OKM_ADMIN_TOKEN is set but OKM_MASTER_KEY is not set; key okm_AbCd1234EfGh_"
                  "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijklm rejected")
    assert "OKM_ADMIN_TOKEN is set but OKM_MASTER_KEY is not set" in line
    assert "AbCdEfGhIjKlMnOp" not in line and "[redacted] rejected" in line


def test_debug_logging_does_not_dump_sql_parameters() -> None:
    import logging

    from proxy.telemetry.logs import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("debug")
        assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)  # it logs every call's parameters
        assert not logging.getLogger("asyncpg").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("aiosqlite").setLevel(logging.NOTSET)
        logging.getLogger("asyncpg").setLevel(logging.NOTSET)
