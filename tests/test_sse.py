"""The incremental SSE decoder (WHATWG rules, byte-exact raw, any chunking) and the relay's usage/terminal probes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.relay.metering import meter
from proxy.relay.sse import (
    Decoder,
    Event,
    EventTooLarge,
    chat_usage,
    error_payload,
    format_event,
    is_terminal,
    is_usage_only_chunk,
    responses_usage,
)
from proxy.types import Endpoint, Usage

FALLBACK = Usage(9, 9, 18, True)  # what metering substitutes for a malformed count

Fields = tuple[str | None, str | None, str | None]  # (event, data, id)
NONE: Fields = (None, None, None)


def fields(event: Event) -> Fields:
    return (event.event, event.data, event.id)


def decode(chunks: list[bytes], max_event_bytes: int = 8 * 1024 * 1024) -> tuple[list[Event], bytes]:
    decoder = Decoder(max_event_bytes)
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events, decoder.close()


# --- table: one whole stream in one chunk -------------------------------------------------------

PARSE_CASES = [
    ("lf", b"data: a\n\n", [("data: a\n\n", (None, "a", None))]),
    ("cr", b"data: a\r\r", [("data: a\r\r", (None, "a", None))]),
    ("crlf", b"data: a\r\n\r\n", [("data: a\r\n\r\n", (None, "a", None))]),
    ("mixed line ends", b"data: a\rdata: b\r\ndata: c\n\r\n", [(None, (None, "a\nb\nc", None))]),
    ("multi-line data joined with LF", b"data: 1\ndata: 2\ndata: 3\n\n", [(None, (None, "1\n2\n3", None))]),
    ("one leading space removed, not two", b"data:  two\n\n", [(None, (None, " two", None))]),
    ("no space after colon", b"data:x\n\n", [(None, (None, "x", None))]),
    ("colon in value kept", b"data: {\"a\": 1}\n\n", [(None, (None, '{"a": 1}', None))]),
    ("empty data line", b"data:\n\n", [(None, (None, "", None))]),
    ("field without colon is name with empty value", b"data\ndata\n\n", [(None, (None, "\n", None))]),
    ("event, id, data", b"event: delta\nid: 7\ndata: x\n\n", [(None, ("delta", "x", "7"))]),
    ("last event and id win", b"event: a\nevent: b\nid: 1\nid: 2\ndata: x\n\n", [(None, ("b", "x", "2"))]),
    ("id with NUL ignored", b"id: 1\nid: a\0b\ndata: x\n\n", [(None, (None, "x", "1"))]),
    ("retry and unknown fields ignored", b"retry: 3000\nfoo: bar\ndata : x\ndata: y\n\n", [(None, (None, "y", None))]),
    ("fields are case-sensitive", b"Data: x\nEVENT: y\n\n", [(None, NONE)]),
    ("comment kept in raw, not a field", b": hi\ndata: x\n: there\n\n", [(None, (None, "x", None))]),
    ("comment-only keep-alive is an event", b": ping\n\n", [(": ping\n\n", NONE)]),
    ("event without data", b"event: x\n\n", [(None, ("x", None, None))]),
    ("blank lines between blocks", b"data: a\n\n\n\ndata: b\n\n", [
        ("data: a\n\n", (None, "a", None)), ("\n", NONE), ("\n", NONE), ("data: b\n\n", (None, "b", None))]),
    ("BOM at stream start ignored", b"\xef\xbb\xbfdata: a\n\n", [("\ufeffdata: a\n\n", (None, "a", None))]),
    ("BOM only at stream start", b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [
        ("data: a\n\n", (None, "a", None)), ("\ufeffdata: b\n\n", NONE)]),
    ("non-ASCII", "event: ü\ndata: 日本 🙂\n\n".encode(), [(None, ("ü", "日本 🙂", None))]),
    ("invalid UTF-8 replaced", b"data: a\xffb\n\n", [(None, (None, "a\ufffdb", None))]),
    ("done", b"data: [DONE]\n\n", [(None, (None, "[DONE]", None))]),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse(stream: bytes, expected: list[tuple[str | None, Fields]]) -> None:
    events, leftover = decode([stream])
    assert leftover == b""
    assert [fields(e) for e in events] == [f for _, f in expected]
    assert b"".join(e.raw for e in events) == stream
    for event, (raw, _) in zip(events, expected, strict=True):
        if raw is not None:
            assert event.raw == raw.encode()


# --- table: chunk boundaries --------------------------------------------------------------------

SPLIT_CASES = [
    ("CR|LF inside an event is one line end", [b"data: a\r", b"\ndata: b\r\n\r\n"], [
        (b"data: a\r\ndata: b\r\n\r\n", (None, "a\nb", None))]),
    ("CR|LF of the blank line: event goes out at CR, LF follows alone", [b"data: a\r\n\r", b"\ndata: b\n\n"], [
        (b"data: a\r\n\r", (None, "a", None)), (b"\n", NONE), (b"data: b\n\n", (None, "b", None))]),
    ("CR at chunk end then a non-LF byte", [b"data: a\r", b"data: b\r\r"], [
        (b"data: a\rdata: b\r\r", (None, "a\nb", None))]),
    ("CR at chunk end then CR", [b"data: a\r", b"\r"], [(b"data: a\r\r", (None, "a", None))]),
    ("UTF-8 character split", [b"data: \xe6\x97", b"\xa5\xf0\x9f", b"\x99\x82\n\n"], [
        ("data: 日🙂\n\n".encode(), (None, "日🙂", None))]),
    ("BOM split", [b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [(b"\xef\xbb\xbfdata: a\n\n", (None, "a", None))]),
    ("field name split", [b"da", b"ta: x\n", b"\n"], [(b"data: x\n\n", (None, "x", None))]),
    ("empty chunks ignored", [b"", b"data: x\n", b"", b"\n", b""], [(b"data: x\n\n", (None, "x", None))]),
    ("many events in one chunk", [b"data: 1\n\ndata: 2\n\ndata: 3\n\n"], [
        (b"data: 1\n\n", (None, "1", None)), (b"data: 2\n\n", (None, "2", None)), (b"data: 3\n\n", (None, "3", None))]),
]


@pytest.mark.parametrize(("chunks", "expected"), [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_chunk_boundaries(chunks: list[bytes], expected: list[tuple[bytes, Fields]]) -> None:
    events, leftover = decode(chunks)
    assert leftover == b""
    assert [(e.raw, fields(e)) for e in events] == expected


def test_events_come_out_as_soon_as_complete() -> None:
    decoder = Decoder()
    assert decoder.feed(b"data: a\n") == []
    (first,) = decoder.feed(b"\ndata: b")
    assert first.data == "a"
    assert decoder.feed(b"\n") == []
    (second,) = decoder.feed(b"\n")
    assert second.raw == b"data: b\n\n"


@pytest.mark.parametrize(
    ("stream", "leftover"),
    [
        (b"data: a\n\ndata: b\n", b"data: b\n"),
        (b"data: a\n\ndata: b", b"data: b"),
        (b"data: a\n\n: ping\r", b": ping\r"),
        (b"data: a\r\n\r", b""),  # the CR already ended the block; a missing LF is not a truncation
        (b"data: a\n\n", b""),
        (b"", b""),
    ],
)
def test_close_returns_unterminated_tail_and_resets(stream: bytes, leftover: bytes) -> None:
    decoder = Decoder()
    decoder.feed(stream)
    assert decoder.close() == leftover
    assert decoder.close() == b""
    (event,) = decoder.feed(b"\xef\xbb\xbfdata: fresh\n\n")  # a fresh stream: a BOM is allowed again
    assert event.data == "fresh"


def test_no_line_length_limit_below_the_cap() -> None:
    payload = b"x" * 3_000_000
    chunks = [b"data: "] + [payload[i : i + 65536] for i in range(0, len(payload), 65536)] + [b"\n\n"]
    events, leftover = decode(chunks, max_event_bytes=4_000_000)
    assert leftover == b"" and len(events[0].data) == len(payload)


# --- size cap ------------------------------------------------------------------------------------


def test_event_of_exactly_the_cap_passes_one_more_byte_raises() -> None:
    event = b"data: " + b"x" * 94 + b"\n\n"
    assert len(event) == 102
    assert [e.raw for e in Decoder(102).feed(event)] == [event]
    with pytest.raises(EventTooLarge) as info:
        Decoder(101).feed(event)
    assert info.value.limit == 101


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, 5000])
def test_pending_event_over_the_cap_raises_without_accumulating(chunk_size: int) -> None:
    cap = 4096
    decoder = Decoder(cap)
    stream = b"data: " + b"y" * (10 * cap)  # never terminated
    fed = 0
    with pytest.raises(EventTooLarge):
        for i in range(0, len(stream), chunk_size):
            assert decoder.feed(stream[i : i + chunk_size]) == []
            fed += chunk_size
    assert cap < fed + chunk_size <= cap + chunk_size  # raised on the first chunk that crossed the cap


def test_too_large_carries_the_events_completed_before_it() -> None:
    decoder = Decoder(64)
    with pytest.raises(EventTooLarge) as info:
        decoder.feed(b"data: ok\n\n: ping\n\ndata: " + b"z" * 100)
    assert [e.raw for e in info.value.events] == [b"data: ok\n\n", b": ping\n\n"]


# --- property tests ------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\0"), max_size=12)
_NAME = st.sampled_from(["foo", "retry", "x-y", "Data"])
_LINE = st.one_of(
    st.tuples(st.just("data"), _TEXT),
    st.tuples(st.just("event"), _TEXT),
    st.tuples(st.just("id"), _TEXT),
    st.tuples(st.just("comment"), _TEXT),
    st.tuples(st.just("bare-data"), st.just("")),
    st.tuples(st.just("other"), _NAME),
    st.tuples(st.just("tight-data"), _TEXT),
)
_ENDINGS = {"lf": [b"\n"], "cr": [b"\r"], "crlf": [b"\r\n"], "mixed": [b"\n", b"\r", b"\r\n"]}


@dataclass
class Block:
    lines: list[tuple[str, str]]

    def expected(self) -> Fields:
        data = [v for k, v in self.lines if k in ("data", "tight-data", "bare-data")]
        events = [v for k, v in self.lines if k == "event"]
        ids = [v for k, v in self.lines if k == "id"]
        return (events[-1] if events else None, "\n".join(data) if data else None, ids[-1] if ids else None)


def _line_bytes(kind: str, value: str) -> bytes:
    text = value.encode()
    if kind == "comment":
        return b":" + text
    if kind == "bare-data":
        return b"data"
    if kind == "tight-data":
        return b"data:" + (b" " + text if text.startswith(b" ") else text)
    if kind == "other":
        return text + b": v"
    return kind.encode() + b": " + text


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, Fields]], bytes]:
    """A stream of blocks plus an optional unterminated tail: (bytes, [(raw, fields)], tail)."""
    endings = _ENDINGS[draw(st.sampled_from(sorted(_ENDINGS)))]
    blocks = draw(st.lists(st.builds(Block, st.lists(_LINE, max_size=5)), max_size=6))
    tail_lines = draw(st.lists(_LINE, max_size=2))
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    previous = b"\n"
    expected: list[tuple[bytes, Fields]] = []

    def ending(empty_line: bool) -> bytes:
        nonlocal previous
        end = draw(st.sampled_from(endings))
        if empty_line and previous == b"\r" and end == b"\n":
            end = b"\r\n"  # "\r" + "\n" would be a single line end, not an empty line
        previous = end
        return end

    for block in blocks:
        raw = b"".join(_line_bytes(*line) + ending(False) for line in block.lines) + ending(True)
        expected.append((raw, block.expected()))
    tail = b"".join(_line_bytes(*line) + ending(False) for line in tail_lines)
    if tail and draw(st.booleans()):
        tail = tail.rstrip(b"\r\n")  # last line unterminated
    if expected:
        expected[0] = (bom + expected[0][0], expected[0][1])
    else:
        tail = bom + tail
    return b"".join(raw for raw, _ in expected) + tail, expected, tail


def _expected_after_splits(expected: list[tuple[bytes, Fields]], cuts: set[int]) -> list[tuple[bytes, Fields]]:
    """A cut between the CR and LF of a block's final CRLF sends the block at the CR and the LF alone."""
    out, offset = [], 0
    for raw, f in expected:
        offset += len(raw)
        if raw.endswith(b"\r\n") and offset - 1 in cuts:
            out += [(raw[:-1], f), (b"\n", NONE)]
        else:
            out.append((raw, f))
    return out


