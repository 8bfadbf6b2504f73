"""resolve_route over a table of model IDs: pure, no event loop."""

from __future__ import annotations

import pytest

from proxy import errors
from proxy.lanes.routing import MAX_MODEL_ID_LENGTH, RoutingTable, resolve_route
from proxy.types import Lane, Route

TABLE = RoutingTable(frozenset({"gpt-5.4", "org/model"}), frozenset({"gpt-5.4", "claude"}), frozenset({"openai"}))

ROUTES = {
    "cheap/gpt-5.4": Route(Lane.CHEAP, "cheap/gpt-5.4", "gpt-5.4"),
    "cheap/org/model": Route(Lane.CHEAP, "cheap/org/model", "org/model"),
    "resale/claude": Route(Lane.RESALE, "resale/claude", "claude"),
    "byok/openai/gpt-5.4": Route(Lane.BYOK, "byok/openai/gpt-5.4", "gpt-5.4", "openai"),
    "byok/openai/any-model": Route(Lane.BYOK, "byok/openai/any-model", "any-model", "openai"),  # the tenant's own
}


@pytest.mark.parametrize(("model", "route"), ROUTES.items(), ids=ROUTES.keys())
def test_a_known_id_routes_to_its_lane(model: str, route: Route) -> None:
    assert resolve_route(model, TABLE) == route


REFUSED = {
    "empty": ("", errors.InvalidModelIdError, "must not be empty"),
    "no prefix": ("gpt-5.4", errors.InvalidModelIdError, "no valid route prefix"),
    "unknown prefix": ("chepa/gpt-5.4", errors.InvalidModelIdError, "no valid route prefix"),
    "whitespace": ("cheap/gpt 5.4", errors.InvalidModelIdError, "whitespace"),
    "control character": ("cheap/gpt\x00", errors.InvalidModelIdError, "control"),
    "too long": ("cheap/" + "m" * MAX_MODEL_ID_LENGTH, errors.InvalidModelIdError, "longer than"),
    "empty segment": ("cheap//gpt-5.4", errors.InvalidModelIdError, "empty or relative"),
    "relative segment": ("resale/../claude", errors.InvalidModelIdError, "empty or relative"),
    "byok without model": ("byok/openai", errors.InvalidModelIdError, "byok/<provider>/<model>"),
    "byok without provider": ("byok//gpt-5.4", errors.InvalidModelIdError, "byok/<provider>/<model>"),
    "not in the pool": ("cheap/claude", errors.ModelNotFoundError, "not offered on the Budget pool"),
    "not a Business model": ("resale/org/model", errors.ModelNotFoundError, "not offered on the Business lane"),
    "unknown BYOK provider": ("byok/acme/gpt-5.4", errors.ModelNotFoundError, "providers: openai"),
}


@pytest.mark.parametrize(("model", "error", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_id_is_refused_naming_the_model_param(model: str, error: type[errors.ProxyError], says: str) -> None:
    with pytest.raises(error) as refused:
        resolve_route(model, TABLE)
    assert type(refused.value) is error and refused.value.param == "model"
    assert says in refused.value.message
