"""Lane boundary scrub: headers and body out, headers and error text back."""

from __future__ import annotations

import copy

import pytest
from multidict import CIMultiDict

from proxy.errors import StatefulRequestNotAllowedError
from proxy.lanes import scrub
from proxy.lanes.budget_fields import BUDGET_FIELDS
from proxy.lanes.scrub import (
    FORBIDDEN_FIELDS,
    SCHEMA_POSITIONS,
    client_response_headers,
    find_forbidden_field,
    mask_error_body,
    mask_identifiers,
    scrub_request_body,
    upstream_request_headers,
)
from proxy.types import Endpoint, Secret

HOSTILE_CLIENT_HEADERS = [
    ("Host", "gateway.example"),
    ("Content-Type", "application/json"),
    ("Content-Length", "123"),
    ("Accept", "text/event-stream"),
    ("Accept-Encoding", "gzip, br"),
    ("OpenAI-Beta", "responses=v1"),
    ("Idempotency-Key", "client-chosen-1"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Forwarded-Host", "client.example"),
    ("Forwarded", "for=203.0.113.7"),
    ("X-Real-IP", "203.0.113.7"),
    ("Cookie", "session=abc"),
    ("OpenAI-Organization", "org-client123456"),
    ("OpenAI-Project", "proj_client123456"),
    ("User-Agent", "OpenAI/Python 1.99.0"),
    ("X-Stainless-Lang", "python"),
    ("X-Custom", "anything"),
    ("Authorization", "Bearer okm-workspace-key"),
    ("api-key", "okm-workspace-key"),
    ("Connection", "keep-alive, X-Custom"),
    ("Keep-Alive", "timeout=5"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic abc"),
    ("TE", "trailers"),
]


@pytest.mark.parametrize(
    ("strict", "expected"),
    [
        (True, {"Accept": "text/event-stream", "OpenAI-Beta": "responses=v1"}),
        (
            False,
            {"Accept": "text/event-stream", "OpenAI-Beta": "responses=v1", "Idempotency-Key": "client-chosen-1"},
        ),
    ],
)
@pytest.mark.parametrize("container", [dict, CIMultiDict], ids=["dict", "multidict"])
def test_request_headers_pass_by_allow_list_only(strict, expected, container):
    assert upstream_request_headers(container(HOSTILE_CLIENT_HEADERS), strict=strict) == expected


def test_request_header_names_match_case_insensitively():
    headers = {"accept": "application/json", "OPENAI-BETA": "assistants=v2", "idempotency-key": "k"}
    assert upstream_request_headers(headers, strict=False) == {
        "Accept": "application/json",
        "OpenAI-Beta": "assistants=v2",
        "Idempotency-Key": "k",
    }
    assert upstream_request_headers({}, strict=True) == {}


CHAT_BODY = {
    "model": "gpt-5.4",
    "messages": [{"role": "user", "content": "hi", "name": "alice"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "end-user-42",
    "metadata": {"customer": "acme"},
    "safety_identifier": "hash-of-user",
    "prompt_cache_key": "tenant-acme",
    "store": True,
    "temperature": 0.2,
}
RESPONSES_BODY = {
    "model": "gpt-5.4",
    "input": [{"role": "user", "content": "hi"}],
    "instructions": "be brief",
    "user": "end-user-42",
    "metadata": {"k": "v"},
    "previous_response_id": None,
    "conversation": None,
}
EMBEDDINGS_BODY = {"model": "emb", "input": ["a", "b"], "user": "u"}


@pytest.mark.parametrize(
    ("body", "endpoint", "expected"),
    [
        (
            CHAT_BODY,
            "chat/completions",
            {
                "model": "gpt-5.4",
                "messages": [{"role": "user", "content": "hi"}],  # messages[].name names a person
                "stream": True,
                "stream_options": {"include_usage": True},
                "store": False,
                "temperature": 0.2,
            },
        ),
        (
            RESPONSES_BODY,
            "responses",
            {
                "model": "gpt-5.4",
                "input": [{"role": "user", "content": "hi"}],
                "instructions": "be brief",
                "store": False,
            },
        ),
        (EMBEDDINGS_BODY, "embeddings", {"model": "emb", "input": ["a", "b"]}),
        ({"model": "m", "store": False}, "chat/completions", {"model": "m", "store": False}),
        ({"model": "m", "store": True, "input": "x"}, "embeddings", {"model": "m", "input": "x"}),
    ],
    ids=["chat", "responses", "embeddings", "already-clean", "no-store-endpoint"],
)
def test_strict_body_scrub_keeps_only_allowed_fields_and_forces_store_false(body, endpoint, expected):
    original = copy.deepcopy(body)
    assert scrub_request_body(body, strict=True, endpoint=endpoint) == expected
    assert body == original  # input untouched


IDENTIFYING = {
    "user": "end-user-42", "user_id": "u-42", "end_user": "alice", "User": "alice", "metadata": {"k": "v"},
    "litellm_metadata": {"user_api_key": "x"}, "client_metadata": {"installation_id": "inst-1"},
    "safety_identifier": "h", "prompt_cache_key": "tenant", "prompt_cache_retention": "24h",
    "extra_body": {"user": "alice", "metadata": {"a": 1}, "safety_identifier": "h", "prompt_cache_key": "k",
                   "previous_response_id": "resp_1"},
}


@pytest.mark.parametrize("endpoint", sorted(BUDGET_FIELDS))
def test_every_budget_endpoint_drops_every_identifier_at_any_spelling(endpoint):
    sent = scrub_request_body({"model": "m", **IDENTIFYING}, strict=True, endpoint=endpoint)
    assert set(sent) <= {"model", "store"} and set(sent) - {"model"} == ({"store"} if BUDGET_FIELDS[endpoint].has_store
                                                                        else set())


def test_every_endpoint_the_gateway_serves_has_a_budget_row():
    assert {e.value for e in Endpoint} <= set(BUDGET_FIELDS)


@pytest.mark.parametrize(("body", "field"), [({"background": True}, "background"),
                                             ({"prompt": {"id": "pmpt_1", "version": "2"}}, "prompt")])
def test_responses_fields_that_need_stored_state_are_refused(body, field):
    with pytest.raises(StatefulRequestNotAllowedError) as info:
        scrub_request_body({"model": "m", "input": "hi", **body}, strict=True, endpoint="responses")
    assert info.value.param == field
    assert scrub_request_body({"model": "m", "input": "hi", "background": False}, strict=True,
                              endpoint="responses") == {"model": "m", "input": "hi", "store": False}


@pytest.mark.parametrize("body", [CHAT_BODY, RESPONSES_BODY, {"previous_response_id": "resp_1"}])
def test_non_strict_body_is_returned_unchanged(body):
    original = copy.deepcopy(body)
    assert scrub_request_body(body, strict=False) is body
    assert body == original


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"previous_response_id": "resp_abc"}, "previous_response_id"),
        ({"previous_response_id": ""}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"conversation": {"id": "conv_123"}}, "conversation"),
        ({"previous_response_id": "resp_1", "conversation": "conv_1"}, "previous_response_id"),
    ],
)
def test_stateful_fields_are_refused_on_strict_lane_naming_the_field(extra, field):
    with pytest.raises(StatefulRequestNotAllowedError) as info:
        scrub_request_body({**RESPONSES_BODY, **extra}, strict=True, endpoint="responses")
    err = info.value
    assert (err.status, err.code, err.param) == (400, "stateful_request_not_allowed", field)
    body = err.to_openai_body()["error"]
    assert field in body["message"] and "cheap/" in body["message"] and "resale/" in body["message"]


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        ({"model": "m", "base_url": "http://evil"}, "", "base_url"),
        ({"model": "m", "api_base": "http://evil"}, "", "api_base"),
        ({"messages": [{"role": "user", "content": "hi", "api_key": "k"}]}, "", "messages[0].api_key"),
        ({"a": [[{"b": {"API_BASE": 1}}]]}, "", "a[0][0].b.API_BASE"),
        ({"extra_body": {"api-key": "x"}}, "", "extra_body.api-key"),
        ({"user_config": {"model_list": []}}, "", "user_config"),
        ({"metadata": {"aws_secret_access_key": "x"}}, "", "metadata.aws_secret_access_key"),
        ({"x": {"api_key": 1}, "base_url": 2}, "", "base_url"),  # an object's own keys first
        ({"x": {"api_key": 1}, "y": {"base_url": 2}}, "", "x.api_key"),  # then in document order
        # JSON Schema subtrees describe the client's own tools and outputs: not refused
        ({"tools": [{"function": {"parameters": {"properties": {"base_url": {}}}}}]}, "", None),
        ({"tools": [{"type": "function", "parameters": {"properties": {"api_key": {}}}}]}, "", None),
        ({"response_format": {"json_schema": {"schema": {"properties": {"api_key": {}}}}}}, "", None),
        ({"text": {"format": {"schema": {"properties": {"base_url": {}}}}}}, "", None),
        # ... but the same names anywhere else in a tool still are
        ({"tools": [{"function": {"name": "f", "api_base": "http://x"}}]}, "", "tools[0].function.api_base"),
        ({"api_key": None}, "body", "body.api_key"),
        ({"messages": [{"content": "please set base_url and api_key"}]}, "", None),  # values are not keys
        ({"model": "m", "input": [1, "api_key", [None, {"ok": True}]]}, "", None),
        ("api_key", "", None),
        ([{"a": 1}, {"b": [{"base_url": 1}]}], "", "[1].b[0].base_url"),
        (None, "", None),
    ],
)
def test_find_forbidden_field_at_any_depth(body, path, expected):
    assert find_forbidden_field(body, path) == expected
    # the parser's key set instead of the walk: the same answer, before and after the keys are known
    keys = _all_keys(body)
    assert find_forbidden_field(body, path, keys=keys) == expected
    assert find_forbidden_field(body, path, keys=keys) == expected


