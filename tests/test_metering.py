"""The one metering rule (proxy.relay.metering): token buckets from every answer shape, untrusted input."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.relay.metering import MAX_TOKENS, answer_output_estimate, estimate, meter, stream_output_estimate
from proxy.types import Endpoint, Usage

FALLBACK = Usage(11, 22, 33, True)


@pytest.mark.parametrize(
    ("usage", "endpoint", "expected"),
    [
        ({"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 400}, "completion_tokens": 500,
          "completion_tokens_details": {"reasoning_tokens": 200}, "total_tokens": 1500},
         Endpoint.CHAT, Usage(1000, 500, 1500, False, 400, 200)),
        ({"input_tokens": 90, "input_tokens_details": {"cached_tokens": 80}, "output_tokens": 30,
          "output_tokens_details": {"reasoning_tokens": 20}}, Endpoint.RESPONSES, Usage(90, 30, 120, False, 80, 20)),
        ({"prompt_tokens": 7, "total_tokens": 7}, Endpoint.EMBEDDINGS, Usage(7, 0, 7)),
        ({"prompt_tokens": 7, "completion_tokens": 5}, Endpoint.COMPLETIONS, Usage(7, 5, 12)),
        ({"prompt_tokens": 0, "completion_tokens": 0}, Endpoint.CHAT, Usage(0, 0, 0)),  # a real zero is trusted
        # untrusted: negative, string, float, boolean → the estimate, flagged; never an exception
        ({"prompt_tokens": -5, "completion_tokens": 3}, Endpoint.CHAT, Usage(11, 3, 14, True)),
        ({"prompt_tokens": "12", "completion_tokens": 3}, Endpoint.CHAT, Usage(11, 3, 14, True)),
        ({"prompt_tokens": 12.0, "completion_tokens": 3}, Endpoint.CHAT, Usage(11, 3, 14, True)),
        ({"prompt_tokens": True, "completion_tokens": False}, Endpoint.CHAT, Usage(11, 22, 33, True)),
        ({"prompt_tokens": 4}, Endpoint.CHAT, Usage(4, 22, 26, True)),  # output missing
        ({"prompt_tokens": 10**30, "completion_tokens": 1}, Endpoint.CHAT, Usage(MAX_TOKENS, 1, MAX_TOKENS + 1, True)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 50}, "completion_tokens": 4,
          "completion_tokens_details": {"reasoning_tokens": 9}}, Endpoint.CHAT, Usage(10, 4, 14, True, 10, 4)),
        ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": -1}, "completion_tokens": 4},
         Endpoint.CHAT, Usage(10, 4, 14, True, 0, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": "x", "completion_tokens": 4}, Endpoint.CHAT,
         Usage(10, 4, 14, True, 0, 0)),
        ({"prompt_tokens": 10, "prompt_tokens_details": None, "completion_tokens": 4}, Endpoint.CHAT, Usage(10, 4, 14)),
        (None, Endpoint.CHAT, Usage(11, 22, 33, True)),
        ("usage", Endpoint.CHAT, Usage(11, 22, 33, True)),
        ([1, 2], Endpoint.CHAT, Usage(11, 22, 33, True)),
    ],
)
def test_meter(usage: Any, endpoint: Endpoint, expected: Usage) -> None:
    assert meter(usage, endpoint, FALLBACK) == expected


def test_estimates_are_flagged_and_never_zero() -> None:
    assert estimate(0) == Usage(1, 0, 1, True)
    assert estimate(400, 30) == Usage(100, 30, 130, True)
    assert estimate(8, -3) == Usage(2, 0, 2, True)
    assert estimate(8, 10**12).completion_tokens == MAX_TOKENS


def test_output_estimates() -> None:
    chat = {"choices": [{"message": {"content": "x" * 400}}, {"message": {"content": None}}]}
    assert answer_output_estimate(chat, Endpoint.CHAT) == 100
    assert answer_output_estimate({"choices": [{"text": "abcd" * 5}]}, Endpoint.COMPLETIONS) == 5
    responses = {"output": [{"content": [{"text": "y" * 40}, {"type": "refusal"}]}, "junk"]}
    assert answer_output_estimate(responses, Endpoint.RESPONSES) == 10
    assert answer_output_estimate({"data": []}, Endpoint.EMBEDDINGS) == 0
    assert answer_output_estimate({"choices": "nope"}, Endpoint.CHAT) == 0
    # one big content event: counted by its bytes, not as one token
    assert stream_output_estimate(3, 3 * 200 + 4000, 200) == 1000
    assert stream_output_estimate(3, 3 * 256 + 400) == 100
    assert stream_output_estimate(50, 50 * 100, 100) == 49
