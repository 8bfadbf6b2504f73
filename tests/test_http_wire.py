"""The upstream connection's HTTP/1.1 parsing, fed bytes directly: every framing the gateway accepts,
split at every byte, and every malformed answer it must refuse (never guess at)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.relay.http_wire import Connection, ConnectionBroken, ProtocolError


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.aborted = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def writelines(self, list_of_data) -> None:  # type: ignore[no-untyped-def,override]  # reason: asyncio's own signature
        for data in list_of_data:
            self.written += data

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name, default=None):  # type: ignore[no-untyped-def]  # reason: asyncio's own signature
        return default


def exchange(parts: list[bytes], lost: bool = False) -> tuple[Connection, asyncio.Future[None], FakeTransport]:
    loop = asyncio.get_running_loop()
    conn = Connection(loop, ("http", "up", 80), lambda c: None)
    transport = FakeTransport()
    conn.connection_made(transport)
    head = conn.begin(b"POST / HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n")
    for part in parts:
        conn.data_received(part)
    if lost:
        conn.connection_lost(None)
    return conn, head, transport


def body_of(conn: Connection) -> bytes:
    data = b""
    while conn.chunks:
        data += conn.take_all()
    return data


WHOLE = [
    # (answer, body, reusable)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"", True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", b"hello", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA \r\n0123456789\r\n0\r\n\r\n", b"0123456789", True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx", b"x", True),
    # Transfer-Encoding beside Content-Length: chunked wins, the connection is not trusted again
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", b"ok", False),
    # more bytes than the length: the answer is cut at its length, the connection dropped
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", b"ok", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", b"ok", True),
]


@pytest.mark.parametrize(("answer", "body", "reusable"), WHOLE)
async def test_every_split_of_an_answer_gives_the_same_body(answer: bytes, body: bytes, reusable: bool) -> None:
    splits = [[answer[:cut], answer[cut:]] for cut in range(len(answer) + 1)]
    splits.append([answer[i:i + 1] for i in range(len(answer))])  # one byte at a time
    for parts in splits:
        conn, head, _ = exchange([p for p in parts if p])
        assert head.done() and head.exception() is None, parts
        assert conn.complete, parts
        assert body_of(conn) == body, parts
        assert conn.reusable is reusable, parts


async def test_status_and_headers_are_parsed_case_insensitively() -> None:
    conn, head, _ = exchange([b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\nX-A: 1\r\nX-A: 2\r\n"
                              b"Content-Type:  application/json \r\nContent-Length: 2\r\n\r\n{}"])
    assert head.done()
    assert conn.status == 429
    assert conn.headers["Retry-After"] == "3"
    assert conn.headers.getall("x-a") == ["1", "2"]
    assert conn.headers["content-type"] == "application/json"


async def test_an_answer_until_close_ends_when_the_connection_closes() -> None:
    conn, head, _ = exchange([b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\n\r\nab", b"cd"])
    assert head.done() and not conn.complete and not conn.reusable
    assert conn.take_all() == b"abcd"
    conn.connection_lost(None)
    assert conn.complete and conn.take_all() == b""


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
])
async def test_a_connection_closed_mid_body_fails_the_reader(answer: bytes) -> None:
    conn, _, _ = exchange([answer], lost=True)
    assert not conn.complete
    assert conn.take_all()  # what arrived before the break is still delivered ...
    with pytest.raises(ConnectionBroken):  # ... then the break
        conn.take_all()


async def test_a_connection_closed_before_the_head_fails_the_request() -> None:
    _, head, _ = exchange([b"HTTP/1.1 200 O"], lost=True)
    assert isinstance(head.exception(), ConnectionBroken)


MALFORMED = [
    b"HTTP/2 200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNo-Colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
]


@pytest.mark.parametrize("answer", MALFORMED)
async def test_a_malformed_head_fails_the_request_and_drops_the_connection(answer: bytes) -> None:
    conn, head, transport = exchange([answer])
    assert isinstance(head.exception(), ProtocolError)
    assert transport.aborted and not conn.reusable


@pytest.mark.parametrize("chunks", [
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"zz\r\n",
    b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
])
async def test_a_malformed_chunk_fails_the_reader(chunks: bytes) -> None:
    conn, head, transport = exchange([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks])
    assert head.exception() is None
    with pytest.raises(ProtocolError):
        while True:
            conn.take_all()
            if conn.complete:
                break
    assert transport.aborted and not conn.complete


async def test_a_head_past_the_limit_is_refused() -> None:
    _, head, transport = exchange([b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\n"])
    assert isinstance(head.exception(), ProtocolError) and transport.aborted


async def test_bytes_while_idle_drop_the_connection() -> None:
    conn, _, transport = exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    conn.state = 3  # back in the pool (IDLE)
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    assert transport.aborted


async def test_a_reader_slower_than_the_upstream_pauses_the_socket() -> None:
    conn, _, transport = exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 600000\r\n\r\n", b"x" * 300_000])
    assert transport.paused
    assert len(conn.take_all()) == 300_000
    assert not transport.paused
    conn.data_received(b"y" * 300_000)
    assert conn.complete and not transport.paused
    assert conn.take_all() == b"y" * 300_000


async def test_readany_waits_for_the_next_part() -> None:
    conn, _, _ = exchange([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"])
    reading = asyncio.ensure_future(conn.readany())
    await asyncio.sleep(0)
    assert not reading.done()
    conn.data_received(b"3\r\nabc\r\n")
    assert await reading == b"abc"
    conn.data_received(b"0\r\n\r\n")
    assert await conn.readany() == b""