def _all_keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*(_all_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_all_keys(v) for v in node))
    return set()


def test_the_harmless_key_memory_is_bounded_and_never_hides_a_forbidden_key():
    for batch in range(10):
        noise = {f"k{batch}-{i}" for i in range(1000)}
        assert find_forbidden_field({"model": "m"}, keys=noise | {"model"}) is None
    assert len(scrub._HARMLESS_KEYS) <= scrub.HARMLESS_KEYS_MAX
    body = {"model": "m", "x": {"API-Key": "sk-1"}}
    assert find_forbidden_field(body, keys={"model", "x", "API-Key", *(f"k0-{i}" for i in range(1000))}) == "x.API-Key"


_SCHEMA = {"type": "object", "properties": {"api_key": {"type": "string"}, "base_url": {"type": "string"}},
           "required": ["api_key"]}

# Every JSON Schema position of the API, as the request that carries it (and the client that sends it).
SCHEMA_POSITION_BODIES = [
    (("tools", "*", "function", "parameters"), {"tools": [{"type": "function", "function": {"name": "f", "parameters": _SCHEMA}}]}),
    (("tools", "*", "parameters"), {"tools": [{"type": "function", "name": "f", "parameters": _SCHEMA}]}),
    (("tools", "*", "input_schema"), {"tools": [{"name": "f", "input_schema": _SCHEMA}]}),
    (("functions", "*", "parameters"), {"functions": [{"name": "login", "parameters": _SCHEMA}]}),
    (("response_format", "json_schema", "schema"),
     {"response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": _SCHEMA}}}),
    (("text", "format", "schema"), {"text": {"format": {"type": "json_schema", "name": "o", "schema": _SCHEMA}}}),
    (("input", "*", "tools", "*", "input_schema"),
     {"input": [{"type": "mcp_list_tools", "server_label": "s", "tools": [{"name": "f", "input_schema": _SCHEMA}]}]}),
]


