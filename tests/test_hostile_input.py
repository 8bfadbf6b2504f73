"""Hostile client input through a real gateway: malformed model IDs, keys where they must not be,
compressed and oversized bodies, JSON the parser must refuse, smuggled endpoints and keys. Each is a
documented 4xx with an OpenAI-shaped error, no upstream call, no 500 and no traceback.
Also replays the request-body fuzzer's saved inputs (fuzz/regressions/body).
"""

from __future__ import annotations

import asyncio
import functools
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from fuzz import checks
from proxy import appkeys
from tests.conftest import MODEL, Answer, Gateway
from tests.fakes.hostile import CLOSE, ROOT, metric, scrape

CHAT = [{"role": "user", "content": "hi"}]
REGRESSIONS = ROOT / "fuzz" / "regressions" / "body"
SEEDS = ROOT / "fuzz" / "seeds" / "body"


@pytest.fixture
async def gw(gateway: Any) -> Gateway:
    return await gateway(pool=1, resale=1, byok=("openai",), limits={"max_body_bytes": 1 << 20})


def refused(answer: Answer, status: int, code: str, caplog: pytest.LogCaptureFixture, gw: Gateway,
            fragment: str = "") -> dict[str, Any]:
    """The answer is the documented refusal; nothing went upstream; nothing crashed."""
    assert answer.status == status, answer.body[:300]
    assert answer.headers["Content-Type"].startswith("application/json")
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert fragment in error["message"], error["message"]
    assert len(error["message"]) < 600 and error["message"].isprintable(), "the message echoes hostile input"
    assert {u.name: len(u.requests) for u in gw.upstreams if u.requests} == {}
    assert b"Traceback" not in answer.body and "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]
    return error


async def each(cases: dict[str, Any], check: Callable[[str, Any], Awaitable[None]]) -> None:
    """Run `check` on every case against one gateway; report every failing case, not just the first."""
    failures = []
    for name, case in cases.items():
        try:
            await check(name, case)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)


async def chat(gw: Gateway, body: Any = None, *, data: bytes | None = None, path: str = "/v1/chat/completions",
               headers: dict[str, str] | None = None) -> Answer:
    return await gw.post(path, body, data=data, headers={**CLOSE, **(headers or {})})


# --- model IDs -----------------------------------------------------------------------------------

BAD_IDS = {
    "byok-dotdot-to-resale": "byok/../resale/gpt-test",
    "byok-dotdot-in-model": "byok/openai/../gpt-test",
    "byok-dot-segment": "byok/openai/./gpt-test",
    "cheap-empty-segment": "cheap//gpt-test",
    "cheap-trailing-slash": "cheap/gpt-test/",
    "resale-empty-model": "resale/",
    "byok-empty-provider": "byok//gpt-test",
    "byok-empty-model": "byok/openai/",
    "byok-empty-inner-segment": "byok/openai//gpt-test",
    "wrong-case-cheap": "Cheap/gpt-test",
    "wrong-case-resale": "RESALE/gpt-test",
    "wrong-case-byok": "Byok/openai/gpt-test",
    "cyrillic-c": "\u0441heap/gpt-test",
    "nul": "cheap/gpt-test\x00",
    "escape-sequence": "cheap/gpt\x1b[31m-test",
    "crlf-injection": "cheap/gpt-test\r\nX-Injected: 1",
    "lf": "cheap/gpt-test\n",
    "tab-prefix": "\tcheap/gpt-test",
    "bidi-override": "cheap/gpt\u202e-test",
    "zero-width-space": "cheap/gpt\u200b-test",
    "del": "cheap/gpt-test\x7f",
    "257-chars": "cheap/" + "a" * 251,
    "60k-chars": "resale/" + "b" * 60_000,
}


