"""The stateful parts of the OpenAI API (files, batches, vector stores, stored responses and chat
completions, conversations, assistants, ...): a clear 404 naming what the gateway does serve.

They keep state at one provider account; the gateway relays only stateless calls, and on the
Budget pool they could never work at all.
"""

from __future__ import annotations

from aiohttp import web

from proxy import appkeys, errors
from proxy.types import Endpoint

STATEFUL_PREFIXES = ("files", "uploads", "batches", "vector_stores", "conversations", "assistants", "threads",
                     "fine_tuning", "evals", "containers")
SUPPORTED = ", ".join([*(f"POST /v1/{e.value}" for e in Endpoint), "GET /v1/models", "GET /v1/models/{model}"])


def stateful_error(method: str, path: str) -> errors.NotFoundError:
    where = "".join(c if c.isprintable() else "?" for c in f"{method} {path}"[:200])
    return errors.NotFoundError(
        f"{where} is not supported: it needs state kept at the provider (stored files, batches, vector "
        "stores, responses, chat completions or conversations), and this gateway relays only the stateless "
        f"OpenAI API: {SUPPORTED}. On cheap/* (Budget) such endpoints could never work: consecutive requests "
        "are served by different pooled accounts and nothing is stored there (store is always false). Send "
        "what they would hold with each request instead (the whole conversation; files inline).",
        code="unsupported_endpoint")


async def stateful_endpoint(request: web.Request) -> web.Response:
    await request.app[appkeys.AUTH].authenticate(request)  # a bad key is still a 401 first
    raise stateful_error(request.method, request.path)


def add_stateful_routes(app: web.Application) -> None:
    """After the proxied POST routes, so `POST /v1/responses/input_tokens` keeps its own."""
    for prefix in STATEFUL_PREFIXES:
        app.router.add_route("*", f"/v1/{prefix}", stateful_endpoint)
        app.router.add_route("*", f"/v1/{prefix}/{{tail:.*}}", stateful_endpoint)
    app.router.add_route("*", "/v1/responses/{tail:.+}", stateful_endpoint)  # GET/DELETE/cancel/input_items
    app.router.add_get("/v1/chat/completions", stateful_endpoint)  # the stored-completions list
    app.router.add_route("*", "/v1/chat/completions/{tail:.+}", stateful_endpoint)