@pytest.mark.parametrize(("position", "body"), SCHEMA_POSITION_BODIES, ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
def test_every_json_schema_position_is_exempt(position, body):
    assert find_forbidden_field({"model": "m", **body}) is None
    # a second tool/function beside it with the name as its own field is still refused
    leaked = {"model": "m", **body, "base_url": "http://evil"}
    assert find_forbidden_field(leaked) == "base_url"


def test_the_schema_position_table_lists_them_all():
    assert [p for p, _ in SCHEMA_POSITION_BODIES] == list(SCHEMA_POSITIONS)


def test_a_schema_position_only_exempts_the_schema_itself():
    body = {"functions": [{"name": "f", "api_key": "k", "parameters": _SCHEMA}]}
    assert find_forbidden_field(body) == "functions[0].api_key"
    body = {"input": [{"type": "message", "content": [{"api_key": "k"}]}]}
    assert find_forbidden_field(body) == "input[0].content[0].api_key"


def test_find_forbidden_field_handles_deep_nesting_without_recursion():
    body: object = {"base_url": "x"}
    for _ in range(5000):
        body = {"n": [body]}
    assert find_forbidden_field(body) == ".".join(["n[0]"] * 5000) + ".base_url"
    assert find_forbidden_field({"n": [{}] * 10000}) is None


def test_forbidden_fields_include_the_spec_three():
    assert {"api_base", "base_url", "api_key"} <= FORBIDDEN_FIELDS


UPSTREAM_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Content-Length", "999"),
    ("Content-Encoding", "gzip"),
    ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ("Server", "cloudflare"),
    ("Set-Cookie", "__cf_bm=abc; path=/"),
    ("Connection", "keep-alive, X-Hop"),
    ("X-Hop", "1"),
    ("Keep-Alive", "timeout=5"),
    ("Transfer-Encoding", "chunked"),
    ("Alt-Svc", 'h3=":443"'),
    ("Strict-Transport-Security", "max-age=31536000"),
    ("OpenAI-Organization", "org-operator"),
    ("OpenAI-Project", "proj_operator"),
    ("OpenAI-Processing-Ms", "321"),
    ("OpenAI-Version", "2020-10-01"),
    ("X-Request-Id", "req_abc"),
    ("CF-Ray", "8a1b2c3d4e5f-FRA"),
    ("X-RateLimit-Remaining-Requests", "99"),
    ("anthropic-ratelimit-tokens-remaining", "1000"),
    ("Retry-After", "3"),
]