async def test_malformed_model_ids_are_400(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    async def check(name: str, model: str) -> None:
        error = refused(await chat(gw, {"model": model, "messages": CHAT}), 400, "invalid_model_id", caplog, gw)
        assert error["param"] == "model"
        if name.startswith(("wrong-case", "cyrillic")):
            assert all(p in error["message"] for p in ("cheap/", "resale/", "byok/"))

    await each(BAD_IDS, check)


UNKNOWN_IDS = {"provider-case": ("byok/OpenAI/gpt-test", "OpenAI"), "model-case": ("cheap/GPT-TEST", "GPT-TEST"),
               "256-chars": ("cheap/" + "a" * 250, "a" * 250), "unknown-provider": ("byok/openai2/gpt-test", "openai2")}


async def test_unknown_but_well_formed_ids_are_404(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    async def check(name: str, case: tuple[str, str]) -> None:
        refused(await chat(gw, {"model": case[0], "messages": CHAT}), 404, "model_not_found", caplog, gw, case[1])

    await each(UNKNOWN_IDS, check)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"])
async def test_non_string_model_is_400(gw: Gateway, caplog: pytest.LogCaptureFixture, path: str) -> None:
    async def check(name: str, value: Any) -> None:
        answer = await chat(gw, {"model": value, "input": "x"}, path=path)
        refused(answer, 400, "invalid_request", caplog, gw, "'model'")

    await each({"list": ["cheap/gpt-test"], "object": {"id": "cheap/gpt-test"}, "bool": True}, check)


# --- keys in the wrong place ---------------------------------------------------------------------


async def test_key_in_the_query_string_is_401_and_never_logged(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    body = orjson.dumps({"model": f"cheap/{MODEL}", "messages": CHAT})

    async def check(name: str, param: str) -> None:
        async with gw.session.post(f"{gw.url}/v1/chat/completions?{param}={gw.key}", data=body,
                                   headers={**gw.auth(), **CLOSE}) as resp:
            answer = Answer(resp.status, dict(resp.headers), await resp.read())
        refused(answer, 401, "invalid_api_key", caplog, gw, "query string")
        assert gw.key not in answer.body.decode() and gw.key not in caplog.text

    params = ["api_key", "key", "access_token", "apikey", "api-key"]
    await each({p: p for p in params}, check)
    assert metric(await scrape(gw.url, gw.session), "okm_auth_failures_total", reason="malformed") == len(params)


CREDENTIALS = {
    "duplicate-authorization": ([("Authorization", "Bearer {key}"), ("Authorization", "Bearer {key}")], "more than one"),
    "authorization-and-api-key-differ": ([("Authorization", "Bearer {key}"), ("api-key", "{key}x")], "different keys"),
    "duplicate-api-key": ([("api-key", "{key}"), ("api-key", "{key}")], "more than one"),
    "8k-key": ([("Authorization", "Bearer {key}" + "A" * 8000)], "malformed"),
    "tab-separated": ([("Authorization", "Bearer\t{key}")], "Bearer scheme"),
    "token-scheme": ([("Authorization", "Token {key}")], "Bearer scheme"),
}


async def test_ambiguous_credentials_are_401(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    body = orjson.dumps({"model": f"resale/{MODEL}", "messages": CHAT})

    async def check(name: str, case: tuple[list[tuple[str, str]], str]) -> None:
        sent = [(k, v.format(key=gw.key)) for k, v in case[0]]
        sent += [("Content-Type", "application/json"), ("Connection", "close")]
        async with gw.session.post(gw.url + "/v1/chat/completions", data=body, headers=sent) as resp:
            answer = Answer(resp.status, dict(resp.headers), await resp.read())
        refused(answer, 401, "invalid_api_key", caplog, gw, case[1])
        assert gw.key not in answer.body.decode()

    await each(CREDENTIALS, check)


# --- bodies: size and encoding -------------------------------------------------------------------


async def raw_exchange(gw: Gateway, head: bytes, body: bytes = b"", within_s: float = 2.0) -> Answer:
    """One request written as raw bytes, for framing no client library will produce."""
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(within_s):
            head_part = (await reader.readuntil(b"\r\n\r\n"))[:-4]
            status_line, *lines = head_part.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines)
            if "Content-Length" in headers:
                payload = await reader.readexactly(int(headers["Content-Length"]))
            else:
                payload = _unchunk(await reader.readuntil(b"0\r\n\r\n"))
    finally:
        writer.close()
    return Answer(int(status_line.split()[1]), headers, payload)


def _unchunk(raw: bytes) -> bytes:
    """A chunked transfer-coded body (ending in the zero chunk) as its plain bytes."""
    out, rest = bytearray(), raw
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2:]


def request_head(gw: Gateway, extra: str) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.key}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n{extra}\r\n").encode()


async def test_declared_huge_body_is_413_before_it_is_sent(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    answer = await raw_exchange(gw, request_head(gw, f"Content-Length: {10**12}\r\n"))  # and no body at all
    refused(answer, 413, "request_too_large", caplog, gw, str(1 << 20))


@functools.cache
def compressed_bomb(kind: str) -> bytes:
    """About 64 KiB that inflate to 64 MiB of JSON."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31 if kind == "gzip" else 15)
    parts = [packer.compress(b'{"model": "cheap/gpt-test", "pad": "')]
    zeros = b"0" * (1 << 20)
    parts += [packer.compress(zeros) for _ in range(64)]
    parts += [packer.compress(b'"}'), packer.flush()]
    return b"".join(parts)


PARSER_ERROR = ("aiohttp's HTTP parser refuses this before the app runs (no smuggling: the request never reaches "
                "an upstream, and the log has one warning line, no traceback), but its 400 is text/plain")


async def test_compressed_body_is_415_and_never_inflated(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    async def check(name: str, encoding: str) -> None:
        bomb = compressed_bomb("deflate" if "deflate" in encoding else "gzip")
        tracemalloc.start()
        try:
            answer = await chat(gw, data=bomb, headers={"Content-Encoding": encoding})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        refused(answer, 415, "unsupported_media_type", caplog, gw, "compressed")
        assert peak < 16 << 20, f"{peak} bytes allocated for a {len(bomb)}-byte compressed body"

    await each({e: e for e in ("gzip", "GZIP", "x-gzip", "deflate", "gzip, identity", "identity, gzip")}, check)


async def test_brotli_body_is_415(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    answer = await chat(gw, data=b"\x1b\x00\x00", headers={"Content-Encoding": "br"})
    refused(answer, 415, "unsupported_media_type", caplog, gw, "compressed")


@pytest.mark.xfail(strict=True, reason=PARSER_ERROR)
async def test_transfer_encoding_smuggling_is_refused(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"model": "cheap/gpt-test", "messages": []}'
    head = request_head(gw, f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n")
    answer = await raw_exchange(gw, head, b"5\r\nhello\r\n0\r\n\r\n")
    refused(answer, 400, "invalid_request", caplog, gw)


# --- bodies: JSON the parser must refuse ---------------------------------------------------------

GOOD = f'"model": "cheap/{MODEL}", "messages": [{{"role": "user", "content": "hi"}}]'
BAD_JSON = {
    "lone-high-surrogate": ('{' + GOOD + ', "user": "\\ud800"}', "surrogates"),
    "lone-low-surrogate": ('{' + GOOD + ', "x": ["\\udfff"]}', "surrogates"),
    "reversed-surrogate-pair": ('{' + GOOD + ', "x": "\\ude00\\ud83d"}', "surrogates"),
    "utf8-encoded-surrogate": (b'{' + GOOD.encode() + b', "x": "\xed\xa0\x80"}', "UTF-8"),
    "overlong-utf8": (b'{' + GOOD.encode() + b', "x": "\xc0\xaf"}', "UTF-8"),
    "int-past-64-bits": ('{' + GOOD + ', "max_tokens": 18446744073709551616}', "64-bit"),
    "negative-int-past-64-bits": ('{' + GOOD + ', "seed": -9223372036854775809}', "64-bit"),
    "5000-digit-int": ('{' + GOOD + ', "seed": ' + "9" * 5000 + '}', "too many digits"),
    "float-overflow": ('{' + GOOD + ', "temperature": 1e400}', "out of range"),
    "negative-float-overflow": ('{' + GOOD + ', "top_p": -1e999}', "out of range"),
    "minus-infinity": ('{' + GOOD + ', "top_p": -Infinity}', "-Infinity"),
    "nested-duplicate-key": ('{' + GOOD + ', "response_format": {"type": "text", "type": "json_object"}}',
                             "'type' more than once"),
    "bom": ('\ufeff{' + GOOD + '}', "not valid JSON"),
    "trailing-garbage": ('{' + GOOD + '} {}', "not valid JSON"),
    "trailing-comma": ('{' + GOOD + ',}', "not valid JSON"),
    "single-quotes": ("{'model': 'cheap/gpt-test'}", "not valid JSON"),
    "stream-string-true": ('{' + GOOD + ', "stream": "true"}', "'stream' must be true or false"),
    "stream-string-True": ('{' + GOOD + ', "stream": "True"}', "'stream' must be true or false"),
    "deep-65": ('{' + GOOD + ', "x": ' + "[" * 65 + "]" * 65 + '}', "nested deeper"),
    "deep-objects": ('{' + GOOD + ', "x": ' + '{"a": ' * 70 + "1" + "}" * 70 + '}', "nested deeper"),
}


async def test_hostile_json_is_400(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    async def check(name: str, case: tuple[str | bytes, str]) -> None:
        data = case[0].encode() if isinstance(case[0], str) else case[0]
        refused(await chat(gw, data=data), 400, "invalid_request", caplog, gw, case[1])

    await each(BAD_JSON, check)


async def test_valid_surrogate_pairs_and_edge_numbers_still_go_through(gw: Gateway) -> None:
    body = ('{' + GOOD + ', "user": "\\ud83d\\ude00 \U0001F600", "max_tokens": 18446744073709551615, '
            '"seed": -9223372036854775808, "temperature": 1e-400}').encode()
    answer = await chat(gw, data=body)
    assert answer.status == 200, answer.body
    [sent] = gw.pool[0].bodies()
    assert "user" not in sent  # the Budget lane drops end-user ids
    assert (sent["max_tokens"], sent["seed"], sent["temperature"]) == (2**64 - 1, -(2**63), 0.0)


SMUGGLED = {
    "upper-case": {"API_KEY": "sk-attacker"},
    "dashes-and-case": {"Api-Base": "http://attacker.example"},
    "in-extra-body": {"extra_body": {"base_url": "http://attacker.example"}},
    "in-metadata": {"metadata": {"api_key": "sk-attacker"}},  # the Budget scrub drops metadata, but only after this check
    "in-a-tool-function": {"tools": [{"type": "function", "function": {"name": "f", "api_base": "http://a.example"}}]},
    "deep-in-lists": {"x": [[[[{"y": [{"base_url": "http://attacker.example"}]}]]]]},
    "at-depth-60": {"x": orjson.loads('{"a": ' * 58 + '{"api_key": "sk-attacker"}' + "}" * 58)},
    "aws-credentials": {"aws_secret_access_key": "attacker"},
}


@pytest.mark.parametrize("path,model", [("/v1/chat/completions", f"cheap/{MODEL}"), ("/v1/responses", f"resale/{MODEL}"),
                                        ("/v1/embeddings", f"byok/openai/{MODEL}")], ids=["chat", "responses", "embeddings"])
async def test_smuggled_endpoint_or_key_fields_are_400(gw: Gateway, caplog: pytest.LogCaptureFixture, path: str,
                                                       model: str) -> None:
    async def check(name: str, fields: dict[str, Any]) -> None:
        answer = await chat(gw, {"model": model, "messages": CHAT, "input": "x", **fields}, path=path)
        error = refused(answer, 400, "invalid_request", caplog, gw, "not allowed")
        assert error["param"] and "attacker" not in answer.body.decode()

    await each(SMUGGLED, check)


async def test_a_tool_schema_may_describe_an_api_key_property(gw: Gateway) -> None:
    tool = {"type": "function", "function": {"name": "login", "parameters": {
        "type": "object", "properties": {"api_key": {"type": "string"}, "base_url": {"type": "string"}}}}}
    answer = await chat(gw, {"model": f"resale/{MODEL}", "messages": CHAT, "tools": [tool]})
    assert answer.status == 200
    assert gw.resale[0].bodies()[0]["tools"] == [tool]


# --- routes and methods --------------------------------------------------------------------------


ROUTES = {"typo": ("POST", "/v1/chat/completion"), "trailing-slash": ("POST", "/v1/chat/completions/"),
          "wrong-method": ("GET", "/v1/chat/completions"), "dotdot": ("POST", "/v1/../admin/workspaces"),
          "delete-models": ("DELETE", "/v1/models"), "v2": ("POST", "/v2/chat/completions"),
          "nul-in-path": ("POST", "/v1/chat%00/completions")}


async def test_unknown_routes_and_methods_are_openai_shaped(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    async def check(name: str, case: tuple[str, str]) -> None:
        async with gw.session.request(case[0], gw.url + case[1], data=b"{}", headers={**gw.auth(), **CLOSE}) as resp:
            answer = Answer(resp.status, dict(resp.headers), await resp.read())
        assert answer.status in (401, 404, 405), answer.status
        assert answer.headers["Content-Type"].startswith("application/json"), answer.body[:200]
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"].isprintable()
        if answer.status == 405:
            assert answer.headers["Allow"]

    await each(ROUTES, check)
    assert {u.name: len(u.requests) for u in gw.upstreams if u.requests} == {}
    assert "Traceback" not in caplog.text


# --- fuzzer regressions --------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted([*REGRESSIONS.glob("*"), *SEEDS.glob("*")]), ids=lambda p: p.name)
def test_body_fuzzer_inputs(path: Path) -> None:
    """Saved fuzzer failures (and the seeds): refused with a 400, or accepted and forwardable unchanged."""
    checks.one_input("body", path.read_bytes())


async def test_malformed_requests_count_against_the_workspaces_limit(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1, resale=1, byok=(), workspaces={"noisy": None, "other": None})
    async with gw.session.patch(f"{gw.url}/admin/workspaces/noisy/limits", json={"rpm_limit": 1},
                                headers={"Authorization": "Bearer admin-test-token"}) as r:
        assert r.status == 200
    async with gw.session.get(f"{gw.url}/v1/models", headers=gw.auth("noisy")) as r:
        assert r.status == 200  # the auth cache has the limit
    statuses = []
    for body in (b"{", b"[]", b'{"model": 5}', b'{"model": "nope/x"}') * 5:
        answer = await gw.post("/v1/chat/completions", data=body, workspace="noisy")
        statuses.append(answer.status)
    assert statuses[0] == 400 and set(statuses[1:]) == {429}, statuses
    assert not [u for u in gw.upstreams if u.requests]
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT}, workspace="other")
    assert answer.status == 200


# --- low-severity edges: each an OpenAI-shaped answer, never a 500 -------------------------------

ADMIN_TOKEN = "admin-test-token"


async def test_a_0xff_byte_in_the_admin_token_is_a_401_not_a_500(gw: Gateway) -> None:
    head = b"GET /admin/workspaces HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer admin-\xfftoken\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(gw, head)
    assert answer.status == 401 and answer.json()["error"]["code"] == "invalid_admin_token"


@pytest.mark.parametrize("value", [2**63, 2**64 + 1, 10**9 + 1])
async def test_absurd_rate_limits_are_a_400_not_a_500(gw: Gateway, value: int) -> None:
    async with gw.session.patch(f"{gw.url}/admin/workspaces/ws/limits", data=b'{"rpm_limit": %d}' % value,
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["error"]["param"] == "rpm_limit"


async def test_the_admin_api_refuses_duplicate_json_keys(gw: Gateway) -> None:
    async with gw.session.patch(f"{gw.url}/admin/workspaces/ws/limits", data=b'{"rpm_limit": 5, "rpm_limit": 50}',
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 400 and "more than once" in (await r.json())["error"]["message"]
    workspace = await gw.app[appkeys.STORE].get_workspace("ws")
    assert workspace.rpm_limit is None


async def test_ambiguous_transfer_encoding_is_refused(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    body = orjson.dumps({"model": f"cheap/{MODEL}", "messages": CHAT})
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = await raw_exchange(gw, request_head(gw, "Transfer-Encoding: identity, chunked\r\n"), chunked)
    assert answer.status in (400, 501), answer.body[:200]
    assert not [u for u in gw.upstreams if u.requests]


async def test_answers_do_not_name_the_server_software(gw: Gateway) -> None:
    for answer in (await gw.get("/healthz", authed=False), await gw.post("/v1/chat/completions", {"model": "x"}),
                   await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT})):
        assert "aiohttp" not in answer.headers.get("Server", "") and "Python" not in answer.headers.get("Server", "")
