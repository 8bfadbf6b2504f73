"""OpenAI-shaped answers and SSE event bytes: the one place the fakes' wire format is built.

Pure builders, no I/O. The scriptable fake upstream (testkit.upstream), its request-chosen profiles
(testkit.profiles) and the benchmark's raw transport all build their bytes here. Shapes follow the
real OpenAI API closely enough for the official SDK to parse them; they never import the gateway,
so a test comparing the two checks the gateway against an independent source.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

CREATED = 1_700_000_000
PIECES = ("Hello", " from", " the", " fake", " upstream.")
TEXT = "".join(PIECES)
PROMPT_TOKENS = 7
COMPLETION_TOKENS = len(PIECES)
EMBEDDING_DIMS = 4

JSON = dict[str, Any]
CHAT_ID = "chatcmpl-fake1"
FINGERPRINT = "fp_fake"


def chat_usage(prompt: int = PROMPT_TOKENS, completion: int = COMPLETION_TOKENS) -> JSON:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def responses_usage() -> JSON:
    return {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}


def sse(data: JSON | str | bytes, *, event: str | None = None, id: str | None = None, eol: str = "\n") -> bytes:
    """One SSE block with the given line end; dicts are encoded compactly, like OpenAI does."""
    if isinstance(data, dict):
        data = orjson.dumps(data)
    elif isinstance(data, str):
        data = data.encode()
    end = eol.encode()
    head = b""
    if event is not None:
        head += b"event: " + event.encode() + end
    if id is not None:
        head += b"id: " + id.encode() + end
    return head + b"data: " + data + end + end


def done(eol: str = "\n") -> bytes:
    return sse("[DONE]", eol=eol)


# --- chat completions and legacy completions ------------------------------------------------------


def chat_completion(model: str, text: str = TEXT, *, usage: JSON | None = None, ident: str = CHAT_ID,
                    fingerprint: str = FINGERPRINT) -> JSON:
    return {
        "id": ident, "object": "chat.completion", "created": CREATED, "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage if usage is not None else chat_usage(),
    }


def chat_chunk(model: str, delta: JSON, finish: str | None = None, *, ident: str = CHAT_ID,
               fingerprint: str = FINGERPRINT) -> JSON:
    return {"id": ident, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def chat_usage_chunk(model: str, *, usage: JSON | None = None, ident: str = CHAT_ID,
                     fingerprint: str = FINGERPRINT) -> JSON:
    return {"id": ident, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "system_fingerprint": fingerprint, "choices": [], "usage": usage if usage is not None else chat_usage()}


def chat_events(model: str, pieces: tuple[str, ...] = PIECES, eol: str = "\n", *, ident: str = CHAT_ID,
                fingerprint: str = FINGERPRINT) -> list[bytes]:
    """The role chunk, content chunks and the finish chunk; the caller adds the usage chunk and [DONE]."""
    def chunk(delta: JSON, finish: str | None = None) -> bytes:
        return sse(chat_chunk(model, delta, finish, ident=ident, fingerprint=fingerprint), eol=eol)

    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": p}) for p in pieces), chunk({}, "stop")]


def completion(model: str, text: str = TEXT) -> JSON:
    return {"id": "cmpl-fake1", "object": "text_completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": chat_usage()}


def completion_events(model: str, pieces: tuple[str, ...] = PIECES, eol: str = "\n") -> list[bytes]:
    chunk = {"id": "cmpl-fake1", "object": "text_completion", "created": CREATED, "model": model}
    events = [sse({**chunk, "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}]}, eol=eol)
              for p in pieces]
    events.append(sse({**chunk, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]},
                      eol=eol))
    return events


def usage_chunk_for(path: str, model: str) -> JSON:
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return {"id": "cmpl-fake1", "object": "text_completion", "created": CREATED, "model": model,
                "choices": [], "usage": chat_usage()}
    return chat_usage_chunk(model)


# --- responses -------------------------------------------------------------------------------------


def response_object(model: str, text: str = TEXT, status: str = "completed") -> JSON:
    message = {"type": "message", "id": "msg_fake1", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
    return {"id": "resp_fake1", "object": "response", "created_at": CREATED, "status": status, "error": None,
            "incomplete_details": None, "model": model, "output": [message] if status == "completed" else [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": responses_usage() if status == "completed" else None}


def responses_events(model: str, pieces: tuple[str, ...] = PIECES, eol: str = "\n") -> list[bytes]:
    """The event sequence of a streamed Responses call, each block with `event:` and `data:`."""
    text = "".join(pieces)
    start = response_object(model, status="in_progress")
    final = response_object(model, text)
    item = final["output"][0]
    where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": []}
    bodies: list[JSON] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": part},
        *({"type": "response.output_text.delta", **where, "delta": p, "logprobs": []} for p in pieces),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": final},
    ]
    return [sse({**body, "sequence_number": n}, event=body["type"], eol=eol) for n, body in enumerate(bodies)]


# --- embeddings and errors -------------------------------------------------------------------------


def embeddings(model: str, inputs: Any, encoding_format: str | None) -> JSON:
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for index, _ in enumerate(items):
        vector = [0.25 * (index + 1), -0.5, 0.125, 1.0][:EMBEDDING_DIMS]
        value: Any = vector
        if encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}}


def openai_error(message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> JSON:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


MEDIA_USAGE = {"input_tokens": 11, "output_tokens": 22, "total_tokens": 33,
               "input_tokens_details": {"text_tokens": 11, "image_tokens": 0}}
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


def media_answer(path: str, model: str) -> JSON | None:
    """OpenAI's answers for moderations, images, transcripts and input-token counts."""
    if path.endswith("/moderations"):
        return {"id": "modr-fake1", "model": model, "results": [
            {"flagged": True, "categories": {"violence": True}, "category_scores": {"violence": 0.9}}]}
    if path.endswith(("/images/generations", "/images/edits")):
        return {"created": CREATED, "data": [{"b64_json": base64.b64encode(PNG).decode()}], "usage": MEDIA_USAGE}
    if path.endswith("/audio/transcriptions"):
        return {"text": "fake transcript", "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 3,
                                                     "total_tokens": 17}}
    if path.endswith("/audio/translations"):
        return {"text": "fake translation"}
    if path.endswith("/responses/input_tokens"):
        return {"object": "response.input_tokens", "input_tokens": 42}
    return None


