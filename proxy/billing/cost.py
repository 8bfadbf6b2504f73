"""A request's cost in micro-units from its token buckets and the price it was admitted at (pure).

    (input - cached) * input + cached * cached_input + output * output    prices per 1M tokens
    rounded up to a whole micro-unit, once per request, plus the per-request fee.
"""

from __future__ import annotations

from proxy.billing.money import MICROS
from proxy.types import Price, RequestRecord, Usage


def cost_micros(usage: Usage, price: Price) -> int:
    cached = min(max(usage.cached_input_tokens, 0), max(usage.prompt_tokens, 0))
    uncached = max(usage.prompt_tokens, 0) - cached
    scaled = uncached * price.input + cached * price.cached_input + max(usage.completion_tokens, 0) * price.output
    return -(-scaled // MICROS) + price.request


def request_cost(record: RequestRecord) -> int:
    """What a finished request is charged: nothing if it never reached an upstream, or failed there
    without producing tokens; else its metered (or estimated) tokens at its admission price."""
    usage, price = record.usage, record.price
    if price is None or record.attempts == 0:
        return 0
    if record.status >= 400 and not (usage.prompt_tokens or usage.completion_tokens):
        return 0
    return cost_micros(usage, price)