def _check(stream: bytes, expected: list[tuple[bytes, Fields]], tail: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    events, leftover = decode([stream[a:b] for a, b in itertools.pairwise(bounds)])
    assert b"".join(e.raw for e in events) + leftover == stream
    assert leftover == tail
    assert [(e.raw, fields(e)) for e in events] == _expected_after_splits(expected, set(cuts))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_property_random_streams_random_splits(data: st.DataObject) -> None:
    stream, expected, tail = data.draw(streams())
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    _check(stream, expected, tail, cuts)


@settings(max_examples=200, deadline=None)
@given(streams())
def test_property_byte_by_byte(case: tuple[bytes, list[tuple[bytes, Fields]], bytes]) -> None:
    stream, expected, tail = case
    _check(stream, expected, tail, list(range(1, len(stream))))


FIXED = (
    b"\xef\xbb\xbf: keep-alive\r\n\r\n"
    b"event: m\xc3\xbc\r\nid: 1\r\ndata: caf\xc3\xa9 \xf0\x9f\x99\x82\r\ndata:two\r\n\r\n"
    b"data: cr\rdata\r\r"
    b"data: [DONE]\n\r\n"
    b"\n"
    b"data: tail\r"
)
FIXED_EXPECTED = [
    (b"\xef\xbb\xbf: keep-alive\r\n\r\n", NONE),
    ("event: mü\r\nid: 1\r\ndata: café 🙂\r\ndata:two\r\n\r\n".encode(), ("mü", "café 🙂\ntwo", "1")),
    (b"data: cr\rdata\r\r", (None, "cr\n", None)),
    (b"data: [DONE]\n\r\n", (None, "[DONE]", None)),
    (b"\n", NONE),
]


@pytest.mark.parametrize("cut", range(len(FIXED) + 1))
def test_fixed_stream_split_at_every_point(cut: int) -> None:
    _check(FIXED, FIXED_EXPECTED, b"data: tail\r", [cut])


def test_fixed_stream_split_at_every_pair_of_points() -> None:
    for a in range(len(FIXED) + 1):
        for b in range(a, len(FIXED) + 1):
            _check(FIXED, FIXED_EXPECTED, b"data: tail\r", [a, b])


# --- probes the relay uses ------------------------------------------------------------------------


def ev(data: object, event: str | None = None) -> Event:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    (parsed,) = Decoder().feed(format_event(body, event))
    return parsed


CHUNK = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


@pytest.mark.parametrize(
    ("event", "usage", "usage_only"),
    [
        (ev(CHUNK), None, False),
        (ev({**CHUNK, "usage": None}), None, False),
        (ev({**CHUNK, "usage": USAGE}), Usage(5, 7, 12), False),
        (ev({**CHUNK, "choices": [], "usage": USAGE}), Usage(5, 7, 12), True),
        (ev(b'{"choices" : [ ], "usage" : {"prompt_tokens": 2, "completion_tokens": 3}}'), Usage(2, 3, 5), True),
        (ev({**CHUNK, "choices": [], "usage": None}), None, False),
        (ev({"choices": [{"delta": {"content": '"usage": {"prompt_tokens": 1}'}}]}), None, False),
        (ev({"choices": [], "usage": {"prompt_tokens": "x", "completion_tokens": True}}), Usage(9, 9, 18, True), True),
        (ev(b"[DONE]"), None, False),
        (ev(b'{"usage": {"prompt_tokens": 1'), None, False),
        (Event(b": ping\n\n"), None, False),
    ],
)
def test_chat_usage_and_usage_only_chunk(event: Event, usage: Usage | None, usage_only: bool) -> None:
    raw = chat_usage(event)
    assert (None if raw is None else meter(raw, Endpoint.CHAT, FALLBACK)) == usage
    assert is_usage_only_chunk(event) is usage_only


RESP_USAGE = {
    "input_tokens": 10, "output_tokens": 20, "total_tokens": 30, "output_tokens_details": {"reasoning_tokens": 4}
}
COMPLETED = {"type": "response.completed", "response": {"id": "r", "usage": RESP_USAGE}}


@pytest.mark.parametrize(
    ("event", "usage"),
    [
        (ev(COMPLETED, "response.completed"), Usage(10, 20, 30, reasoning_tokens=4)),
        (ev({**COMPLETED, "type": "response.incomplete"}, "response.incomplete"), Usage(10, 20, 30, reasoning_tokens=4)),
        (ev({**COMPLETED, "type": "response.failed"}, "response.failed"), Usage(10, 20, 30, reasoning_tokens=4)),
        (ev(COMPLETED), Usage(10, 20, 30, reasoning_tokens=4)),  # no `event:` line
        (ev({"type": "response.completed", "response": {"usage": None}}, "response.completed"), None),
        (ev({"type": "response.created", "response": {"usage": RESP_USAGE}}, "response.created"), None),
        (ev({"type": "response.output_text.delta", "delta": "x"}, "response.output_text.delta"), None),
    ],
)
def test_responses_usage(event: Event, usage: Usage | None) -> None:
    raw = responses_usage(event)
    assert (None if raw is None else meter(raw, Endpoint.RESPONSES, FALLBACK)) == usage


ERROR = {"error": {"message": "boom", "type": "server_error", "param": None, "code": "upstream_error"}}
RESP_ERROR = {"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 3}


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        (ev(ERROR), ERROR),
        (ev(CHUNK), None),
        (ev({"error": None, "choices": []}), None),
        (ev(RESP_ERROR, "error"), RESP_ERROR),
        (ev(RESP_ERROR), RESP_ERROR),  # no `event:` line
        (ev({"type": "response.failed", "response": {"error": {"code": "x", "message": "m"}}}), None),
        (ev({"type": "response.created", "response": {"error": None}}, "response.created"), None),
        (ev(b"[DONE]"), None),
        (Event(b": ping\n\n"), None),
    ],
)
def test_error_payload(event: Event, payload: dict | None) -> None:
    assert error_payload(event) == payload


