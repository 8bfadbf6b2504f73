"""A fast fake OpenAI upstream on raw asyncio (no framework), so the load side stays cheap.

The path carries the stream profile: `/ev<N>/ms<D>/v1/chat/completions` answers a stream of N
content events, one every D ms (D=0: back to back), or one JSON completion when not streaming.
It must not do anything costly per request: every answer is prebuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys

import orjson

_PROFILE = re.compile(rb"^/ev(\d+)/ms(\d+)/")
_ID = "chatcmpl-bench0000000000000000"
_CREATED = 1700000000


def _completion() -> bytes:
    text = "Hello! This is a fixed answer from the benchmark's fake upstream. " * 4
    return orjson.dumps({
        "id": _ID, "object": "chat.completion", "created": _CREATED, "model": "bench-model",
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180},
    })


def _event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": _ID, "object": "chat.completion.chunk", "created": _CREATED, "model": "bench-model",
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _wire(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk, as a real upstream sends each event."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Answers:
    """Prebuilt bytes for every profile seen so far (a handful per run)."""

    def __init__(self) -> None:
        body = _completion()
        self.json = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"openai-processing-ms: 1\r\n\r\n" % len(body)) + body
        self.stream_head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                            b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n")
        self.usage = _wire(_event({**_chunk({}), "choices": [],
                                   "usage": {"prompt_tokens": 120, "completion_tokens": 50, "total_tokens": 170}}))
        self.done = _wire(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self._events: dict[int, list[bytes]] = {}

    def events(self, n: int) -> list[bytes]:
        if n not in self._events:
            parts = [_wire(_event(_chunk({"role": "assistant", "content": ""})))]
            parts += [_wire(_event(_chunk({"content": f" tok{i}"}))) for i in range(1, n - 1)]
            parts.append(_wire(_event(_chunk({}, "stop"))))
            self._events[n] = parts[:n]
        return self._events[n]


class Stream:
    """Writes one stream's events on the loop's timer: no task per stream."""

    def __init__(self, conn: Upstream, events: list[bytes], tail: bytes, delay_s: float) -> None:
        self.conn, self.events, self.tail, self.delay_s, self.i = conn, events, tail, delay_s, 0

    def step(self) -> None:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        if self.delay_s <= 0:
            for event in self.events:
                transport.write(event)  # one send() per event: separate segments, like a real upstream
            self.i = len(self.events)
        elif self.i < len(self.events):
            transport.write(self.events[self.i])
            self.i += 1
        if self.i >= len(self.events):
            transport.write(self.tail)
            self.conn.busy = False
            self.conn.process()
        else:
            self.conn.timer = asyncio.get_running_loop().call_later(self.delay_s, self.step)


def _content_length(head: bytes) -> int:
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : stop if stop >= 0 else len(head)])


class Upstream(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # reason: a TCP server hands a Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = _content_length(head)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4: end + 4 + length])
            del self.buf[: end + 4 + length]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        path = head.split(b" ", 2)[1]
        data = orjson.loads(body) if body else {}
        if not data.get("stream"):
            self.transport.write(self.answers.json)
            return
        match = _PROFILE.match(path)
        n, delay_ms = (int(match[1]), int(match[2])) if match else (50, 0)
        options = data.get("stream_options") or {}
        tail = (self.answers.usage if options.get("include_usage") else b"") + self.answers.done
        self.transport.write(self.answers.stream_head)
        self.busy = True
        Stream(self, self.answers.events(n), tail, delay_ms / 1000).step()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--core", type=int, default=None, help="pin this process to one CPU core")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    answers = Answers()
    server = await asyncio.get_running_loop().create_server(lambda: Upstream(answers), "127.0.0.1", args.port,
                                                            backlog=4096)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
