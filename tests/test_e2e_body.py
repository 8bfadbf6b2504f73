"""Request bodies and model IDs the gateway refuses before any upstream call: status, code and a
message that names the problem, and not one request reaching any upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import MODEL, Gateway

GOOD = f'"model": "cheap/{MODEL}", "messages": [{{"role": "user", "content": "hi"}}]'
DEEP = 20_000  # deep enough to blow Python's recursion limit in a naive parser, small enough to fit the limit


def no_upstream_calls(gw: Gateway) -> None:
    assert {u.name: len(u.requests) for u in gw.upstreams} == {u.name: 0 for u in gw.upstreams}


@pytest.mark.parametrize("raw,fragment", [
    (b"", "empty"),
    (b"{" + GOOD.encode() + b",", "not valid JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"[1, 2]", "must be a JSON object, got an array"),
    (b'"just a string"', "must be a JSON object, got a string"),
    (b"{" + GOOD.encode() + b', "temperature": NaN}', "NaN"),
    (b"{" + GOOD.encode() + b', "top_p": Infinity}', "Infinity"),
    (b"{" + GOOD.encode() + b', "model": "resale/' + MODEL.encode() + b'"}', "'model' more than once"),
    (b'{"model":"cheap/' + MODEL.encode() + b'","messages":[],"model":"cheap/x"}', "'model' more than once"),
    (b'{"model":"cheap/' + MODEL.encode() + b'","messages":[{"role":"user","content":"hi","role" :"system"}]}',
     "'role' more than once"),
    (b"{" + GOOD.encode() + b', "x": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper than 64"),
    (b"{" + GOOD.encode() + b', "x": ' + b"[" * DEEP + b"]" * DEEP + b"}", "nested deeper than 64"),
    (b'{"messages": []}', "'model' is required"),
    (b'{"model": 5, "messages": []}', "'model' must be a string, got a number"),
    (b'{"model": null, "messages": []}', "'model' is required"),
    (b"{" + GOOD.encode() + b', "stream": "true"}', "'stream' must be true or false, got a string"),
    (b"{" + GOOD.encode() + b', "stream": 1}', "'stream' must be true or false, got a number"),
    (b"{" + GOOD.encode() + b', "stream": true, "stream_options": "yes"}', "'stream_options' must be an object"),
], ids=["empty", "invalid-json", "not-utf8", "array", "string", "nan", "infinity", "duplicate-key", "duplicate-key-compact",
        "duplicate-key-blank-before-colon", "deep",
        "very-deep", "model-missing", "model-number", "model-null", "stream-string", "stream-int",
        "stream-options-string"])
async def test_bad_bodies_are_400_naming_the_problem(gateway: Any, raw: bytes, fragment: str) -> None:
    gw: Gateway = await gateway()
    answer = await gw.post("/v1/chat/completions", data=raw)
    assert answer.status == 400, answer.body[:300]
    error = answer.error
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert fragment in error["message"]
    no_upstream_calls(gw)


async def test_body_over_the_limit_is_413(gateway: Any) -> None:
    gw: Gateway = await gateway(limits={"max_body_bytes": 4096})
    padding = "x" * 5000
    answer = await gw.post("/v1/chat/completions", data=("{" + GOOD + f', "pad": "{padding}"}}').encode())
    assert answer.status == 413
    assert answer.error["code"] == "request_too_large" and "4096" in answer.error["message"]
    no_upstream_calls(gw)


async def test_chunked_body_over_the_limit_is_413(gateway: Any) -> None:
    gw: Gateway = await gateway(limits={"max_body_bytes": 4096})

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b"{" + GOOD.encode() + b', "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    async with gw.session.post(gw.url + "/v1/chat/completions", data=body(), headers=gw.auth()) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"
    no_upstream_calls(gw)


@pytest.mark.parametrize("model", [MODEL, f"openai/{MODEL}", f"CHEAP/{MODEL}", f"premium/{MODEL}", "",
                                   f"cheap/../{MODEL}", "byok/openai", f"cheap/{MODEL} "])
async def test_bad_prefix_is_400_listing_the_prefixes(gateway: Any, model: str) -> None:
    gw: Gateway = await gateway()
    answer = await gw.post("/v1/chat/completions", {"model": model, "messages": []})
    assert answer.status == 400
    assert answer.error["code"] == "invalid_model_id" and answer.error["param"] == "model"
    message = answer.error["message"]
    if model in (MODEL, f"openai/{MODEL}", f"CHEAP/{MODEL}", f"premium/{MODEL}", ""):
        assert all(prefix in message for prefix in ("cheap/", "resale/", "byok/")), message
    no_upstream_calls(gw)


@pytest.mark.parametrize("model", ["cheap/gpt-unknown", "resale/gpt-unknown", f"byok/nosuchprovider/{MODEL}"])
async def test_unknown_model_is_404(gateway: Any, model: str) -> None:
    gw: Gateway = await gateway()
    answer = await gw.post("/v1/chat/completions", {"model": model, "messages": []})
    assert answer.status == 404
    assert answer.error["code"] == "model_not_found"
    assert model.split("/")[1] in answer.error["message"]
    no_upstream_calls(gw)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"])
async def test_every_endpoint_applies_the_body_rules(gateway: Any, path: str) -> None:
    gw: Gateway = await gateway()
    answer = await gw.post(path, data=b'{"model": "cheap/x", "model": "cheap/y"}')
    assert answer.status == 400 and "more than once" in answer.error["message"]
    no_upstream_calls(gw)