ITEM_DONE = {"type": "response.output_item.done", "item": {"type": "error"}}


@pytest.mark.parametrize(
    ("event", "chat", "responses"),
    [
        (ev(b"[DONE]"), True, False),
        (ev(CHUNK), False, False),
        (ev({"type": "response.completed", "response": {}}, "response.completed"), False, True),
        (ev({"type": "response.incomplete", "response": {}}, "response.incomplete"), False, True),
        (ev({"type": "response.failed", "response": {}}, "response.failed"), False, True),
        (ev(RESP_ERROR, "error"), False, True),
        (ev({"type": "response.completed", "response": {}}), False, True),
        (ev(ITEM_DONE, "response.output_item.done"), False, False),
        (ev(ITEM_DONE), False, False),  # no `event:` line; a nested "type": "error" is not the event type
        (ev({"type": "response.in_progress", "response": {}}, "response.in_progress"), False, False),
        (Event(b": ping\n\n"), False, False),
    ],
)
def test_is_terminal(event: Event, chat: bool, responses: bool) -> None:
    assert is_terminal(event, responses=False) is chat
    assert is_terminal(event, responses=True) is responses


def test_format_event() -> None:
    assert format_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert format_event(b"{}", "response.completed") == b"event: response.completed\ndata: {}\n\n"
    (event,) = Decoder().feed(format_event(b'{"x":"\\n"}', "e"))
    assert (event.event, event.data) == ("e", '{"x":"\\n"}')
    with pytest.raises(AssertionError):
        format_event(b"a\nb")
    with pytest.raises(AssertionError):
        format_event(b"a\rb")


