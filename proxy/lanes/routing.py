"""Pure model-ID routing: `cheap/<m>`, `resale/<m>`, `byok/<provider>/<m>` → Route.

No I/O and no access to credentials: it only says which lane and names are meant.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Config
from proxy.errors import InvalidModelIdError, ModelNotFoundError
from proxy.types import Lane, Route

MAX_MODEL_ID_LENGTH = 256
PREFIX_HINT = "use one of the prefixes cheap/<model>, resale/<model> or byok/<provider>/<model>"


@dataclass(frozen=True, slots=True)
class RoutingTable:
    cheap_models: frozenset[str]
    resale_models: frozenset[str]
    byok_providers: frozenset[str]

    @classmethod
    def from_config(cls, config: Config) -> RoutingTable:
        cheap = frozenset(m for account in config.cheap_pool for m in account.models)
        return cls(cheap, frozenset(config.resale_models), frozenset(config.byok_providers))


def resolve_route(model: str, table: RoutingTable) -> Route:
    """Split a public model ID; raise InvalidModelIdError (400) or ModelNotFoundError (404)."""
    _check_shape(model)
    lane_name, _, rest = model.partition("/")
    if lane_name == Lane.CHEAP:
        _check_segments(model, rest)
        if rest not in table.cheap_models:
            raise _not_found(model, "the Budget pool", table.cheap_models, "cheap/")
        return Route(Lane.CHEAP, model, rest)
    if lane_name == Lane.RESALE:
        _check_segments(model, rest)
        if rest not in table.resale_models:
            raise _not_found(model, "the Business lane", table.resale_models, "resale/")
        return Route(Lane.RESALE, model, rest)
    if lane_name == Lane.BYOK:
        provider, _, name = rest.partition("/")
        if not provider or not name:
            raise InvalidModelIdError(
                f"model '{model}' is not a valid BYOK model ID: use byok/<provider>/<model>", param="model"
            )
        _check_segments(model, rest)
        if provider not in table.byok_providers:
            known = ", ".join(sorted(table.byok_providers)) or "none are configured"
            raise ModelNotFoundError(
                f"BYOK provider '{provider}' is not available (providers: {known})", param="model"
            )
        return Route(Lane.BYOK, model, name, provider)
    raise InvalidModelIdError(f"model '{_printable(model)}' has no valid route prefix: {PREFIX_HINT}", param="model")


def _check_shape(model: str) -> None:
    if not model:
        raise InvalidModelIdError(f"model must not be empty: {PREFIX_HINT}", param="model")
    if len(model) > MAX_MODEL_ID_LENGTH:
        raise InvalidModelIdError(f"model ID is longer than {MAX_MODEL_ID_LENGTH} characters", param="model")
    # isprintable() refuses every whitespace character but the ASCII space (Unicode separators and
    # controls are not printable), so one `in` finishes the whitespace check at C speed
    if not model.isprintable() or " " in model:
        raise InvalidModelIdError("model ID contains whitespace or control characters", param="model")


def _check_segments(model: str, rest: str) -> None:
    segments = rest.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise InvalidModelIdError(f"model '{model}' has an empty or relative path segment", param="model")


def _not_found(model: str, where: str, known: frozenset[str], prefix: str) -> ModelNotFoundError:
    listed = ", ".join(prefix + m for m in sorted(known)[:20]) or "none"
    return ModelNotFoundError(f"model '{model}' is not offered on {where} (available: {listed})", param="model")


def _printable(model: str) -> str:
    return model if model.isprintable() else model.encode("unicode_escape").decode("ascii")
