"""Every answer's last step before the socket: operator secrets masked in its headers and body
(`on_response_prepare`), and in each write of a stream (`GuardedStreamResponse`). Counted in
`okm_secrets_masked_total{where}`; it decides nothing else about the answer.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from proxy.lanes.secret_guard import SecretGuard
from proxy.telemetry.metrics import Metrics


def mask_outgoing(guard: SecretGuard, metrics: Metrics, response: web.StreamResponse) -> None:
    """Part of the app's on_response_prepare hook (app.answer_hook): headers of every answer; the body of every complete answer."""
    response.headers[hdrs.SERVER] = SERVER  # not aiohttp's "Python/3.x aiohttp/3.y": no versions for scanners
    # one scan per secret over all the values (a header value holds no LF, so no secret spans two)
    if guard.clean_text("\n".join(response.headers.values())) is None:
        items: list[tuple[str, str]] = []
    else:
        items = list(response.headers.items())
    for name, value in items:
        clean = guard.clean_text(value)
        if clean is not None:
            metrics.secrets_masked.labels("header").inc()
            response.headers.popall(name)
            response.headers[name] = clean
    if isinstance(response, web.Response) and isinstance(response.body, (bytes, bytearray)):
        body = guard.clean(bytes(response.body))
        if body is not None:
            metrics.secrets_masked.labels("body").inc()
            response.body = body
            response.headers[hdrs.CONTENT_LENGTH] = str(len(body))


SERVER = "okm-gateway"


class GuardedStreamResponse(web.StreamResponse):
    """A stream whose every write is searched for operator secrets (masked in place)."""

    def __init__(self, guard: SecretGuard, metrics: Metrics, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]  # reason: StreamResponse's keyword arguments, passed through
        self._guard = guard
        self._metrics = metrics

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        clean = self._guard.clean(data if isinstance(data, bytes) else bytes(data))
        if clean is not None:
            self._metrics.secrets_masked.labels("event").inc()
            data = clean
        await super().write(data)