OPERATOR_ACCOUNT_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "X-Should-Retry": "false"}


@pytest.mark.parametrize(
    ("strict", "own_account", "expected"),
    [
        (True, False, OPERATOR_ACCOUNT_HEADERS),  # Budget
        (False, False, OPERATOR_ACCOUNT_HEADERS),  # Business: the operator's account too
        (
            False,
            True,  # BYOK: the tenant's own account
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "OpenAI-Organization": "org-operator",
                "OpenAI-Project": "proj_operator",
                "OpenAI-Processing-Ms": "321",
                "OpenAI-Version": "2020-10-01",
                "X-Upstream-Request-Id": "req_abc",
                "CF-Ray": "8a1b2c3d4e5f-FRA",
                "X-RateLimit-Remaining-Requests": "99",
                "anthropic-ratelimit-tokens-remaining": "1000",
                "Retry-After": "3",
                "X-Should-Retry": "false",
            },
        ),
    ],
)
@pytest.mark.parametrize("container", [dict, CIMultiDict], ids=["dict", "multidict"])
def test_client_response_headers(strict, own_account, expected, container):
    headers = container([*UPSTREAM_HEADERS, ("X-Should-Retry", "false")])
    assert client_response_headers(headers, strict=strict, own_account=own_account) == expected


@pytest.mark.parametrize("value", ["maybe", "true; sk-pool0-operatorsecret0000", ""])
def test_only_a_plain_retry_hint_is_passed_from_an_operator_account(value):
    assert client_response_headers({"X-Should-Retry": value}, strict=False) == {}


