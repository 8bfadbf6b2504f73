"""What may cross a lane boundary, both ways: request headers and body out, response headers and
error text back. Pure functions over plain data; they never log and never see the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.lanes.budget_fields import budget_body
from proxy.types import Secret

# Names that would let a client retarget the upstream call or bring its own credentials. Beyond
# the three of SPEC §4, the aliases are those a LiteLLM-style upstream honours from a request
# body (its auth_utils ban list): a whole client router config, cloud credentials, endpoint overrides.
FORBIDDEN_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "user_config",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_bedrock_runtime_endpoint",
        "aws_sts_endpoint",
        "vertex_credentials",
    }
)

_REQUEST_HEADERS_ANY_LANE = MappingProxyType({"accept": "Accept", "openai-beta": "OpenAI-Beta"})
_REQUEST_HEADERS_NON_STRICT = MappingProxyType(
    {**_REQUEST_HEADERS_ANY_LANE, "idempotency-key": "Idempotency-Key"}
)

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
     "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
# Describe the upstream's own connection or origin, not the body we relay: the gateway sets its own.
_RESPONSE_TRANSPORT = frozenset(
    {"content-length", "content-encoding", "date", "server", "set-cookie", "alt-svc",
     "strict-transport-security"}
)
_UPSTREAM_REQUEST_ID = frozenset({"x-request-id", "request-id"})
SHOULD_RETRY = "x-should-retry"  # the SDKs' retry hint: identifies nobody, forwarded on every lane

# Header values that go upstream must look like what SDKs send, so no free text (a key, an id)
# rides along: known media ranges for Accept, `feature=vN` opt-ins for OpenAI-Beta.
_MEDIA_TYPES = frozenset({"*/*", "application/*", "application/json", "application/octet-stream", "text/*",
                          "text/event-stream", "text/plain", "audio/*", "audio/mpeg", "image/*"})
_MEDIA_PARAM = re.compile(r"q=(?:0(?:\.[0-9]{1,3})?|1(?:\.0{1,3})?)|charset=utf-8", re.IGNORECASE)
_BETA_VALUE = re.compile(r"[a-z][a-z0-9_.-]{0,40}=v[0-9]{1,3}(?:\s*,\s*[a-z][a-z0-9_.-]{0,40}=v[0-9]{1,3}){0,7}",
                         re.IGNORECASE)


def _plain_accept(value: str) -> bool:
    ranges = value.split(",")
    if len(ranges) > 8:
        return False
    for item in ranges:
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() not in _MEDIA_TYPES or not all(_MEDIA_PARAM.fullmatch(p) for p in params):
            return False
    return True


_HEADER_VALUES = MappingProxyType({"Accept": _plain_accept, "OpenAI-Beta": lambda v: bool(_BETA_VALUE.fullmatch(v))})

# Provider account identifiers: an id needs 16+ chars, or 6+ with a digit, so words like
# "user-friendly" survive. Keys also swallow '*' so a half-masked "sk-ab***xyz9" leaks no tail.
_ID_BODY = r"(?:[A-Za-z0-9]{16,}|(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{6,})(?![A-Za-z0-9])"
# Key prefixes of OpenAI-compatible providers (OpenAI, Anthropic, Groq, xAI, Perplexity,
# NVIDIA, Cerebras, OpenRouter, Fireworks, Together, DeepSeek-style sk-). The tail may be a
# partial quote ("gsk_RTPO****…786a"), so it also swallows '*' and '…'; it needs a digit
# or a mask character, so model names like "xai-grok" survive.
_KEY_TAIL = r"(?=[A-Za-z0-9_*\u2026-]*[0-9*\u2026])[A-Za-z0-9_*\u2026-]{6,}"
_IDENTIFIER_PATTERNS = (
    (re.compile(r"\b(sk|gsk|xai|pplx|nvapi|csk|fw|tgp)[-_]" + _KEY_TAIL), r"\1-***"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), "AIza***"),  # Google API keys
    (re.compile(r"\borg([-_])" + _ID_BODY), r"org\1***"),  # OpenAI org-…, Groq org_01…
    (re.compile(r"\bproj_" + _ID_BODY), "proj_***"),
    (re.compile(r"\buser-" + _ID_BODY), "user-***"),
    (re.compile(r"\bacct_" + _ID_BODY), "acct_***"),
    # UUIDs (organization and project ids of several providers); none identifies anything a client needs
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "***"),
)
_MIN_LITERAL = 3  # shorter "secrets" identify nothing and would shred the message
_ERROR_FIELDS = ("message", "type", "param", "code")


def find_forbidden_field(body: Any, path: str = "", keys: set[str] | None = None) -> str | None:
    """JSON path of the first key, at any depth, naming a forbidden field; None if there is none.

    Keys match case-insensitively with '-' read as '_', so "API-Base" is caught too. JSON Schema
    subtrees (tool parameters, structured-output schemas) are skipped: a property named
    `api_key` there describes the client's own tool, it sets nothing. The fast pass builds no
    paths, and finding the schema subtrees is left for a body that has such a key somewhere.
    `keys`, when given, is every key of `body` at any depth (the parser collects them): the fast
    pass is then a set difference against the keys already known to be harmless.
    """
    if not (_any_forbidden_key(body) if keys is None else _forbidden_key_in(keys)):
        return None
    exempt = _schema_subtrees(body)
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if id(node) in exempt:
                continue
            for key, value in node.items():
                if isinstance(key, str) and key.lower().replace("-", "_") in FORBIDDEN_FIELDS:
                    return _path_of(body, path, exempt)
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, (dict, list)))
    return None


# Keys seen and found harmless (normalised, not forbidden), so the common body's check is one set
# difference at C speed (~0.2 us, against ~5 us for the walk). Bounded: a client sending random keys
# stops adding to it once it is full, and its keys are then checked one by one, as before.
_HARMLESS_KEYS: set[str] = set()
HARMLESS_KEYS_MAX = 4096


def _forbidden_key_in(keys: set[str]) -> bool:
    unknown = keys - _HARMLESS_KEYS
    if not unknown:
        return False
    for key in unknown:
        if key.lower().replace("-", "_") in FORBIDDEN_FIELDS:
            return True
    if len(_HARMLESS_KEYS) + len(unknown) <= HARMLESS_KEYS_MAX:
        _HARMLESS_KEYS.update(unknown)
    return False


def _any_forbidden_key(body: Any) -> bool:
    """Whether any key at any depth names a forbidden field, schema subtrees included."""
    stack: list[Any] = [body]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if type(node) is dict:
            for key, value in node.items():
                if type(key) is str and key.lower().replace("-", "_") in FORBIDDEN_FIELDS:
                    return True
                kind = type(value)
                if kind is dict or kind is list:
                    push(value)
        elif type(node) is list:
            stack.extend([item for item in node if type(item) is dict or type(item) is list])
    return False


# Every place in a request body where the API takes a JSON Schema (a description of the client's
# own tool or output shape, so a property named `api_key` there sets nothing). "*" is each item of a list.
SCHEMA_POSITIONS: tuple[tuple[str, ...], ...] = (
    ("tools", "*", "function", "parameters"),  # chat completions function tools
    ("tools", "*", "parameters"),  # Responses function tools
    ("tools", "*", "input_schema"),  # MCP-style / Anthropic-style tool definitions
    ("functions", "*", "parameters"),  # legacy chat `functions`
    ("response_format", "json_schema", "schema"),  # chat structured outputs
    ("text", "format", "schema"),  # Responses structured outputs
    ("input", "*", "tools", "*", "input_schema"),  # replayed Responses `mcp_list_tools` items
)


def _schema_subtrees(body: Any) -> set[int]:
    """ids of the JSON Schema objects in a request, at the SCHEMA_POSITIONS."""
    found: set[int] = set()
    for position in SCHEMA_POSITIONS:
        nodes = [body]
        for step in position:
            if step == "*":
                nodes = [item for node in nodes if isinstance(node, list) for item in node]
            else:
                nodes = [node.get(step) for node in nodes if isinstance(node, dict)]
        found.update(id(node) for node in nodes if isinstance(node, dict))
    return found


def _path_of(body: Any, path: str, exempt: set[int]) -> str | None:
    """The same search as find_forbidden_field, document order, building the JSON path."""
    stack: list[tuple[Any, str]] = [(body, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict) and id(node) not in exempt:
            children = []
            for key, value in node.items():
                child = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and key.lower().replace("-", "_") in FORBIDDEN_FIELDS:
                    return child
                children.append((value, child))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(reversed([(item, f"{where}[{i}]") for i, item in enumerate(node)]))
    return None


def upstream_request_headers(client_headers: Mapping[str, str], *, strict: bool) -> dict[str, str]:
    """Client headers that go upstream: an allow-list, nothing else.

    Every lane: Accept (media ranges only), OpenAI-Beta (`feature=vN` opt-ins only; any other
    value, which could carry a key or an id, drops the header). Non-strict lanes also pass
    Idempotency-Key; on the pool it is a client-chosen id that would follow the client across
    accounts. Content-Type and Authorization are set by the upstream client, never copied. All
    else is dropped: client IP headers (Forwarded, X-Forwarded-*, X-Real-IP), cookies, the
    client's key (Authorization, api-key), OpenAI-Organization/-Project (the client's own
    OpenAI account: meaningless to ours, and a leak), User-Agent, X-Stainless-* and any other
    x-* header, and hop-by-hop headers.
    """
    allowed = _REQUEST_HEADERS_ANY_LANE if strict else _REQUEST_HEADERS_NON_STRICT
    # Looked up by the allow-list's names (a case-insensitive lookup each) instead of a pass over
    # every header the client sent (an SDK sends ~15); a plain mapping is read as one.
    headers = _case_insensitive(client_headers)
    out: dict[str, str] = {}
    for name, canonical in allowed.items():
        values = headers.getall(name, ())
        if not values:
            continue
        plain = _HEADER_VALUES.get(canonical)
        for value in values:  # in order: the last acceptable one is sent
            if plain is None:
                out[canonical] = value
            elif plain(value.strip()):
                out[canonical] = value.strip()
    return out


def _case_insensitive(headers: Mapping[str, str]) -> CIMultiDict[str] | CIMultiDictProxy[str]:
    """Headers as a case-insensitive multidict (aiohttp's already are; a plain mapping is copied)."""
    return headers if isinstance(headers, (CIMultiDict, CIMultiDictProxy)) else CIMultiDict(headers)


def scrub_request_body(body: dict[str, Any], *, strict: bool, endpoint: str = "chat/completions") -> dict[str, Any]:
    """The body to send upstream. Non-strict lanes: `body` itself, untouched.

    Strict (Budget pool): the per-endpoint allow-list of proxy.lanes.budget_fields: stateful
    fields (previous_response_id, conversation, ...) refused, everything not listed dropped,
    "store" forced to false where the endpoint has it. Returns a new dict; the input is not
    mutated.
    """
    if not strict:
        return body
    return budget_body(body, endpoint)


def client_response_headers(upstream_headers: Mapping[str, str], *, strict: bool,
                            own_account: bool = False) -> dict[str, str]:
    """Upstream response headers the client may see (docs/lanes.md, "Response headers").

    Operator accounts (Budget, `strict`, and Business): an allow-list, Content-Type and
    X-Should-Retry (only "true"/"false"); organization, project, rate limits, request ids,
    cookies, processing time and CDN ids describe the operator's account and are dropped.
    The tenant's own account (BYOK, `own_account`): all but hop-by-hop headers (including any
    named in Connection) and the upstream's transport and origin headers (content-length,
    content-encoding, date, server, set-cookie, alt-svc, strict-transport-security); the
    upstream's X-Request-Id / Request-Id is renamed X-Upstream-Request-Id so it never collides
    with the gateway's own request id.
    """
    if strict or not own_account:
        return operator_response_headers(upstream_headers)
    named_by_connection = {
        token.strip().lower()
        for name, value in upstream_headers.items()
        if name.lower() == "connection"
        for token in value.split(",")
    }
    out: dict[str, str] = {}
    for name, value in upstream_headers.items():
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower in _RESPONSE_TRANSPORT or lower in named_by_connection:
            continue
        out["X-Upstream-Request-Id" if lower in _UPSTREAM_REQUEST_ID else name] = value
    return out


def operator_response_headers(upstream_headers: Mapping[str, str]) -> dict[str, str]:
    """The allow-list for answers from an operator account (Budget and Business)."""
    headers = _case_insensitive(upstream_headers)
    out: dict[str, str] = {}
    for value in headers.getall("content-type", ()):  # two lookups, not a pass over every upstream header
        out["Content-Type"] = value
    for value in headers.getall(SHOULD_RETRY, ()):
        hint = should_retry_hint(value)
        if hint is not None:
            out["X-Should-Retry"] = hint
    return out


def error_response_headers(upstream_headers: Mapping[str, str], *, own_account: bool) -> dict[str, str]:
    """Headers of an upstream error answer passed on with it: X-Should-Retry on every lane,
    and on the tenant's own account (BYOK) its rate-limit headers too."""
    out = operator_response_headers(upstream_headers)
    out.pop("Content-Type", None)  # the gateway writes the error body itself
    if own_account:
        out.update((k, v) for k, v in upstream_headers.items() if k.lower().startswith("x-ratelimit-"))
    return out


def should_retry_hint(value: str | None) -> str | None:
    """The upstream's X-Should-Retry when it is the plain hint the SDKs read, else None."""
    hint = (value or "").strip().lower()
    return hint if hint in ("true", "false") else None


def mask_identifiers(text: str, secrets: Iterable[str | Secret] = ()) -> str:
    """`text` with provider account identifiers and the given literals replaced.

    Masks org-…, proj_…, user-…, acct_… ids and sk-… / sk-proj-… key-like strings (as
    "org-***" etc.), and every given secret or account name (case-insensitive) as "***".
    Literals are masked first, longest first, so a known key never leaves a partial tail.
    """
    literals = {s.reveal() if isinstance(s, Secret) else s for s in secrets}
    for literal in sorted((s for s in literals if len(s) >= _MIN_LITERAL), key=len, reverse=True):
        text = re.sub(re.escape(literal), "***", text, flags=re.IGNORECASE)
    for pattern, replacement in _IDENTIFIER_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_error_body(body: dict[str, Any], secrets: Iterable[str | Secret] = ()) -> dict[str, Any]:
    """A new OpenAI error body holding only error.message/type/param/code, strings masked.

    Other fields (provider metadata, raw upstream text) are dropped: they may name the account.
    """
    secrets = list(secrets)
    error = body.get("error")
    if isinstance(error, str):
        error = {"message": error}
    if not isinstance(error, dict):
        error = {"message": "upstream error"}
    masked: dict[str, Any] = {}
    for field in _ERROR_FIELDS:
        value = error.get(field)
        if isinstance(value, str):
            value = mask_identifiers(value, secrets)
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            value = None
        masked[field] = value
    if masked["message"] is None:
        masked["message"] = "upstream error"
    return {"error": masked}
