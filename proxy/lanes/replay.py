"""Responses items replayed statelessly on the Budget lane, where nothing is ever stored upstream.

Pure: a scrubbed body in, the body to send out (or a 400 that names the client setting that fixes
it). The gateway asks pooled accounts for encrypted reasoning so a client can replay it in full;
references to stored items can never be resolved there.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.errors import StatefulRequestNotAllowedError

REASONING_INCLUDE = "reasoning.encrypted_content"
# Models that reason by default (so their reasoning items need replaying) and accept the include;
# others refuse it ("Encrypted content is not supported with this model"), so it is only added
# for these, or when the request itself asks for reasoning or replays reasoning items.
_REASONING_MODEL = re.compile(r"^(?:o\d|gpt-5|gpt-6|codex)", re.IGNORECASE)
_ITEM_NOT_FOUND = re.compile(r"\bItem with id\b.*\bnot found\b", re.IGNORECASE | re.DOTALL)

CLIENT_SETTINGS = (
    "Vercel AI SDK: providerOptions: {openai: {store: false}}; OpenAI Agents SDK: "
    'ModelSettings(store=False, response_include=["reasoning.encrypted_content"]); other clients: '
    'send "store": false with "include": ["reasoning.encrypted_content"] and replay output items in full'
)
_WHY = ("cheap/* requests are served by pooled accounts that never store anything (store is always "
        "false there), so an item can only be replayed in full, never by its id")


def stateless_responses_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    """`body` (a Responses request on the Budget lane) ready for a pooled account: refused if it
    replays an item by reference; asks for encrypted reasoning where the model reasons."""
    replays_reasoning = check_replayable(body)
    if not (replays_reasoning or body.get("reasoning") is not None or _REASONING_MODEL.match(model)):
        return body
    include = body.get("include")
    include = list(include) if isinstance(include, list) else []
    if REASONING_INCLUDE in include:
        return body
    return {**body, "include": [*include, REASONING_INCLUDE]}


def check_replayable(body: dict[str, Any]) -> bool:
    """Refuse input items that only stored state could resolve; True if reasoning items are replayed."""
    items = body.get("input")
    items = items if isinstance(items, list) else []
    replays_reasoning = False
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "item_reference":
            raise _refusal(f"input[{index}] is an item_reference to '{_short(item.get('id'))}'", index)
        if kind == "reasoning":
            replays_reasoning = True
            if not item.get("encrypted_content"):
                raise _refusal(f"input[{index}] is a reasoning item ('{_short(item.get('id'))}') without "
                               "its encrypted_content", index)
    return replays_reasoning


def is_item_not_found(message: str) -> bool:
    """An upstream 404 about a stored item ("Item with id 'rs_…' not found")."""
    return bool(_ITEM_NOT_FOUND.search(message))


def item_not_found_error() -> StatefulRequestNotAllowedError:
    """What a Budget client gets instead of an upstream 404 about an item it replayed by id."""
    return StatefulRequestNotAllowedError(
        f"the request replays an item by its id, which cannot work on cheap/*: {_WHY}. Fix it in the "
        f"client: {CLIENT_SETTINGS}.", param="input")


def _refusal(what: str, index: int) -> StatefulRequestNotAllowedError:
    return StatefulRequestNotAllowedError(f"{what}: {_WHY}. Fix it in the client: {CLIENT_SETTINGS}.",
                                          param=f"input[{index}]")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    return "".join(c for c in text[:80] if c.isprintable())
