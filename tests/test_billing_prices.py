"""Money parsing, the price book (config validation, patterns) and the cost rule: pure, no I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.billing.cost import cost_micros
from proxy.billing.money import AmountError, format_amount, parse_amount
from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.types import Price, Usage


@pytest.mark.parametrize(("text", "micros"), [
    ("12.345678", 12_345_678), ("0", 0), ("0.5", 500_000), ("-3.25", -3_250_000), ("+7", 7_000_000),
    (" 10.00 ", 10_000_000), ("0.000001", 1), ("1000000", 10**12),
])
def test_parse_amount(text: str, micros: int) -> None:
    assert parse_amount(text) == micros


@pytest.mark.parametrize(("value", "fragment"), [
    ("1e3", "'1e3' is not a decimal"), ("abc", "'abc' is not a decimal"), ("0.0000001", "more than 6 decimal"),
    (".5", "'.5' is not"), ("", "'' is not"), ("1,5", "'1,5'"), (0.5, "must be a decimal string"),
    (10, "must be a decimal string"), ("99999999999999", "too large"), ("NaN", "'NaN'"),
])
def test_parse_amount_refuses(value: Any, fragment: str) -> None:
    with pytest.raises(AmountError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        parse_amount(value)


def test_negative_refused_where_not_allowed() -> None:
    with pytest.raises(AmountError, match="must not be negative"):
        parse_amount("-1", negative=False)


@pytest.mark.parametrize(("micros", "text"), [(12_345_678, "12.345678"), (0, "0.000000"), (-5, "-0.000005"),
                                              (10**12, "1000000.000000")])
def test_format_amount(micros: int, text: str) -> None:
    assert format_amount(micros) == text
    assert parse_amount(text) == micros


def test_cost_rounds_up_once_per_request() -> None:
    price = Price(input=300_000, cached_input=30_000, output=2_000_000, request=200)  # 0.30 / 0.03 / 2.00 per 1M
    # 3 input tokens at 0.30/1M = 0.9 micro-units → 1, plus the request fee
    assert cost_micros(Usage(3, 0, 3), price) == 1 + 200
    # (1000-400)*0.30 + 400*0.03 + 500*2.00 = 180 + 12 + 1000
    assert cost_micros(Usage(1000, 500, 1500, cached_input_tokens=400, reasoning_tokens=300), price) == 1192 + 200
    assert cost_micros(Usage(), price) == 200
    # cached above input is clamped; the rule never goes negative
    assert cost_micros(Usage(10, 0, 10, cached_input_tokens=99), Price(input=10**6, cached_input=0)) == 0


BASE = {"providers": {"mock": {"type": "mock"}},
        "lanes": {"cheap": {"pool": [{"name": "p", "type": "mock", "models": ["gpt-5.4", "gpt-5.4-mini"]}]},
                  "resale": {"models": {"gpt-5.4": {"upstreams": [{"provider": "mock"}]}}}}}


def _load(tmp_path: Path, billing: dict[str, Any]) -> Any:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "billing": billing}), encoding="utf-8")
    return load_config(path, environ={"OKM_KEY_PEPPER": "pepper"})


def test_price_book_patterns_and_exact(tmp_path: Path) -> None:
    book = _load(tmp_path, {"enabled": True, "prices": {
        "cheap/*": {"input": "0.50", "output": "2.00"}, "cheap/gpt-5.4-mini": {"input": "0.10", "output": "0.40"},
        "resale/gpt-*": {"input": "1.25", "cached_input": "0.125", "output": "10.00", "max_output_tokens": 128000},
        "byok/*": {"request": "0.0002"}}}).billing
    assert book.enabled and book.currency == "USD" and book.default_max_output_tokens == 4096
    assert book.resolve("cheap/gpt-5.4-mini") == Price(100_000, 100_000, 400_000, 0, None, "cheap/gpt-5.4-mini")
    assert book.resolve("cheap/gpt-5.4").source == "cheap/*"
    resale = book.resolve("resale/gpt-5.4")
    assert resale is not None and (resale.cached_input, resale.max_output_tokens) == (125_000, 128000)
    assert book.resolve("byok/openai/x") == Price(request=200, source="byok/*")
    assert book.resolve("other/x") is None


@pytest.mark.parametrize(("billing", "fragment"), [
    ({"enabled": True, "prices": {"cheap/*": {"input": "1"}}}, "routed model resale/gpt-5.4 has no price"),
    ({"enabled": True, "prices": {"cheap/gpt-5.4": {"input": "1"}, "resale/*": {"input": "1"}}},
     "cheap/gpt-5.4-mini has no price"),
    ({"prices": {"cheap/*": {"input": 0.5}}}, "billing.prices.cheap/*.input: price input must be a decimal string"),
    ({"prices": {"cheap/*": {"input": "1e3"}}}, "'1e3' is not a decimal"),
    ({"prices": {"cheap/*": {"output": "0.0000001"}}}, "more than 6 decimal"),
    ({"prices": {"cheap/*": {"output": "-1"}}}, "must not be negative"),
    ({"prices": {"cheap/*": {}}}, "needs at least one of"),
    ({"prices": {"cheap/*": {"input": "1", "colour": "red"}}}, "colour: unknown key"),
    ({"prices": {"*/gpt": {"input": "1"}}}, "only have a trailing"),
    ({"currency": "US DOLLARS"}, "currency"),
    ({"enabled": "yes"}, "billing.enabled: must be true or false"),
])
def test_price_book_refusals_name_the_field(tmp_path: Path, billing: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, billing)
    assert fragment in str(caught.value)


def test_disabled_billing_needs_no_prices(tmp_path: Path) -> None:
    assert _load(tmp_path, {"enabled": False}).billing.enabled is False
