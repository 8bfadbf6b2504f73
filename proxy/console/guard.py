"""The console sub-application's one middleware: security headers with a per-response CSP
nonce, and HTML error pages (404, 403, 500) instead of the API's JSON errors.

It is attached to the console sub-app only, so /v1, /admin and /metrics never run it.
"""

from __future__ import annotations

import logging

from aiohttp import web

from proxy.console.render import nonce, render
from proxy.http.middleware import Handler
from proxy.store.rows import StoreUnavailable

log = logging.getLogger("okm.console")

_TITLES = {403: "Not allowed", 404: "Page not found", 405: "Not allowed", 413: "Too large", 503: "Unavailable"}
_TEXT = {
    403: "This action was refused: the form was stale or not sent from this console. Go back, reload and try again.",
    404: "There is no such page here, or it belongs to a workspace you are not a member of.",
    503: "The console cannot reach its store right now. Try again in a moment.",
}


def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce(request)}'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")


def error_page(request: web.Request, status: int, message: str | None = None) -> web.Response:
    title = _TITLES.get(status, "Something went wrong")
    text = message or _TEXT.get(status, "The console could not answer this request.")
    return render(request, "error.html", {"title": title, "message": text}, status=status)


def _where(request: web.Request) -> str:
    """The route's pattern, not the path: paths carry invitation tokens and workspace names."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "?"


@web.middleware
async def console_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        custom = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        response = exc if exc.status < 400 else error_page(request, exc.status, custom)
    except StoreUnavailable:
        log.warning("console: store unavailable for %s %s", request.method, _where(request))
        response = error_page(request, 503)
    except Exception:  # a bug of ours: a plain error page, the traceback only in the log
        log.exception("console: unexpected error on %s %s", request.method, _where(request))
        response = error_page(request, 500)
    security_headers(request, response)
    return response
