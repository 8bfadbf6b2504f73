"""Stream framing, property-based and through a real gateway: random events, line ends (LF, CR, CRLF,
mixed), comments, `event:`/`id:`/`retry:` lines and random read boundaries. What the client gets is the
upstream's bytes (less the hidden usage chunk), it parses to the same events, and the usage row is
right. Also replays the SSE fuzzer's saved inputs (fuzz/regressions/sse).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import checks
from proxy import appkeys
from testkit import payloads
from testkit.upstream import Stream, split
from tests.conftest import MODEL, Gateway
from tests.fakes.hostile import ROOT

CHAT = [{"role": "user", "content": "hi"}]
EOLS = ("\n", "\r", "\r\n")
REGRESSIONS = ROOT / "fuzz" / "regressions" / "sse"
SEEDS = ROOT / "fuzz" / "seeds" / "sse"
SETTINGS = settings(max_examples=25, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz._-0123456789"), min_size=1, max_size=10)


@dataclass(frozen=True)
class Sent:
    """One upstream event as the test wrote it."""

    raw: bytes
    event: str | None
    data: str | None
    id: str | None


@st.composite
def block(draw: st.DrawFn, data: bytes, event: str | None = None, with_extras: bool = True) -> Sent:
    """An SSE block around one data payload: optional comment, event:, id:, retry: lines; random line ends."""
    fields: list[str] = []
    event_id = None
    if with_extras and draw(st.booleans()):
        fields.append(":" + draw(st.sampled_from([" ping", "", " keep-alive ✓"])))
    if event is None and with_extras and draw(st.booleans()):
        event = draw(NAMES)
    if event is not None:
        fields.append(f"event:{draw(st.sampled_from(['', ' ']))}{event}")
    if with_extras and draw(st.booleans()):
        event_id = draw(NAMES)
        fields.append(f"id: {event_id}")
    if with_extras and draw(st.integers(0, 9)) == 0:
        fields.append("retry: 3000")
    lines = [f.encode() for f in fields] + [b"data:" + draw(st.sampled_from([b"", b" "])) + data]
    eols = [draw(st.sampled_from(EOLS)) for _ in lines]
    last = draw(st.sampled_from(EOLS if eols[-1] != "\r" else ("\r", "\r\n")))  # "\r" + "\n" would be one line end
    raw = b"".join(line + eol.encode() for line, eol in zip(lines, eols, strict=True)) + last.encode()
    return Sent(raw, event, data.decode(), event_id)


@st.composite
def comment_block(draw: st.DrawFn) -> Sent:
    eol = draw(st.sampled_from(EOLS)).encode()
    second = eol if eol != b"\r" else draw(st.sampled_from([b"\r", b"\r\n"]))
    return Sent(b": " + draw(NAMES).encode() + eol + second, None, None, None)


@st.composite
def chat_stream(draw: st.DrawFn) -> tuple[list[Sent], Sent, tuple[int, int], bool]:
    """(events including comments and [DONE], the usage chunk, its token counts, client asked for usage)."""
    events = [draw(block(orjson.dumps(payloads.chat_chunk(MODEL, {"role": "assistant", "content": ""}))))]
    for text in draw(st.lists(TEXT, max_size=6)):
        if draw(st.integers(0, 3)) == 0:
            events.append(draw(comment_block()))
        events.append(draw(block(orjson.dumps(payloads.chat_chunk(MODEL, {"content": text})))))
    events.append(draw(block(orjson.dumps(payloads.chat_chunk(MODEL, {}, "stop")))))
    tokens = (draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)))
    usage = {**payloads.chat_usage_chunk(MODEL),
             "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)}}
    usage_block = draw(block(orjson.dumps(usage), with_extras=False))
    done = draw(block(b"[DONE]", with_extras=False))
    return [*events, usage_block, done], usage_block, tokens, draw(st.booleans())


@st.composite
def responses_stream(draw: st.DrawFn) -> tuple[list[Sent], tuple[int, int]]:
    pieces = tuple(draw(st.lists(TEXT, min_size=1, max_size=5)))
    tokens = (draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)))
    out = []
    for raw in payloads.responses_events(MODEL, pieces):
        body = orjson.loads(payloads.data_of(raw))
        if body["type"] == "response.completed":
            body["response"]["usage"].update(input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens))
        out.append(draw(block(orjson.dumps(body), event=body["type"])))
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(comment_block()))
    return out, tokens


@st.composite
def cuts(draw: st.DrawFn, size: int) -> list[int]:
    return draw(st.lists(st.integers(1, max(1, size - 1)), max_size=12, unique=True))


def parse(raw: bytes) -> list[tuple[str | None, str, str | None]]:
    """An independent reading of an SSE body (WHATWG rules, per-block id): (event, data, id) per data event."""
    out = []
    event = event_id = None
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", raw.decode())[:-1]:
        if not line:
            if data:
                out.append((event, "\n".join(data), event_id))
            event = event_id = None
            data = []
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
    return out


async def relay(gw: Gateway, fake: Any, data: bytes, offsets: list[int], body: dict[str, Any]) -> tuple[bytes, Any]:
    fake.script(Stream(split(data, *offsets, gap_s=0.001)))
    answer = await gw.post(f"/v1/{'responses' if 'input' in body else 'chat/completions'}", body)
    assert answer.status == 200, answer.body[:300]
    request_id = {k.lower(): v for k, v in answer.headers.items()}["x-request-id"]
    store = gw.app[appkeys.STORE]
    for _ in range(200):
        row = await store.get_usage(request_id)
        if row is not None and row.outcome != "in_flight":
            return answer.body, row
        await asyncio.sleep(0.01)
    raise AssertionError("no final usage row")


@pytest.fixture
async def gw(gateway: Any) -> Gateway:
    return await gateway(pool=1, resale=1, byok=(), limits={"idle_timeout_s": 2})


@SETTINGS
@given(case=chat_stream(), data=st.data())
async def test_chat_stream_framing_survives_the_gateway(gw: Gateway, case: Any, data: st.DataObject) -> None:
    events, usage_block, tokens, asked = case
    upstream = b"".join(e.raw for e in events)
    offsets = data.draw(cuts(len(upstream)))
    body: dict[str, Any] = {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True}
    if asked:
        body["stream_options"] = {"include_usage": True}
    got, row = await relay(gw, gw.pool[0], upstream, offsets, body)
    shown = [e for e in events if asked or e is not usage_block]
    expected = b"".join(e.raw for e in shown)
    if got != expected and not asked and usage_block.raw.endswith(b"\r\n"):
        # A read that ends between the CR and LF of the hidden chunk's last line end: that LF, alone, is
        # a block of its own (an empty line) and goes out. The only byte a client may see in its place.
        before = b"".join(e.raw for e in events[: events.index(usage_block)])
        expected = before + b"\n" + expected[len(before):]
    assert got == expected
    assert parse(got) == [(e.event, e.data, e.id) for e in shown if e.data is not None]
    assert (row.outcome, row.prompt_tokens, row.completion_tokens, row.tokens_estimated) == ("ok", *tokens, False)


@SETTINGS
@given(case=responses_stream(), data=st.data())
async def test_responses_stream_framing_survives_the_gateway(gw: Gateway, case: Any, data: st.DataObject) -> None:
    events, tokens = case
    upstream = b"".join(e.raw for e in events)
    body = {"model": f"resale/{MODEL}", "input": "hi", "stream": True}
    got, row = await relay(gw, gw.resale[0], upstream, data.draw(cuts(len(upstream))), body)
    assert got == upstream
    assert parse(got) == [(e.event, e.data, e.id) for e in events if e.data is not None]
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == ("ok", *tokens)


# --- fuzzer regressions --------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted([*REGRESSIONS.glob("*"), *SEEDS.glob("*")]), ids=lambda p: p.name)
def test_sse_fuzzer_inputs(path: Path) -> None:
    """Saved fuzzer failures (and the seeds): same events whatever the reads, every byte kept."""
    checks.one_input("sse", path.read_bytes())


async def test_hidden_usage_chunk_cut_between_cr_and_lf(gw: Gateway) -> None:
    """The one case where the client's bytes are not the upstream's minus the usage chunk: a lone LF."""
    events = payloads.default_events("/v1/chat/completions", {"model": MODEL, "stream_options": {"include_usage": True}},
                                     "\r\n")
    usage = payloads.sse(payloads.chat_usage_chunk(MODEL), eol="\r\n")
    upstream = b"".join(events)
    cut = upstream.index(usage) + len(usage) - 1
    got, row = await relay(gw, gw.pool[0], upstream, [cut], {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True})
    assert got == upstream.replace(usage, b"\n")
    assert parse(got) == parse(upstream.replace(usage, b""))
    assert (row.prompt_tokens, row.completion_tokens) == (7, 5)