# The relay's fast path for plain chat chunks must agree with the event path exactly.
from proxy.relay.events import StreamRelay  # noqa: E402  # reason: grouped with the tests that use it

_PLAIN = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'


class _EventPathOnly(StreamRelay):
    def _plain_prefix(self, chunk: bytes) -> int:
        return 0  # force the event path


@pytest.mark.parametrize(
    "chunks",
    [
        [_PLAIN, _PLAIN * 3, b"data: [DONE]\n\n"],
        [_PLAIN + b"data: [DONE]\n\n"],
        [_PLAIN[:10], _PLAIN[10:] + _PLAIN, b"data: [DONE]\n\n"],  # split event: event path, then fast
        [b": ping\n\n", _PLAIN, b"data: {oops\n\n", b"data: [DONE]\n\n"],  # comment, malformed
        [_PLAIN.replace(b"\n", b"\r\n"), b"data: [DONE]\r\n\r\n"],
        [b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}\n\n' + _PLAIN],
        [b'data: {"error":{"message":"boom"}}\n\n'],
        [b'data: {"text": "data: {x}"}\n\n'],
        # plain events, then the usage chunk and [DONE] in the same read: prefix fast, rest per event
        [_PLAIN * 3 + b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n'
         + b"data: [DONE]\n\n"],
        [_PLAIN * 2 + _PLAIN[:7], _PLAIN[7:] + b"data: [DONE]\n\n"],  # a trailing partial event
        [_PLAIN + b'data: {"error":{"message":"org-AbCdEf1234567890 is over quota"}}\n\n'],
        [_PLAIN + b"\r\n" + _PLAIN],  # a CR after the prefix
        [b"\xef\xbb\xbf" + _PLAIN],  # a BOM: never the fast path
        [b"event: data: {x}\n\n" + _PLAIN],  # an event: line that merely contains "data: {"
        [_PLAIN + b'data: {"message":\nevent: error\ndata: "boom"}\n\n'],  # multi-line: an error event
        [_PLAIN + b": data: [DONE]\n\n" + _PLAIN],  # a comment that looks like [DONE]
        # one event a chunk (the common read): a usage object, an error, a finish, a second line
        [_PLAIN, b'data: {"choices":[],"usage": {"prompt_tokens":1,"completion_tokens":2}}\n\n', _PLAIN],
        [_PLAIN, b'data: {"error": "boom"}\n\n'],
        [_PLAIN, b'data: {"choices":[{"finish_reason":"stop"}],"usage":null}\n\n', b"data: [DONE]\n\n"],
        [_PLAIN, b'data: {"a":1}\ndata: {"b":2}\n\n', b'event: x\ndata: {"c":3}\n\n', b'data: {"d":4}\r\n\r\n'],
    ],
)
@pytest.mark.parametrize("mask", [None, ("acct-name",)])
def test_relay_fast_path_matches_event_path(chunks, mask):
    fast = StreamRelay(1 << 20, responses=False, hide_usage_chunk=True, mask=mask)
    slow = _EventPathOnly(1 << 20, responses=False, hide_usage_chunk=True, mask=mask)
    out_fast = b"".join(fast.feed(c) for c in chunks)
    out_slow = b"".join(slow.feed(c) for c in chunks)
    assert out_fast == out_slow
    for field in ("data_events", "terminal", "malformed", "usage", "error"):
        assert getattr(fast, field) == getattr(slow, field), field