def test_anthropic_style_request_id_is_renamed_too():
    assert client_response_headers({"request-id": "req_1"}, strict=False, own_account=True) == {
        "X-Upstream-Request-Id": "req_1"}


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        (
            "Incorrect API key provided: sk-proj-ab12****************************xyz9. You can find your key.",
            (),
            "Incorrect API key provided: sk-***. You can find your key.",
        ),
        ("key sk-ant-api03-AbCdEfGh_1234-5678 rejected", (), "key sk-*** rejected"),
        (
            "Rate limit reached for gpt-4 in organization org-AbCdEf1234567890GhIjKlMn on tokens per min.",
            (),
            "Rate limit reached for gpt-4 in organization org-*** on tokens per min.",
        ),
        ("project proj_AbC123dEf456gHi789 has no access", (), "project proj_*** has no access"),
        ("user-Ab12Cd34Ef56Gh78Ij90Kl12 is over quota", (), "user-*** is over quota"),
        ("billing account acct_1Q2w3E4r5T is past due", (), "billing account acct_*** is past due"),
        ("(org-abc123)", (), "(org-***)"),
        ("Organization org_01hx7kq9m2n3p4q5r6s7t8v9w has hit its limit", (), "Organization org_*** has hit its limit"),
        ("org b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d over quota", (), "org *** over quota"),
        ("Invalid API Key gsk_RTPO****…786a", (), "Invalid API Key gsk-***"),
        ("Incorrect API key provided: xai-AbC1****wXyZ.", (), "Incorrect API key provided: xai-***."),
        ("key xai-0123456789abcdefABCDEF rejected", (), "key xai-*** rejected"),
        ("key AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv rejected", (), "key AIza*** rejected"),
        ("model xai-grok and the task-runner", (), None),
        # ordinary words survive
        ("a user-friendly org-chart for risk-assessment12345 and task-runner", (), None),
        ("account pool-a failed", ("pool-a",), "account *** failed"),
        ("account POOL-A failed", ("pool-a",), "account *** failed"),
        ("bad key abcdefghijklmnop", (Secret("abcdefghijklmnop", "POOL_A_KEY"),), "bad key ***"),
        ("key okm-secret-xyz and okm-secret", ("okm-secret", "okm-secret-xyz"), "key *** and ***"),
        ("a cat", ("a", ""), None),  # too short to identify anything
        ("", ("pool-a",), ""),
    ],
)
def test_mask_identifiers(text, secrets, expected):
    assert mask_identifiers(text, secrets) == (text if expected is None else expected)


def test_mask_error_body_keeps_only_the_openai_fields_masked():
    body = {
        "error": {
            "message": "You exceeded your quota for org-AbCdEf1234567890GhIjKlMn on account pool-a.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
            "metadata": {"raw": "org-AbCdEf1234567890GhIjKlMn"},
        },
        "provider": "pool-a",
    }
    original = copy.deepcopy(body)
    assert mask_error_body(body, ["pool-a"]) == {
        "error": {
            "message": "You exceeded your quota for org-*** on account ***.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    assert body == original


@pytest.mark.parametrize(
    ("body", "expected_error"),
    [
        (
            {"error": {"message": "m", "type": "t", "param": "user-AbCdEfGh12345678", "code": 429}},
            {"message": "m", "type": "t", "param": "user-***", "code": 429},
        ),
        (
            {"error": "proj_AbC123dEf456gHi789 not found"},
            {"message": "proj_*** not found", "type": None, "param": None, "code": None},
        ),
        ({"detail": "x"}, {"message": "upstream error", "type": None, "param": None, "code": None}),
        (
            {"error": {"message": None, "code": {"nested": "x"}, "param": True}},
            {"message": "upstream error", "type": None, "param": None, "code": None},
        ),
    ],
)
def test_mask_error_body_odd_shapes(body, expected_error):
    assert mask_error_body(body) == {"error": expected_error}


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Accept": "application/json"}, {"Accept": "application/json"}),
        ({"accept": "text/event-stream;q=0.9, */*"}, {"Accept": "text/event-stream;q=0.9, */*"}),
        ({"Accept": "application/okm-live-abc123"}, {}),
        ({"Accept": "application/json; token=okm_abc"}, {}),
        ({"OpenAI-Beta": "assistants=v2"}, {"OpenAI-Beta": "assistants=v2"}),
        ({"OpenAI-Beta": "responses=v1, realtime=v1"}, {"OpenAI-Beta": "responses=v1, realtime=v1"}),
        ({"OpenAI-Beta": "okm_live_workspacekey"}, {}),
        ({"OpenAI-Beta": "x=sk-abc"}, {}),
    ],
)
def test_accept_and_beta_headers_pass_only_plain_values(headers, expected, strict):
    assert upstream_request_headers(headers, strict=strict) == expected
