"""What a Budget (`cheap/*`) request may carry to a pooled account: one allow-list of body
fields per endpoint (docs/lanes.md, "Budget request fields"), the stateful fields refused, and
the nested fields dropped. Anything not listed is dropped, so an identifier a client invents
tomorrow (`user_id`, `end_user`, `litellm_metadata`, `extra_body`, `client_metadata`, ...)
never reaches a shared account. Pure data and one pure function; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from proxy.errors import StatefulRequestNotAllowedError

_SAMPLING = frozenset({"frequency_penalty", "presence_penalty", "seed", "stop", "temperature", "top_p", "logit_bias",
                       "n", "max_tokens", "logprobs", "top_logprobs"})
_STREAMING = frozenset({"stream", "stream_options"})
_TOOLS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})


@dataclass(frozen=True, slots=True)
class EndpointFields:
    allowed: frozenset[str]  # top-level fields passed on ("model" always is)
    refused: tuple[str, ...] = ()  # stateful fields: a non-null value is a 400 naming it
    refused_if_true: tuple[str, ...] = ()  # refused only when truthy (e.g. Responses background)
    has_store: bool = False  # the endpoint takes `store`: forced to false


# Keyed by endpoint path under /v1/ (proxy.types.Endpoint values). Every endpoint the gateway
# serves must have a row (tests/test_scrub.py checks it).
BUDGET_FIELDS: Mapping[str, EndpointFields] = MappingProxyType({
    "chat/completions": EndpointFields(
        _SAMPLING | _STREAMING | _TOOLS | {
            "messages", "audio", "function_call", "functions", "max_completion_tokens", "modalities",
            "prediction", "reasoning_effort", "response_format", "service_tier", "verbosity",
            "web_search_options"},
        has_store=True),
    "responses": EndpointFields(
        _STREAMING | _TOOLS | {
            "input", "include", "instructions", "max_output_tokens", "max_tool_calls", "reasoning", "service_tier",
            "temperature", "text", "top_logprobs", "top_p", "truncation"},
        refused=("previous_response_id", "conversation", "prompt"), refused_if_true=("background",),
        has_store=True),
    "responses/input_tokens": EndpointFields(
        _TOOLS | {"input", "instructions", "personality", "reasoning", "text", "truncation"},
        refused=("previous_response_id", "conversation")),
    "completions": EndpointFields(_SAMPLING | _STREAMING | {"prompt", "best_of", "echo", "suffix"}),
    "embeddings": EndpointFields(frozenset({"input", "dimensions", "encoding_format"})),
    "moderations": EndpointFields(frozenset({"input"})),
    "images/generations": EndpointFields(frozenset({
        "prompt", "background", "moderation", "n", "output_compression", "output_format", "partial_images",
        "quality", "response_format", "size", "stream", "style", "complexity", "frame_count", "frame_duration_ms",
        "svg"})),
    "images/edits": EndpointFields(frozenset({
        "image", "mask", "prompt", "background", "input_fidelity", "n", "output_compression", "output_format",
        "partial_images", "quality", "response_format", "size", "stream", "complexity", "frame_count",
        "frame_duration_ms", "markup", "svg"})),
    "audio/speech": EndpointFields(frozenset({"input", "voice", "instructions", "response_format", "speed",
                                              "stream_format"})),
    "audio/transcriptions": EndpointFields(frozenset({
        "file", "chunking_strategy", "include", "language", "prompt", "response_format", "stream", "temperature",
        "timestamp_granularities", "known_speaker_names", "known_speaker_references", "keywords", "languages"})),
    "audio/translations": EndpointFields(frozenset({"file", "prompt", "response_format", "temperature"})),
})
# Message fields that name a person: chat `messages[].name` ("an optional name for the participant").
_MESSAGE_IDENTIFIERS = ("name",)
_NO_FIELDS = EndpointFields(frozenset())


def budget_body(body: Mapping[str, Any], endpoint: str) -> dict[str, Any]:
    """The body a pooled account gets: allowed fields only, `store` forced false where the
    endpoint has it, identifying message fields removed; stateful fields refused (400)."""
    rules = BUDGET_FIELDS.get(endpoint, _NO_FIELDS)
    for field in rules.refused:
        if body.get(field) is not None:
            raise _stateful(field)
    for field in rules.refused_if_true:
        if body.get(field):
            raise _stateful(field)
    out = {k: v for k, v in body.items() if k == "model" or k in rules.allowed}
    if rules.has_store:
        out["store"] = False
    messages = out.get("messages")
    if isinstance(messages, list) and any(isinstance(m, dict) and _has_identifier(m) for m in messages):
        out["messages"] = [_without_identifiers(m) if isinstance(m, dict) else m for m in messages]
    return out


def budget_form_fields(endpoint: str) -> frozenset[str]:
    """The form fields a multipart upload may carry to a pooled account (`model` always)."""
    return BUDGET_FIELDS.get(endpoint, _NO_FIELDS).allowed | {"model"}


def _has_identifier(message: Mapping[str, Any]) -> bool:
    return any(f in message for f in _MESSAGE_IDENTIFIERS)


def _without_identifiers(message: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in _MESSAGE_IDENTIFIERS}


def _stateful(field: str) -> StatefulRequestNotAllowedError:
    return StatefulRequestNotAllowedError(
        f"'{field}' is not supported on cheap/* models: requests there may be served by "
        "different pooled accounts that keep no state between calls. Send the full "
        "conversation in the request instead, or use a resale/* model.",
        param=field,
    )