def default_answer(path: str, body: JSON) -> JSON:
    """The non-stream answer OpenAI would give for `body` at `path`."""
    model = str(body.get("model", "unknown"))
    media = media_answer(path, model)
    if media is not None:
        return media
    if path.endswith("/chat/completions"):
        return chat_completion(model)
    if path.endswith("/completions"):
        return completion(model)
    if path.endswith("/responses"):
        return response_object(model)
    if path.endswith("/embeddings"):
        return embeddings(model, body.get("input"), body.get("encoding_format"))
    return openai_error(f"Unknown path {path}", code="unknown_url")


def default_events(path: str, body: JSON, eol: str = "\n") -> list[bytes]:
    """The stream OpenAI would send for `body` at `path`, honouring stream_options.include_usage."""
    model = str(body.get("model", "unknown"))
    if path.endswith("/responses"):
        return responses_events(model, eol=eol)
    chat = path.endswith("/chat/completions")
    events = chat_events(model, eol=eol) if chat else completion_events(model, eol=eol)
    if wants_usage(body):
        events.append(sse(usage_chunk_for(path, model), eol=eol))
    return [*events, done(eol)]


def wants_usage(body: JSON | None) -> bool:
    options = (body or {}).get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def blocks(raw: bytes) -> list[bytes]:
    """An LF-framed SSE body cut into its event blocks (each with its blank line)."""
    return [part + b"\n\n" for part in raw.split(b"\n\n") if part]


def data_of(block: bytes) -> bytes:
    """The `data:` payload of one LF-framed block."""
    return b"\n".join(line[6:] for line in block.split(b"\n") if line.startswith(b"data: "))
