"""The price book: config `billing:` → validated prices per public model ID or trailing-`*` pattern.

Pure: built once per config generation (so SIGHUP reloads it), looked up per request with no I/O.
Prices are per 1M tokens (and per request), held as integer micro-units; YAML floats are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.billing.money import MICROS, AmountError, format_amount, parse_amount
from proxy.config_reader import Reader
from proxy.types import Price

PRICE_FIELDS = ("input", "cached_input", "output", "request")
DEFAULT_MAX_OUTPUT_TOKENS = 4096
MAX_PRICE_MICROS = 1_000_000 * MICROS  # 1,000,000 per 1M tokens: far above any real price; keeps costs in range


@dataclass(frozen=True, slots=True)
class PriceBook:
    enabled: bool = False
    currency: str = "USD"
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    exact: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))
    patterns: tuple[tuple[str, Price], ...] = ()  # (prefix before the `*`, price), longest prefix first

    def resolve(self, model_id: str) -> Price | None:
        """The exact model ID's price, else the longest matching `*` pattern's, else None."""
        price = self.exact.get(model_id)
        if price is not None:
            return price
        for prefix, pattern_price in self.patterns:
            if model_id.startswith(prefix):
                return pattern_price
        return None

    def entries(self) -> list[Price]:
        """Every entry, exact IDs first, for `billing prices`."""
        return [*self.exact.values(), *(p for _, p in self.patterns)]


DISABLED = PriceBook()


def read_price_book(r: Reader, routed: Iterable[str]) -> PriceBook:
    """Read `billing:`; with billing enabled every routed cheap/ and resale/ model needs a price."""
    enabled = r.boolean("enabled", default=False)
    currency = r.string("currency", default="USD")
    if not currency.isalnum() or len(currency) > 8:
        r.fail("currency", f"must be a short currency code such as USD, got '{currency[:20]}'")
    default_max = r.integer("default_max_output_tokens", default=DEFAULT_MAX_OUTPUT_TOKENS, minimum=1)
    exact: dict[str, Price] = {}
    patterns: list[tuple[str, Price]] = []
    for key, entry in r.section("prices").entries():
        price = _price(entry, key)
        if "*" in key[:-1]:
            entry.fail("", "a pattern may only have a trailing '*' (e.g. 'byok/*')")
        if key.endswith("*"):
            patterns.append((key[:-1], price))
        else:
            exact[key] = price
    r.reject_unknown()
    patterns.sort(key=lambda item: len(item[0]), reverse=True)
    book = PriceBook(enabled, currency, default_max, MappingProxyType(exact), tuple(patterns))
    if enabled:
        missing = sorted(m for m in routed if book.resolve(m) is None)
        if missing:
            r.fail("prices", f"billing is enabled but routed model {missing[0]} has no price "
                             f"(add it, or a pattern such as '{missing[0].split('/', 1)[0]}/*')"
                             + (f"; also unpriced: {', '.join(missing[1:6])}" if len(missing) > 1 else ""))
    return book


def _price(entry: Reader, key: str) -> Price:
    values: dict[str, int] = {}
    for name in PRICE_FIELDS:
        if entry.has(name):
            raw = entry.data[name]
            entry.seen.add(name)
            try:
                values[name] = parse_amount(raw, what=f"price {name}", negative=False)
            except AmountError as exc:
                entry.fail(name, str(exc))
            if values[name] > MAX_PRICE_MICROS:
                entry.fail(name, f"must be at most {format_amount(MAX_PRICE_MICROS)}")
    if not values:
        entry.fail("", f"a price needs at least one of {', '.join(PRICE_FIELDS)}")
    max_output = entry.optional_integer("max_output_tokens", minimum=1)
    entry.reject_unknown()
    base = values.get("input", 0)
    return Price(input=base, cached_input=values.get("cached_input", base), output=values.get("output", 0),
                 request=values.get("request", 0), max_output_tokens=max_output, source=key)


def price_json(price: Price) -> dict[str, object]:
    out: dict[str, object] = {"model": price.source}
    for name in PRICE_FIELDS:
        micros = getattr(price, name)
        out[name], out[f"{name}_micros"] = format_amount(micros), micros
    out["max_output_tokens"] = price.max_output_tokens
    return out
