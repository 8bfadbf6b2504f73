"""Build a complete Responses API SSE sequence from one final (non-stream) Responses object.

Pure: dict in, event bytes out. For upstreams that cannot stream /v1/responses (`responses_stream: false`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import orjson

from proxy.relay.sse import format_event

JSON = dict[str, Any]


class EventType(StrEnum):
    CREATED = "response.created"
    IN_PROGRESS = "response.in_progress"
    COMPLETED = "response.completed"
    INCOMPLETE = "response.incomplete"
    FAILED = "response.failed"
    ITEM_ADDED = "response.output_item.added"
    ITEM_DONE = "response.output_item.done"
    PART_ADDED = "response.content_part.added"
    PART_DONE = "response.content_part.done"
    TEXT_DELTA = "response.output_text.delta"
    TEXT_DONE = "response.output_text.done"
    REFUSAL_DELTA = "response.refusal.delta"
    REFUSAL_DONE = "response.refusal.done"
    ARGS_DELTA = "response.function_call_arguments.delta"
    ARGS_DONE = "response.function_call_arguments.done"
    SUMMARY_PART_ADDED = "response.reasoning_summary_part.added"
    SUMMARY_PART_DONE = "response.reasoning_summary_part.done"
    SUMMARY_DELTA = "response.reasoning_summary_text.delta"
    SUMMARY_DONE = "response.reasoning_summary_text.done"


_FINAL_EVENT = MappingProxyType({"incomplete": EventType.INCOMPLETE, "failed": EventType.FAILED})
_ID_PREFIX = MappingProxyType({"message": "msg", "function_call": "fc", "reasoning": "rs"})


def synthesize_response_events(response: JSON, *, chunk_chars: int = 64) -> list[bytes]:
    """The event sequence a streaming call would have produced, ending in the response's final status.

    Missing response and item ids are filled in (the SDK's accumulator matches items by id), and the
    same ids appear in the final event's response. Raises ValueError when `output`, an item's
    `content` or a reasoning `summary` is not a list of objects.
    """
    if chunk_chars < 1:
        raise ValueError("chunk_chars must be >= 1")
    final = _with_ids(response)
    start = {**final, "status": "in_progress", "output": [], "usage": None}
    for key in ("error", "incomplete_details", "completed_at"):
        if key in start:
            start[key] = None
    bodies: list[tuple[EventType, JSON]] = [
        (EventType.CREATED, {"response": start}),
        (EventType.IN_PROGRESS, {"response": start}),
    ]
    for index, item in enumerate(final["output"]):
        bodies.extend(_item_events(item, index, chunk_chars))
    bodies.append((_FINAL_EVENT.get(str(final.get("status")), EventType.COMPLETED), {"response": final}))
    return [
        format_event(orjson.dumps({"type": kind, "sequence_number": seq, **body}), kind)
        for seq, (kind, body) in enumerate(bodies)
    ]


def _objects(value: Any, where: str) -> list[JSON]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{where} must be a list of objects")
    return value


def _with_ids(response: JSON) -> JSON:
    if not isinstance(response, dict):
        raise ValueError("response must be an object")
    rid = response.get("id") or f"resp_{uuid.uuid4().hex}"
    suffix = str(rid).removeprefix("resp_")
    output = []
    for index, item in enumerate(_objects(response.get("output"), "output")):
        prefix = _ID_PREFIX.get(str(item.get("type")))
        if prefix and not item.get("id"):
            item = {**item, "id": f"{prefix}_{suffix}_{index}"}
        output.append(item)
    return {**response, "id": rid, "object": response.get("object", "response"), "output": output}


def _chunks(text: str, size: int) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


def _item_events(item: JSON, index: int, size: int) -> Iterator[tuple[EventType, JSON]]:
    kind = item.get("type")
    where = {"item_id": item.get("id", ""), "output_index": index}
    if kind == "message":
        yield EventType.ITEM_ADDED, {"output_index": index, "item": {**item, "status": "in_progress", "content": []}}
        for part_index, part in enumerate(_objects(item.get("content"), f"output[{index}].content")):
            yield from _content_part_events(part, {**where, "content_index": part_index}, size)
    elif kind == "function_call":
        added = {**item, "status": "in_progress", "arguments": ""}
        yield EventType.ITEM_ADDED, {"output_index": index, "item": added}
        arguments = item.get("arguments") or ""
        for delta in _chunks(arguments, size):
            yield EventType.ARGS_DELTA, {**where, "delta": delta}
        yield EventType.ARGS_DONE, {**where, "name": item.get("name", ""), "arguments": arguments}
    elif kind == "reasoning":
        added = {**item, "status": "in_progress", "summary": []}
        if "content" in added:
            added["content"] = []
        yield EventType.ITEM_ADDED, {"output_index": index, "item": added}
        for summary_index, part in enumerate(_objects(item.get("summary"), f"output[{index}].summary")):
            yield from _summary_part_events(part, {**where, "summary_index": summary_index}, size)
    else:
        yield EventType.ITEM_ADDED, {"output_index": index, "item": item}
    yield EventType.ITEM_DONE, {"output_index": index, "item": item}


def _content_part_events(part: JSON, where: JSON, size: int) -> Iterator[tuple[EventType, JSON]]:
    kind = part.get("type")
    if kind == "output_text":
        text = part.get("text") or ""
        empty = {**part, "text": ""}
        for key in ("annotations", "logprobs"):
            if key in empty:
                empty[key] = []
        yield EventType.PART_ADDED, {**where, "part": empty}
        for delta in _chunks(text, size):
            yield EventType.TEXT_DELTA, {**where, "delta": delta, "logprobs": []}
        yield EventType.TEXT_DONE, {**where, "text": text, "logprobs": part.get("logprobs") or []}
    elif kind == "refusal":
        refusal = part.get("refusal") or ""
        yield EventType.PART_ADDED, {**where, "part": {**part, "refusal": ""}}
        for delta in _chunks(refusal, size):
            yield EventType.REFUSAL_DELTA, {**where, "delta": delta}
        yield EventType.REFUSAL_DONE, {**where, "refusal": refusal}
    else:
        yield EventType.PART_ADDED, {**where, "part": part}
    yield EventType.PART_DONE, {**where, "part": part}


def _summary_part_events(part: JSON, where: JSON, size: int) -> Iterator[tuple[EventType, JSON]]:
    text = part.get("text") or ""
    yield EventType.SUMMARY_PART_ADDED, {**where, "part": {**part, "text": ""}}
    for delta in _chunks(text, size):
        yield EventType.SUMMARY_DELTA, {**where, "delta": delta}
    yield EventType.SUMMARY_DONE, {**where, "text": text}
    yield EventType.SUMMARY_PART_DONE, {**where, "part": part}
