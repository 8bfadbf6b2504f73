"""Admission for money: before anything goes upstream a priced request of a prepaid (or budgeted, or
key-limited) workspace takes a hold in the store, or is refused with a 402 naming the balance.

One store round trip per held request, which commits the request's admission usage row: that row
(its hold_micros and owner) is the hold's record. Postpaid workspaces without limits, free models
and a disabled price book never reach the store here. Holds are released (and the real cost
charged) by the usage writer, in the transaction of the request's final usage row; a hold whose
process died is released by proxy/store/instances.py (the hold's owner is the process's instance id).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy import appkeys, errors
from proxy.billing.cost import cost_micros
from proxy.billing.money import format_amount
from proxy.billing.prices import PriceBook
from proxy.relay import metering
from proxy.store.billing_sql import month_of
from proxy.store.rows import BillingAccount, HoldRequest, KeySpend, StoreError
from proxy.types import Endpoint, Price, RequestRecord

OWNER: web.AppKey[str] = web.AppKey("billing_owner", str)  # this process's instance id (proxy/store/instances.py)
STORE_RETRY_AFTER_S = 1.0  # the Retry-After of a hold refused because the store cannot be reached
MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Endpoints whose answers carry no generated tokens: a hold covers their input (and request fee) only.
NO_OUTPUT_ENDPOINTS = frozenset({Endpoint.EMBEDDINGS, Endpoint.MODERATIONS, Endpoint.INPUT_TOKENS})


def max_output_tokens(data: dict[str, Any], endpoint: Endpoint, price: Price, book: PriceBook) -> int:
    """The output a hold covers: the request's own cap (bounded by the model's), else the model's, else the default."""
    if endpoint in NO_OUTPUT_ENDPOINTS:
        return 0
    ceiling = price.max_output_tokens
    for name in MAX_OUTPUT_FIELDS:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return min(value, ceiling) if ceiling is not None else min(value, metering.MAX_TOKENS)
    return ceiling if ceiling is not None else book.default_max_output_tokens


def hold_amount(data: dict[str, Any], endpoint: Endpoint, price: Price, book: PriceBook, prompt_bytes: int) -> int:
    """The cost of the estimated input plus the maximum output, at the request's price."""
    return cost_micros(metering.estimate(prompt_bytes, max_output_tokens(data, endpoint, price, book)), price)


@dataclass(frozen=True, slots=True)
class Refusal:
    error: errors.PaymentRequiredError


def decide(amount: int, currency: str, month: str) -> Callable[[BillingAccount, KeySpend | None], Refusal | None]:
    """The rule, run inside the hold's transaction on the locked account row."""

    def money(micros: int) -> str:
        return f"{format_amount(micros)} {currency}"

    def check(account: BillingAccount, key: KeySpend | None) -> Refusal | None:
        if account.mode != "postpaid" and account.balance_micros - account.held_micros < amount:
            return Refusal(errors.InsufficientQuotaError(
                f"Insufficient balance: this workspace has {money(account.balance_micros)} "
                f"({money(account.held_micros)} held by requests in progress) and this request needs a hold of "
                f"{money(amount)}. Add credit, or lower max_tokens."))
        if account.budget_micros is not None:
            spent = account.month_charges_micros if account.month == month else 0
            if spent + account.held_micros + amount > account.budget_micros:
                return Refusal(errors.BudgetExceededError(
                    f"This request would pass the workspace's monthly budget of {money(account.budget_micros)}: "
                    f"{money(spent)} spent this month, {money(account.held_micros)} held, {money(amount)} needed."))
        if key is not None and key.limit_micros is not None:
            return _key_refusal(key, key.limit_micros, amount, money)
        return None

    return check


def _key_refusal(key: KeySpend, limit: int, amount: int, money: Callable[[int], str]) -> Refusal | None:
    if key.spent_micros + key.held_micros + amount <= limit:
        return None
    return Refusal(errors.KeyLimitExceededError(
        f"This request would pass this API key's spend limit of {money(limit)}: "
        f"{money(key.spent_micros)} spent, {money(key.held_micros)} held, {money(amount)} needed."))


async def take_hold(app: web.Application, book: PriceBook, record: RequestRecord, data: dict[str, Any],
                    endpoint: Endpoint, prompt_bytes: int) -> None:
    """Price the request and, where its workspace needs one, hold its maximum cost; raise the 402."""
    route, principal = record.route, record.principal
    assert route is not None and principal is not None  # reason: routed and authenticated before this
    price = book.resolve(route.public_model)
    record.price = price
    if price is None or not principal.needs_hold:
        return
    amount = hold_amount(data, endpoint, price, book, prompt_bytes)
    if amount <= 0:
        return
    month = month_of(time.time())
    # Set before the wait: a client that leaves while the hold commits still gets a final row that
    # releases it (settlement releases only the hold its stored admission row still holds, so this is safe).
    record.hold_micros = amount
    hold = HoldRequest(record.request_id, principal.workspace_id, principal.key_id, amount, app[OWNER], month,
                       app[appkeys.USAGE].admission_row(record), key_limited=principal.key_limited)
    try:
        refusal = await app[appkeys.STORE].take_hold(hold, decide(amount, book.currency, month))
    except StoreError as exc:
        record.hold_micros = 0
        raise errors.ServiceUnavailableError("Billing is unavailable: the gateway's store cannot be written; "
                                             "retry shortly.", code="billing_unavailable",
                                             retry_after=STORE_RETRY_AFTER_S) from exc
    if refusal is None:
        record.admitted = True  # its admission row committed with the hold
        return
    record.hold_micros = 0
    app[appkeys.METRICS].child(app[appkeys.METRICS].billing_refusals, refusal.error.code).inc()
    raise refusal.error
