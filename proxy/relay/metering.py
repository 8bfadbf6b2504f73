"""The one metering rule: an upstream's usage object (or its absence) → the request's token buckets.

Buckets: input (cached included), cached input, output (reasoning included), reasoning. Read from
chat/completions (`prompt_tokens`, `prompt_tokens_details.cached_tokens`, `completion_tokens`,
`completion_tokens_details.reasoning_tokens`), Responses (`input_tokens`, `input_tokens_details`,
`output_tokens`, `output_tokens_details`) and embeddings (`prompt_tokens`). Upstream usage is
untrusted input: a count that is not a whole number >= 0 (a string, float, boolean, negative) is
ignored, a count over MAX_TOKENS is capped, cached > input or reasoning > output is clamped, and
any of these flags the request `estimated`. Pure; never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.types import Endpoint, Usage

MAX_TOKENS = 100_000_000  # per bucket and request: far above any real context window or output
BYTES_PER_TOKEN = 4  # the estimate for text nobody counted
ENVELOPE_BYTES = 256  # a stream event's JSON envelope (id, model, choices...) when the stream did not show it


def estimate(prompt_bytes: int, output_tokens: int = 0) -> Usage:
    """Usage the upstream never reported: about 4 prompt bytes a token, flagged as estimated."""
    prompt = max(1, prompt_bytes // BYTES_PER_TOKEN)
    output = min(max(output_tokens, 0), MAX_TOKENS)
    return Usage(prompt, output, prompt + output, estimated=True)


def stream_output_estimate(data_events: int, data_bytes: int, envelope_bytes: int = 0) -> int:
    """Output tokens a stream delivered, when its usage never came: about one token per content
    event, or 4 bytes of text per token once every event's envelope is discounted, whichever is
    more. `envelope_bytes` is the size of the stream's first event (a role chunk: all envelope)."""
    by_events = max(0, data_events - 1)
    envelope = envelope_bytes or ENVELOPE_BYTES
    by_bytes = max(0, data_bytes - data_events * envelope) // BYTES_PER_TOKEN
    return max(by_events, by_bytes)


def answer_output_estimate(answer: Any, endpoint: Endpoint) -> int:
    """Output tokens of a complete JSON answer that carried no usage: its text, 4 bytes a token."""
    if endpoint is Endpoint.EMBEDDINGS or not isinstance(answer, dict):
        return 0
    texts: list[Any] = []
    if endpoint is Endpoint.RESPONSES:
        for item in _dicts(answer.get("output")):
            texts += [p.get("text") for p in _dicts(item.get("content"))]
    else:
        for choice in _dicts(answer.get("choices")):
            message = choice.get("message")
            texts.append(message.get("content") if isinstance(message, dict) else choice.get("text"))
    return sum(len(t.encode("utf-8", "replace")) for t in texts if isinstance(t, str)) // BYTES_PER_TOKEN


def meter(usage: Any, endpoint: Endpoint, fallback: Usage | Callable[[], Usage]) -> Usage:
    """The buckets from an upstream `usage` value; `fallback` (an estimate, or what makes one when
    needed: most answers carry their usage, so the estimate is not worked out for them) fills what
    is missing or bad."""
    if not isinstance(usage, dict):
        return _copy(_made(fallback), estimated=True)
    responses = "input_tokens" in usage or "output_tokens" in usage
    in_key, out_key = ("input_tokens", "output_tokens") if responses else ("prompt_tokens", "completion_tokens")
    flagged = False
    prompt, bad = _count(usage.get(in_key))
    if prompt is None:
        fallback = _made(fallback)
        prompt, flagged = fallback.prompt_tokens, True
    flagged |= bad
    output, bad = _count(usage.get(out_key))
    flagged |= bad
    if output is None:
        missing_ok = endpoint is Endpoint.EMBEDDINGS and not bad
        output = 0 if missing_ok else _made(fallback).completion_tokens
        flagged |= not missing_ok
    cached, bad_cached = _detail(usage, f"{in_key}_details", "cached_tokens", prompt)
    reasoning, bad_reasoning = _detail(usage, f"{out_key}_details", "reasoning_tokens", output)
    flagged |= bad_cached or bad_reasoning
    return Usage(prompt, output, prompt + output, flagged, cached, reasoning)


def _made(fallback: Usage | Callable[[], Usage]) -> Usage:
    return fallback if isinstance(fallback, Usage) else fallback()


def _count(value: Any) -> tuple[int | None, bool]:
    """(count or None when absent/unusable, whether it was malformed or capped)."""
    if value is None:
        return None, False
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None, True
    if value > MAX_TOKENS:
        return MAX_TOKENS, True
    return value, False


def _detail(usage: dict[str, Any], section: str, name: str, ceiling: int) -> tuple[int, bool]:
    details = usage.get(section)
    if details is None:
        return 0, False
    if not isinstance(details, dict):
        return 0, True
    value, bad = _count(details.get(name))
    if value is None:
        return 0, bad
    if value > ceiling:
        return ceiling, True
    return value, bad


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _copy(usage: Usage, *, estimated: bool) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, estimated or usage.estimated,
                 usage.cached_input_tokens, usage.reasoning_tokens)