def _terminal_split(relay: StreamRelay, chunks: list[bytes]) -> tuple[bytes, bytes]:
    """(everything forwarded before the terminal event, the terminal event onwards), as feed() marks it."""
    before, after, seen = b"", b"", False
    for chunk in chunks:
        out = relay.feed(chunk)
        if relay.terminal_at >= 0:
            assert not seen, "the terminal event is marked once"
            seen = True
            before, after = before + out[:relay.terminal_at], out[relay.terminal_at:]
        elif seen:
            after += out
        else:
            before += out
    assert seen
    return before, after


_USAGE_CHUNK = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'


@pytest.mark.parametrize("chunks", [
    [_PLAIN, b"data: [DONE]\n\n"],
    [_PLAIN + b"data: [DONE]\n\n"],
    [_PLAIN * 2 + _USAGE_CHUNK + b"data: [DONE]\n\n"],  # usage (event path) and [DONE] in one chunk
    [_PLAIN, _USAGE_CHUNK[:20], _USAGE_CHUNK[20:] + b"data: [DO", b"NE]\n\n"],
    [_PLAIN.replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"],
])
@pytest.mark.parametrize("fast", [True, False])
def test_relay_marks_where_the_terminal_event_starts(chunks: list[bytes], fast: bool) -> None:
    """The writer commits the charge between the two parts: they must be the stream's own bytes, split
    exactly before the terminal event, on the fast path and the event path alike."""
    relay = (StreamRelay if fast else _EventPathOnly)(1 << 20, responses=False, hide_usage_chunk=True)
    before, after = _terminal_split(relay, chunks)
    assert after.replace(b"\r", b"") == b"data: [DONE]\n\n"
    assert before + after == b"".join(chunks).replace(_USAGE_CHUNK, b"")  # the hidden usage chunk only is dropped
    assert relay.usage is None or relay.usage["prompt_tokens"] == 3  # usage is known before the end goes out


def test_relay_marks_a_responses_terminal_event() -> None:
    delta = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"hi"}\n\n'
    done = (b'event: response.completed\ndata: {"type":"response.completed","response":'
            b'{"usage":{"input_tokens":3,"output_tokens":1}}}\n\n')
    relay = StreamRelay(1 << 20, responses=True, hide_usage_chunk=False)
    before, after = _terminal_split(relay, [delta, delta + done[:30], done[30:]])
    assert (before, after) == (delta * 2, done)
    assert relay.usage is not None and relay.usage["input_tokens"] == 3
