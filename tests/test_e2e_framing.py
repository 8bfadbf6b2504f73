"""SSE framing end to end: every line-end style, comments, `event:`/`id:` lines and byte streams cut
at awkward offsets reach the client as the upstream's exact bytes; and the two stream timeouts.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from testkit import payloads
from testkit.payloads import blocks, data_of, sse
from testkit.upstream import End, Reply, Stream, split
from tests.conftest import MODEL, Gateway

CHAT = [{"role": "user", "content": "hi"}]
PIECES = ("hé", "llo ✓", " wörld 🙂")
EOLS = {"lf": ["\n"], "cr": ["\r"], "crlf": ["\r\n"], "mixed": ["\n", "\r\n", "\r"]}


def framed(eols: list[str], ids: bool = True) -> bytes:
    """A chat stream with comments, `event:`/`id:` lines and multi-byte text; event i uses eols[i % n]."""
    def eol(i: int) -> str:
        return eols[i % len(eols)]

    def id_(i: int) -> str | None:
        return str(i) if ids else None

    out = [f": keep-alive{eol(0)}{eol(0)}".encode()]
    out.append(sse(payloads.chat_chunk(MODEL, {"role": "assistant", "content": ""}), id=id_(1), eol=eol(1)))
    for i, piece in enumerate(PIECES, start=2):
        out.append(sse(payloads.chat_chunk(MODEL, {"content": piece}), event="message", id=id_(i), eol=eol(i)))
    out.append(f": ping{eol(5)}{eol(5)}".encode())
    out.append(sse(payloads.chat_chunk(MODEL, {}, "stop"), eol=eol(6)))
    out.append(payloads.done(eol(7)))
    return b"".join(out)


def landmarks(data: bytes) -> dict[str, int]:
    second = data.index(b"data:", data.index(b"data:") + 1)
    crlf = data.find(b"\r\n")
    return {
        "first-byte": 1,
        "inside-data-field": second + 3,
        "inside-utf8-2": data.index("✓".encode()) + 1,
        "inside-utf8-4": data.index("🙂".encode()) + 2,
        "inside-crlf-or-at-eol": crlf + 1 if crlf >= 0 else data.index(b"\r" if b"\r" in data else b"\n"),
        "after-first-block": len(data.split(b"keep-alive")[0]) + len(b"keep-alive") + 2,
        "last-byte": len(data) - 1,
    }


async def _relay(gw: Gateway, pieces: tuple[Any, ...]) -> bytes:
    gw.pool[0].script(Stream(pieces))
    answer = await gw.post("/v1/chat/completions", {"model": f"cheap/{MODEL}", "messages": CHAT, "stream": True})
    assert answer.status == 200
    return answer.body


@pytest.mark.parametrize("spot", list(landmarks(framed(["\r\n"]))))
@pytest.mark.parametrize("eol", list(EOLS))
async def test_split_at_an_awkward_offset_reaches_the_client_byte_exact(gateway: Any, eol: str, spot: str) -> None:
    gw: Gateway = await gateway(pool=1)
    data = framed(EOLS[eol])
    got = await _relay(gw, split(data, landmarks(data)[spot], gap_s=0.02))
    assert got == data


def short(eols: list[str]) -> bytes:
    """A short stream (short enough to cut at every byte quickly) with every kind of line."""
    def eol(i: int) -> str:
        return eols[i % len(eols)]

    return (f": k{eol(0)}{eol(0)}data: {{\"x\":\"é✓🙂\"}}{eol(1)}{eol(1)}"
            f"event: m{eol(2)}id: 2{eol(2)}data: {{\"y\":1}}{eol(2)}{eol(2)}data: [DONE]{eol(3)}{eol(3)}").encode()


@pytest.mark.parametrize("eol", list(EOLS))
async def test_split_at_every_byte_reaches_the_client_byte_exact(gateway: Any, eol: str) -> None:
    gw: Gateway = await gateway(pool=1)
    data = short(EOLS[eol])
    got = await _relay(gw, split(data, *range(1, len(data)), gap_s=0.001))
    assert got == data


@pytest.mark.parametrize("eol", list(EOLS))
async def test_sdk_reads_every_framing(gateway: Any, eol: str) -> None:
    gw: Gateway = await gateway(pool=1)
    # No `id:` lines here: the SDK keeps the last id and then reads a comment-only block as an empty event.
    data = framed(EOLS[eol], ids=False)
    gw.pool[0].script(Stream(split(data, *range(7, len(data), 11), gap_s=0.002)))
    stream = await gw.client.chat.completions.create(model=f"cheap/{MODEL}", messages=CHAT, stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(PIECES)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_responses_stream_with_crlf_and_splits(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1)
    data = b"".join(payloads.responses_events(MODEL, pieces=PIECES, eol="\r\n"))
    gw.resale[0].script(Stream(split(data, *range(5, len(data), 97), gap_s=0.002)))
    answer = await gw.post("/v1/responses", {"model": f"resale/{MODEL}", "input": "hi", "stream": True})
    assert answer.body == data


# --- timeouts --------------------------------------------------------------------------------------


async def test_idle_timeout_mid_stream_is_an_inband_error(gateway: Any) -> None:
    gw: Gateway = await gateway(resale=1, limits={"idle_timeout_s": 0.5})
    events = payloads.chat_events(MODEL)[:2]
    gw.resale[0].script(Stream((*events, 30.0), end=End.HANG))
    start = time.monotonic()
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": True})
    elapsed = time.monotonic() - start
    assert answer.status == 200 and 0.4 < elapsed < 1.5
    got = blocks(answer.body)
    assert got[:2] == events and len(got) == 3 and b"[DONE]" not in answer.body
    assert orjson.loads(data_of(got[2]))["error"]["code"] == "upstream_timeout"
    assert await gw.resale[0].wait_no_connections(within_s=1.0) < 1.0
    [row] = await gw.usage_rows(1)
    assert row["outcome"] == "upstream_timeout"


STALLS = {
    "json-before-headers": (Reply(delay_s=30), False),
    "stream-before-headers": (Stream(delay_s=30), True),
    "json-request-stream-before-headers": (Stream(delay_s=30), False),
    "after-headers": (Stream((30.0,), end=End.HANG), True),
    "only-a-comment": (Stream((b": keep-alive\n\n", 30.0), end=End.HANG), True),
}


@pytest.mark.parametrize("stall,stream", list(STALLS.values()), ids=list(STALLS))
async def test_first_byte_timeout_is_504_before_any_byte(gateway: Any, stall: Any, stream: bool) -> None:
    gw: Gateway = await gateway(resale=1, limits={"first_byte_timeout_s": 0.5})
    gw.resale[0].script(stall)
    start = time.monotonic()
    answer = await gw.post("/v1/chat/completions", {"model": f"resale/{MODEL}", "messages": CHAT, "stream": stream})
    elapsed = time.monotonic() - start
    assert answer.status == 504, answer.body
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.error["code"] == "upstream_timeout"
    assert 0.4 < elapsed < 1.5
    assert await gw.resale[0].wait_no_connections(within_s=1.0) < 1.0
