"""The Budget lane's stateless Responses replay rules, as a pure function over request bodies."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import StatefulRequestNotAllowedError
from proxy.lanes.replay import REASONING_INCLUDE, is_item_not_found, stateless_responses_body

ENCRYPTED = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"}


@pytest.mark.parametrize(
    ("body", "model", "include"),
    [
        ({"input": "hi"}, "gpt-5.4", [REASONING_INCLUDE]),  # reasons by default
        ({"input": "hi"}, "o4-mini", [REASONING_INCLUDE]),
        ({"input": "hi"}, "gpt-4.1", None),  # would refuse the include
        ({"input": "hi", "reasoning": {"effort": "low"}}, "my-reasoner", [REASONING_INCLUDE]),
        ({"input": [ENCRYPTED]}, "my-reasoner", [REASONING_INCLUDE]),
        ({"input": "hi", "include": ["message.output_text.logprobs"]}, "gpt-5",
         ["message.output_text.logprobs", REASONING_INCLUDE]),
        ({"input": "hi", "include": [REASONING_INCLUDE]}, "gpt-5", [REASONING_INCLUDE]),
    ],
)
def test_encrypted_reasoning_is_asked_for_where_the_model_reasons(body: dict[str, Any], model: str,
                                                                  include: list[str] | None) -> None:
    before = dict(body)
    assert stateless_responses_body(body, model).get("include") == include
    assert body == before  # not mutated


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "item_reference", "id": "rs_1"}, "input[1]"),
        ({"type": "reasoning", "id": "rs_1", "summary": []}, "input[1]"),
        ({"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": None}, "input[1]"),
    ],
)
def test_items_that_need_stored_state_are_refused_naming_the_client_settings(item: dict[str, Any], param: str) -> None:
    with pytest.raises(StatefulRequestNotAllowedError) as caught:
        stateless_responses_body({"input": [{"role": "user", "content": "hi"}, item]}, "gpt-5")
    assert caught.value.param == param
    assert "providerOptions: {openai: {store: false}}" in caught.value.message
    assert 'response_include=["reasoning.encrypted_content"]' in caught.value.message


def test_item_not_found_detection() -> None:
    assert is_item_not_found("Item with id 'rs_68a' not found. Items are not persisted when `store` is set to false.")
    assert not is_item_not_found("The model 'gpt-9' does not exist")
