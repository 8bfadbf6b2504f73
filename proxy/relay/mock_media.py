"""The `mock` provider's answers for the rest of the stateless API: moderations, images, audio and
input-token counts, in OpenAI's shapes (the official SDK parses them), without any network.

Images are a 1x1 PNG and speech is a short silent WAV, whatever format was asked for.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any

import orjson

from proxy.relay.multipart import FormBody
from proxy.relay.sse import format_event

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")
SAMPLE_RATE = 24_000
MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
JSON = dict[str, Any]


def tokens(text: str) -> int:
    return max(1, len(text.split()))


def token_usage(prompt: int, output: int) -> JSON:
    return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output,
            "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0}}


def moderation(model: str, value: Any) -> JSON:
    inputs = value if isinstance(value, list) else [value]
    result = {"flagged": False, "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
              "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
              "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}}
    return {"id": f"modr-mock{uuid.uuid4().hex[:20]}", "model": model, "results": [result for _ in inputs]}


def images(prompt: str, n: Any) -> JSON:
    count = n if isinstance(n, int) and 1 <= n <= 10 else 1
    image = {"b64_json": base64.b64encode(PNG_1X1).decode(), "revised_prompt": prompt[:200]}
    return {"created": int(time.time()), "data": [image] * count, "background": "opaque", "output_format": "png",
            "size": "1024x1024", "quality": "low", "usage": token_usage(tokens(prompt), 272 * count)}


def image_events(kind: str, prompt: str) -> list[bytes]:
    """A streamed image: one partial image, then the final one with usage (`kind`: generation or edit)."""
    picture = base64.b64encode(PNG_1X1).decode()
    common = {"created_at": int(time.time()), "size": "1024x1024", "quality": "low", "background": "opaque",
              "output_format": "png", "b64_json": picture}
    partial = {"type": f"image_{kind}.partial_image", "partial_image_index": 0, **common}
    done = {"type": f"image_{kind}.completed", **common, "usage": token_usage(tokens(prompt), 272)}
    return [format_event(orjson.dumps(e), event=str(e["type"])) for e in (partial, done)]


def speech_wav(text: str) -> bytes:
    """A silent 16-bit mono WAV, about 50 ms per word."""
    frames = b"\0\0" * (SAMPLE_RATE // 20 * tokens(text))
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(frames), b"WAVE", b"fmt ", 16, 1, 1, SAMPLE_RATE,
                         SAMPLE_RATE * 2, 2, 16, b"data", len(frames))
    return header + frames


def speech_events(text: str) -> list[bytes]:
    audio = base64.b64encode(speech_wav(text)).decode()
    events = [{"type": "speech.audio.delta", "audio": audio},
              {"type": "speech.audio.done", "usage": {"input_tokens": tokens(text), "output_tokens": 10,
                                                      "total_tokens": tokens(text) + 10}}]
    return [format_event(orjson.dumps(e)) for e in events]


def transcript_text(form: FormBody) -> str:
    upload = next((p for p in form.parts if p.filename is not None), None)
    size = len(upload.value) if upload is not None else 0
    return f"Hello from the OneKeyModels mock transcriber ({size} bytes of audio)."


def transcription(text: str) -> JSON:
    return {"text": text, "usage": {"type": "tokens", "input_tokens": 12, "output_tokens": tokens(text),
                                    "total_tokens": 12 + tokens(text)}}


def transcript_events(text: str) -> list[bytes]:
    words = text.split(" ")
    events: list[JSON] = [{"type": "transcript.text.delta", "delta": w + (" " if i < len(words) - 1 else "")}
                          for i, w in enumerate(words)]
    events.append({"type": "transcript.text.done", "text": text, "usage": transcription(text)["usage"]})
    return [format_event(orjson.dumps(e)) for e in events]


def input_tokens(flattened: str) -> JSON:
    return {"object": "response.input_tokens", "input_tokens": tokens(flattened)}
