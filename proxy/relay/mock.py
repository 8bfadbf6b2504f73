"""The built-in `mock` provider: answers chat, completions, responses and embeddings (and, through
mock_media, moderations, images, audio and input-token counts) in the real OpenAI shapes, without
any network, streaming in paced events with correct usage.

It exists so the default config works offline; it never sees a real key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy.relay import mock_media as media
from proxy.relay.multipart import FormBody, parse_form
from proxy.relay.reply import Reply
from proxy.relay.responses_stream import synthesize_response_events
from proxy.relay.sse import format_event
from proxy.types import FORM_ENDPOINTS, Endpoint, UpstreamTarget

EVENT_DELAY_S = 0.02
_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream"}
_MEDIA_JSON = frozenset({Endpoint.MODERATIONS, Endpoint.INPUT_TOKENS, Endpoint.IMAGES_GENERATIONS, Endpoint.AUDIO_SPEECH})


class MockReply:
    """A reply.Reply served from memory."""

    def __init__(self, status: int, headers: Mapping[str, str], parts: list[bytes], delay_s: float) -> None:
        self.status = status
        self.headers = headers
        self._parts = parts
        self._delay_s = delay_s

    @property
    def content_type(self) -> str:
        return self.headers["Content-Type"]

    @property
    def ended(self) -> bool:
        return not self._delay_s  # its parts follow each other without a pause

    async def read(self, limit: int) -> bytes:
        return b"".join(self._parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, part in enumerate(self._parts):
            if i and self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield part

    def close(self) -> None:
        self._parts = []

    def release(self) -> None:
        pass


class MockProvider:
    def __init__(self, delay_s: float = EVENT_DELAY_S) -> None:
        self.delay_s = delay_s

    def reply(self, target: UpstreamTarget, endpoint: Endpoint, body: bytes, stream: bool,
              content_type: str = "application/json") -> Reply:
        if endpoint in FORM_ENDPOINTS:
            return self._form_reply(endpoint, parse_form(body, content_type), stream)
        request = orjson.loads(body)
        model = target.model
        if endpoint in _MEDIA_JSON:
            return self._media_reply(endpoint, model, request, stream)
        if endpoint is Endpoint.EMBEDDINGS:
            return _json(_embeddings(model, request.get("input"), request.get("encoding_format")))
        prompt_text = _prompt_text(endpoint, request)
        answer = f"Hello from the OneKeyModels mock model {model}. You said: {prompt_text[:60]}".strip()
        usage = (_tokens(prompt_text), _tokens(answer))
        if endpoint is Endpoint.RESPONSES:
            response = _response(model, answer, usage)
            if not stream:
                return _json(response)
            return MockReply(200, _SSE, synthesize_response_events(response, chunk_chars=12), self.delay_s)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        if not stream:
            return _json(_completion(endpoint, model, answer, usage))
        return MockReply(200, _SSE, _completion_stream(endpoint, model, answer, usage, include_usage), self.delay_s)


    def _media_reply(self, endpoint: Endpoint, model: str, request: dict[str, Any], stream: bool) -> MockReply:
        if endpoint is Endpoint.MODERATIONS:
            return _json(media.moderation(model, request.get("input")))
        if endpoint is Endpoint.INPUT_TOKENS:
            return _json(media.input_tokens(f"{_flatten(request.get('instructions'))} {_flatten(request.get('input'))}"))
        text = _flatten(request.get("prompt") if endpoint is Endpoint.IMAGES_GENERATIONS else request.get("input"))
        if endpoint is Endpoint.IMAGES_GENERATIONS:
            if stream:
                return MockReply(200, _SSE, media.image_events("generation", text), self.delay_s)
            return _json(media.images(text, request.get("n")))
        if stream:  # speech with stream_format: "sse"
            return MockReply(200, _SSE, media.speech_events(text), self.delay_s)
        wav = media.speech_wav(text)
        return MockReply(200, {"Content-Type": "audio/wav"}, [wav[:44], wav[44:]], self.delay_s)

    def _form_reply(self, endpoint: Endpoint, form: FormBody, stream: bool) -> MockReply:
        if endpoint is Endpoint.IMAGES_EDITS:
            prompt = form.text("prompt") or ""
            if stream:
                return MockReply(200, _SSE, media.image_events("edit", prompt), self.delay_s)
            n = form.text("n") or "1"
            return _json(media.images(prompt, int(n) if n.isdigit() else 1))
        text = media.transcript_text(form)
        if stream and endpoint is Endpoint.AUDIO_TRANSCRIPTIONS:
            return MockReply(200, _SSE, media.transcript_events(text), self.delay_s)
        if (form.text("response_format") or "json") in ("text", "srt", "vtt"):
            return MockReply(200, {"Content-Type": "text/plain; charset=utf-8"}, [text.encode()], 0.0)
        if endpoint is Endpoint.AUDIO_TRANSLATIONS:
            return _json({"text": text})
        return _json(media.transcription(text))


def _json(obj: dict[str, Any]) -> MockReply:
    return MockReply(200, _JSON, [orjson.dumps(obj)], 0.0)


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_text(endpoint: Endpoint, request: dict[str, Any]) -> str:
    if endpoint is Endpoint.CHAT:
        messages = request.get("messages") or []
        parts = [m.get("content") for m in messages if isinstance(m, dict)]
        return " ".join(_flatten(p) for p in parts)
    if endpoint is Endpoint.RESPONSES:
        return _flatten(request.get("input"))
    return _flatten(request.get("prompt"))


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_flatten(v) for v in value)
    if isinstance(value, dict):
        return _flatten(value.get("text") or value.get("content") or "")
    return ""


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}


def _completion(endpoint: Endpoint, model: str, answer: str, usage: tuple[int, int]) -> dict[str, Any]:
    base = {"id": f"chatcmpl-mock{uuid.uuid4().hex[:20]}", "created": int(time.time()), "model": model}
    if endpoint is Endpoint.COMPLETIONS:
        choice = {"index": 0, "text": answer, "finish_reason": "stop", "logprobs": None}
        return {**base, "object": "text_completion", "choices": [choice], "usage": _usage(usage)}
    message = {"role": "assistant", "content": answer, "refusal": None}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(usage)}


def _completion_stream(
    endpoint: Endpoint, model: str, answer: str, usage: tuple[int, int], include_usage: bool
) -> list[bytes]:
    chat = endpoint is Endpoint.CHAT
    base = {
        "id": f"chatcmpl-mock{uuid.uuid4().hex[:20]}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    words = answer.split(" ")
    pieces = [" ".join(words[i : i + 3]) + " " for i in range(0, len(words), 3)]
    pieces[-1] = pieces[-1].rstrip()

    def chunk(delta: dict[str, Any] | str, finish: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        choice.update({"delta": delta} if chat else {"text": delta})
        extra = {"usage": None} if include_usage else {}
        return format_event(orjson.dumps({**base, "choices": [choice], **extra}))

    events = [chunk({"role": "assistant", "content": ""} if chat else "", None)]
    events += [chunk({"content": p} if chat else p, None) for p in pieces]
    events.append(chunk({} if chat else "", "stop"))
    if include_usage:
        events.append(format_event(orjson.dumps({**base, "choices": [], "usage": _usage(usage)})))
    events.append(b"data: [DONE]\n\n")
    return events


def _response(model: str, answer: str, usage: tuple[int, int]) -> dict[str, Any]:
    rid = uuid.uuid4().hex
    message = {
        "id": f"msg_mock{rid[:24]}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}],
    }
    return {
        "id": f"resp_mock{rid}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": sum(usage),
        },
    }


def _embeddings(model: str, value: Any, encoding: Any) -> dict[str, Any]:
    inputs = value if isinstance(value, list) else [value]
    data = []
    for i, item in enumerate(inputs):
        digest = hashlib.sha256(str(item).encode()).digest()
        vector = [v / 2**31 for v in struct.unpack("<8i", digest)]
        # The official SDK asks for base64 (little-endian float32) unless told otherwise.
        embedding: Any = (
            base64.b64encode(struct.pack("<8f", *vector)).decode() if encoding == "base64" else vector
        )
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(_tokens(str(item)) for item in inputs)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
