"""Answers the fake upstream chooses from the request itself, when nothing is scripted: pure, no I/O.

A server started as a process (the benchmark's, the endurance run's) or shared by a whole test file
cannot be scripted per request, so the request names its answer:

- a base path starting `/limited/` answers every request 429 (`Retry-After: 30`);
- a base path starting `/ev<N>/ms<D>/` (the benchmark's profiles) streams N chat events, one every
  D ms (0: back to back), or answers one fixed JSON completion when not streaming;
- otherwise the model name: `slow-<N>-<MS>` streams N content events MS ms apart, any other model
  (`fast`) 2 events at once; not streaming, one completion with N words.

Every byte comes from testkit.payloads, so the scripted fake, these profiles and the benchmark's
raw transport share one wire format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from testkit import payloads

JSON_HEADERS = (("Content-Type", "application/json"),)
STREAM_HEADERS = (("Content-Type", "text/event-stream"),)

# The benchmark's shapes: a realistic completion and chunk (ids, fingerprint, logprobs), fixed per profile.
BENCH_ID = "chatcmpl-bench0000000000000000"
BENCH_MODEL = "bench-model"
BENCH_FINGERPRINT = "fp_bench"
BENCH_TEXT = "Hello! This is a fixed answer from the benchmark's fake upstream. " * 4
BENCH_JSON_HEADERS = (("Content-Type", "application/json"), ("openai-processing-ms", "1"))
BENCH_STREAM_HEADERS = (("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"))
BENCH_DEFAULT_EVENTS = 50

_BENCH = re.compile(r"^/ev(\d+)/ms(\d+)/")
_SLOW = re.compile(r"^slow-(\d+)-(\d+)$")
Headers = tuple[tuple[str, str], ...]  # in wire order; the first is Content-Type


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: a JSON body (`events` None), or SSE `events` written `gap_s` apart and then `tail`."""

    status: int
    headers: Headers
    body: bytes = b""
    events: tuple[bytes, ...] | None = None
    gap_s: float = 0.0
    tail: tuple[bytes, ...] = ()


def by_request(path: str, body: payloads.JSON) -> Answer:
    """The answer for `body` posted to `path` (see the module docstring)."""
    if path.startswith("/limited/"):
        error = payloads.openai_error("Rate limit reached", "rate_limit_error", code="rate_limit")
        return Answer(429, (*JSON_HEADERS, ("Retry-After", "30")), orjson.dumps(error))
    stream = body.get("stream") is True
    usage = payloads.wants_usage(body)
    if match := _BENCH.match(path):
        return bench(int(match[1]), int(match[2]), stream, usage)
    model = str(body.get("model", "unknown"))
    slow = _SLOW.match(model)
    count, gap_ms = (int(slow[1]), int(slow[2])) if slow else (2, 0)
    return words(model, count, gap_ms / 1000, stream, usage)


def bench(events: int, gap_ms: int, stream: bool, usage: bool) -> Answer:
    """The benchmark's profile: `events` chat events (role, ` tok<i>` pieces, stop), or a fixed completion."""
    if not stream:
        completion = payloads.chat_completion(BENCH_MODEL, BENCH_TEXT, usage=payloads.chat_usage(120, 60),
                                              ident=BENCH_ID, fingerprint=BENCH_FINGERPRINT)
        return Answer(200, BENCH_JSON_HEADERS, orjson.dumps(completion))
    pieces = tuple(f" tok{i}" for i in range(1, events - 1))
    blocks = payloads.chat_events(BENCH_MODEL, pieces, ident=BENCH_ID, fingerprint=BENCH_FINGERPRINT)[:events]
    tail = [payloads.done()]
    if usage:
        chunk = payloads.chat_usage_chunk(BENCH_MODEL, usage=payloads.chat_usage(120, 50), ident=BENCH_ID,
                                          fingerprint=BENCH_FINGERPRINT)
        tail.insert(0, payloads.sse(chunk))
    return Answer(200, BENCH_STREAM_HEADERS, events=tuple(blocks), gap_s=gap_ms / 1000, tail=tuple(tail))


def words(model: str, count: int, gap_s: float, stream: bool, usage: bool) -> Answer:
    """`count` content events `w<i> ` `gap_s` apart, then stop (usage: 7 prompt, `count` completion tokens)."""
    tokens = payloads.chat_usage(payloads.PROMPT_TOKENS, count)
    if not stream:
        return Answer(200, JSON_HEADERS, orjson.dumps(payloads.chat_completion(model, "word " * count, usage=tokens)))
    events = tuple(payloads.sse(payloads.chat_chunk(model, {"content": f"w{i} "})) for i in range(count))
    tail = [payloads.sse(payloads.chat_chunk(model, {}, "stop"))]
    if usage:
        tail.append(payloads.sse(payloads.chat_usage_chunk(model, usage=tokens)))
    return Answer(200, STREAM_HEADERS, events=events, gap_s=gap_s, tail=(*tail, payloads.done()))
