"""A client's request body by endpoint kind (JSON, or multipart for uploads), and the body that
goes upstream on its lane: the scrub (with the Budget field allow-list of lanes.budget_fields,
for JSON bodies and forms alike) and the Budget lane's stateless replay rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from proxy.config import Limits
from proxy.errors import InvalidRequestError
from proxy.http.body import parse_body, read_body
from proxy.lanes import replay, scrub
from proxy.lanes.budget_fields import budget_form_fields
from proxy.relay.multipart import FormBody, parse_form
from proxy.types import FORM_ENDPOINTS, Endpoint

_TRUE = ("true", "1")


@dataclass(slots=True)
class ClientRequest:
    data: dict[str, Any]  # the JSON body; for a form, its field names (for the forbidden-field check)
    model: str
    stream: bool
    size: int  # body bytes
    prompt_bytes: int  # the text a token estimate may count (a form's files are not text)
    form: FormBody | None = None
    keys: set[str] | None = None  # a JSON body's keys at any depth, once


async def read_client_request(request: web.Request, endpoint: Endpoint, limits: Limits) -> ClientRequest:
    if endpoint in FORM_ENDPOINTS:
        raw = await read_body(request, limits.max_upload_bytes, limits.client_body_timeout_s)
        form = parse_form(raw, request.headers.get(hdrs.CONTENT_TYPE))
        model = form.text("model")
        if not model:
            raise InvalidRequestError("the 'model' form field is required, e.g. cheap/whisper-1", param="model")
        stream = (form.text("stream") or "").lower() in _TRUE
        text = sum(len(p.value) for p in form.parts if p.filename is None)
        return ClientRequest({name: None for name in form.names}, model, stream, len(raw), text, form)
    raw = await read_body(request, limits.max_body_bytes, limits.client_body_timeout_s)
    body = parse_body(raw, limits.max_json_containers)
    stream = body.stream or (endpoint is Endpoint.AUDIO_SPEECH and body.data.get("stream_format") == "sse")
    return ClientRequest(body.data, body.model, stream, len(raw), len(raw), keys=body.keys)


def upstream_request(req: ClientRequest, endpoint: Endpoint, *, strict: bool,
                     model: str) -> tuple[dict[str, Any], FormBody | None]:
    """The JSON body (or form) to send on a lane; `strict` is the Budget pool's scrub."""
    if req.form is not None:  # the same per-endpoint allow-list as JSON bodies, applied to form fields
        return {}, req.form.keep(budget_form_fields(endpoint.value)) if strict else req.form
    data = scrub.scrub_request_body(req.data, strict=strict, endpoint=endpoint._value_)
    if strict and endpoint is Endpoint.RESPONSES:
        data = replay.stateless_responses_body(data, model)
    elif strict and endpoint is Endpoint.INPUT_TOKENS:
        replay.check_replayable(data)
    return data, None
