"""Thin HTTP handlers: the four proxied endpoints, the model list, health and readiness."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from proxy import appkeys, errors
from proxy.http.pipeline import proxy_request
from proxy.http.unsupported import add_stateful_routes
from proxy.runtime import Runtime
from proxy.types import Endpoint, Lane, Phase

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def endpoint_handler(endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy_request(request, endpoint)

    handle.okm_endpoint = endpoint  # type: ignore[attr-defined]  # reason: read by the middleware to open a record
    handle.__name__ = endpoint.name.lower()
    return handle


async def list_models(request: web.Request) -> web.Response:
    data = [_model(i) for i in await _visible_models(request)]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: the SDK sends `cheap%2Fgpt-5.4`; `cheap/gpt-5.4` is accepted too."""
    model_id = unquote(request.match_info["model"])
    if model_id not in await _visible_models(request):
        raise errors.ModelNotFoundError(
            f"The model '{model_id[:300]}' does not exist or this workspace may not call it; "
            "GET /v1/models lists the models it may call", param="model")
    return web.Response(body=orjson.dumps(_model(model_id)), content_type="application/json")


async def _visible_models(request: web.Request) -> list[str]:
    """The prefixed model IDs the caller's workspace may call (authenticates the request)."""
    app = request.app
    auth = app[appkeys.AUTH]
    principal = await auth.authenticate(request)
    runtime: Runtime = app[appkeys.STATE].runtime
    ids = [f"{Lane.CHEAP}/{m}" for m in runtime.lanes.cheap.pool.models()]
    ids += [f"{Lane.RESALE}/{m}" for m in sorted(runtime.config.resale_models)]
    if principal.byok_enabled:
        stored = auth.byok_providers(principal.workspace_id)
        for name, provider in sorted(runtime.config.byok_providers.items()):
            if name in stored:
                ids += [f"{Lane.BYOK}/{name}/{m}" for m in provider.models]
    return ids


def _model(model_id: str) -> dict[str, Any]:
    owner = {"cheap": "okm-budget", "resale": "okm-business", "byok": "okm-byok"}[model_id.split("/", 1)[0]]
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    phase = request.app[appkeys.DRAIN].phase
    if phase >= Phase.DRAINING:
        return web.json_response({"status": "draining"}, status=503)
    if phase is Phase.STARTING:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    for endpoint in Endpoint:
        app.router.add_post(f"/v1/{endpoint.value}", endpoint_handler(endpoint))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
    add_stateful_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
