"""The invariants the fuzzers hold the two parsers to; pure, so the tests can replay saved inputs.

check_sse: proxy.sse.Decoder gives the same events whatever the read boundaries, keeps every byte
(events + unterminated tail == input) and raises nothing but EventTooLarge.
check_body: proxy.body.parse_body accepts or refuses with InvalidRequestError (never anything else),
and whatever it accepts can be forwarded (orjson), scanned for smuggled fields and routed.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import ProxyError
from proxy.http.body import parse_body
from proxy.lanes import scrub
from proxy.lanes.routing import RoutingTable, resolve_route
from proxy.relay.sse import Decoder, EventTooLarge

HEADER = 9  # sse inputs: 1 byte picks the size cap, 8 bytes pick read boundaries, the rest is the stream
TABLE = RoutingTable(frozenset({"gpt-test", "a/b"}), frozenset({"gpt-test"}), frozenset({"openai"}))


def _decode(chunks: list[bytes], cap: int) -> tuple[list[tuple[Any, ...]], bool, bytes]:
    """(every event delivered, whether the cap was hit, the unterminated tail)."""
    decoder = Decoder(cap)
    events: list[tuple[Any, ...]] = []
    try:
        for chunk in chunks:
            events += [(e.raw, e.event, e.data, e.id) for e in decoder.feed(chunk)]
    except EventTooLarge as exc:
        events += [(e.raw, e.event, e.data, e.id) for e in exc.events]
        return events, True, b""
    return events, False, decoder.close()


def check_sse(data: bytes, cuts: list[int], cap: int) -> None:
    pieces, last = [], 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    whole, split = _decode([data], cap), _decode(pieces, cap)
    for raw, _, payload, _ in whole[0] + split[0]:
        assert raw.endswith((b"\n", b"\r")), "an event was dispatched before its blank line"
        assert len(raw) <= cap and (payload is None or isinstance(payload, str))
    if not whole[1] and not split[1]:
        # Where a CRLF that ends a block is cut between CR and LF, the LF comes out on its own (an event
        # with no fields): block boundaries may move by that byte, the bytes and the events may not.
        assert _fields(split) == _fields(whole), "events depend on where the reads fall"
        assert _joined(split) == _joined(whole) == data, "bytes were lost, invented or depend on the reads"
        return
    # The cap tripped: what went out before it agrees, except for one known edge. A block whose final
    # CRLF is cut between CR and LF ends at the CR, one byte shorter, so a block of cap+1 bytes passes
    # or trips the cap depending on the reads.
    short, long_ = sorted((whole, split), key=lambda d: len(_joined(d)))
    assert _joined(long_).startswith(_joined(short)), "bytes depend on where the reads fall"
    if _joined(long_) != _joined(short):
        assert any(len(e[0]) >= cap - 1 for e in long_[0]), "the size cap depends on where the reads fall"


def _fields(decoded: tuple[list[tuple[Any, ...]], bool, bytes]) -> tuple[list[tuple[Any, ...]], bool]:
    return [e[1:] for e in decoded[0] if e[1:] != (None, None, None)], decoded[1]


def _joined(decoded: tuple[list[tuple[Any, ...]], bool, bytes]) -> bytes:
    return b"".join(e[0] for e in decoded[0]) + decoded[2]


def check_body(data: bytes) -> None:
    try:
        body = parse_body(data)
    except ProxyError as exc:
        assert exc.status == 400 and exc.message, "a refusal must be a 400 that says why"
        orjson.dumps(exc.to_openai_body())
        return
    assert isinstance(body.data, dict) and isinstance(body.model, str) and isinstance(body.stream, bool)
    assert orjson.loads(orjson.dumps(body.data)) == body.data, "an accepted body would reach the upstream changed"
    scrub.find_forbidden_field(body.data)
    try:
        resolve_route(body.model, TABLE)
    except ProxyError as exc:
        assert exc.status in (400, 404)


def one_input(target: str, data: bytes) -> None:
    """One fuzzer input, as the fuzzers and the regression tests feed it."""
    if target == "body":
        check_body(data)
        return
    cap = 16 + data[0] * 4 if data else 64  # small caps reach the size limit often
    cuts = [b * 7 % max(1, len(data) - HEADER) for b in data[1:HEADER]]
    check_sse(data[HEADER:], cuts, cap)
