"""The rest of the stateless OpenAI API through the official SDK, on every lane, against fake
upstreams on loopback: moderations, images (JSON and multipart, streamed), audio (binary answers
relayed as they arrive, multipart uploads, the transcription stream), input-token counts, and the
stateful endpoints' 404."""

from __future__ import annotations

import email
import email.policy
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy import appkeys
from testkit import payloads
from testkit.upstream import End, FakeUpstream, Received, Reply, Stream
from tests.conftest import MODEL, Gateway, pool_key, resale_key

LANES = ["cheap", "resale", "byok/openai"]
BYOK_KEY = "sk-byok-ws-openai-0000"


def _upstream(gw: Gateway, lane: str) -> FakeUpstream:
    return {"cheap": gw.pool[0], "resale": gw.resale[0], "byok/openai": gw.byok["openai"]}[lane]


def _lane_key(lane: str) -> str:
    return {"cheap": pool_key(0), "resale": resale_key(0), "byok/openai": BYOK_KEY}[lane]


def form_fields(got: Received) -> dict[str, bytes]:
    """What the upstream received as multipart form fields (parsed by the standard library)."""
    head = f"Content-Type: {got.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + got.raw, policy=email.policy.HTTP)
    out = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]  # reason: a multipart EmailMessage
        out[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True)
    return out


async def _row(gw: Gateway) -> dict[str, Any]:
    [row] = await gw.usage_rows(1)
    return row


# --- moderations and images -------------------------------------------------------------------------


@pytest.mark.parametrize("lane", LANES)
async def test_moderations_on_every_lane(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1)
    result = await gw.client.moderations.create(model=f"{lane}/{MODEL}", input="I will hurt you")
    assert result.results[0].flagged is True
    [got] = _upstream(gw, lane).requests
    assert (got.path, got.body["model"], got.bearer) == ("/v1/moderations", MODEL, _lane_key(lane))
    row = await _row(gw)
    assert (row["endpoint"], row["lane"], row["status"], row["outcome"]) == ("moderations", lane.split("/")[0], 200, "ok")
    assert (row["total_tokens"], row["tokens_estimated"]) == (0, 0)  # no usage object: the per-request price applies


@pytest.mark.parametrize("lane", LANES)
async def test_images_generate_on_every_lane_with_usage_and_the_budget_allow_list(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1)
    image = await gw.client.images.generate(model=f"{lane}/{MODEL}", prompt="a red square", size="1024x1024",
                                            user="end-user-42", extra_body={"novel_field": 1})
    assert image.data and image.data[0].b64_json
    [got] = _upstream(gw, lane).requests
    assert got.path == "/v1/images/generations" and got.body["model"] == MODEL and got.body["size"] == "1024x1024"
    if lane == "cheap":
        assert "user" not in got.body and "novel_field" not in got.body
    else:
        assert got.body["user"] == "end-user-42" and got.body["novel_field"] == 1
    row = await _row(gw)
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        "images/generations", 11, 22, 33)


async def test_images_generate_stream_is_relayed_event_by_event(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    picture = payloads.media_answer("/images/generations", MODEL)["data"][0]["b64_json"]  # type: ignore[index]  # reason: known shape
    partial = {"type": "image_generation.partial_image", "b64_json": picture, "partial_image_index": 0,
               "created_at": 1, "size": "1024x1024", "quality": "low", "background": "opaque", "output_format": "png"}
    done = {**partial, "type": "image_generation.completed", "usage": payloads.MEDIA_USAGE}
    del done["partial_image_index"]
    gw.pool[0].script(Stream((payloads.sse(partial, event=partial["type"]), 0.05,
                              payloads.sse(done, event=done["type"]))))
    stream = await gw.client.images.generate(model=f"cheap/{MODEL}", prompt="a red square", stream=True,
                                             partial_images=1)
    kinds = [event.type async for event in stream]
    assert kinds == ["image_generation.partial_image", "image_generation.completed"]
    row = await _row(gw)
    assert (row["stream"], row["outcome"], row["total_tokens"]) == (1, "ok", 33)


@pytest.mark.parametrize("lane", LANES)
async def test_images_edit_multipart_on_every_lane(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1)
    picture = payloads.PNG + bytes(range(256)) * 8  # binary, with every byte value (and CR LF pairs)
    result = await gw.client.images.edit(model=f"{lane}/{MODEL}", image=("in.png", picture, "image/png"),
                                         prompt="make it blue", user="end-user-42")
    assert result.data
    [got] = _upstream(gw, lane).requests
    fields = form_fields(got)
    assert got.path == "/v1/images/edits" and got.bearer == _lane_key(lane)
    assert fields["model"] == MODEL.encode() and fields["prompt"] == b"make it blue"
    assert fields["image"] == picture
    assert ("user" in fields) is (lane != "cheap")  # the Budget allow-list drops end-user ids from forms too
    assert (await _row(gw))["total_tokens"] == 33


async def test_multipart_uploads_are_bounded_by_max_upload_bytes(gateway: Any) -> None:
    gw: Gateway = await gateway(limits={"max_upload_bytes": 4096})
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client.images.edit(model=f"cheap/{MODEL}", image=("in.png", b"x" * 8192, "image/png"), prompt="p")
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    assert sum(len(u.requests) for u in gw.upstreams) == 0


async def test_a_forbidden_field_in_a_form_is_refused(gateway: Any) -> None:
    gw: Gateway = await gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.audio.transcriptions.create(model=f"resale/{MODEL}", file=("a.wav", b"RIFF", "audio/wav"),
                                                    extra_body={"api_base": "http://evil"})
    assert caught.value.body["param"] == "api_base"  # type: ignore[index]  # reason: the SDK types body as object
    assert sum(len(u.requests) for u in gw.upstreams) == 0


# --- audio -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lane", LANES)
async def test_speech_is_relayed_as_it_arrives(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1)
    head, tail = b"ID3\x04" + bytes(range(200)), bytes(range(255, 0, -1)) * 40
    _upstream(gw, lane).script(Stream((head, 0.4, tail), content_type="audio/mpeg"))
    start = time.monotonic()
    async with gw.client.audio.speech.with_streaming_response.create(
            model=f"{lane}/{MODEL}", voice="alloy", input="hello there") as response:
        assert response.headers["content-type"] == "audio/mpeg"
        chunks = response.iter_bytes()
        first = await anext(chunks)
        first_at = time.monotonic() - start
        rest = b"".join([c async for c in chunks])
    assert first_at < 0.35, "the first audio bytes waited for the whole answer"
    assert first + rest == head + tail
    [got] = _upstream(gw, lane).requests
    assert got.body == {"model": MODEL, "voice": "alloy", "input": "hello there"}
    row = await _row(gw)
    assert (row["endpoint"], row["status"], row["outcome"]) == ("audio/speech", 200, "ok")


async def test_speech_sse_stream_with_usage(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    usage = {"input_tokens": 4, "output_tokens": 40, "total_tokens": 44}
    gw.pool[0].script(Stream((payloads.sse({"type": "speech.audio.delta", "audio": "SUQz"}), 0.02,
                              payloads.sse({"type": "speech.audio.done", "usage": usage}))))
    async with gw.client.audio.speech.with_streaming_response.create(
            model=f"cheap/{MODEL}", voice="alloy", input="hello", stream_format="sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        text = (await response.read()).decode()
    assert '"speech.audio.delta"' in text and '"speech.audio.done"' in text
    assert gw.pool[0].requests[0].body["stream_format"] == "sse"
    row = await _row(gw)
    assert (row["stream"], row["outcome"], row["total_tokens"]) == (1, "ok", 44)


async def test_images_edit_stream(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    done = {"type": "image_edit.completed", "b64_json": "iVBO", "created_at": 1, "size": "1024x1024",
            "quality": "low", "background": "opaque", "output_format": "png", "usage": payloads.MEDIA_USAGE}
    gw.pool[0].script(Stream((payloads.sse({**done, "type": "image_edit.partial_image", "partial_image_index": 0},
                                           event="image_edit.partial_image"), 0.02,
                              payloads.sse(done, event="image_edit.completed"))))
    stream = await gw.client.images.edit(model=f"cheap/{MODEL}", image=("in.png", payloads.PNG, "image/png"),
                                         prompt="blue", stream=True, partial_images=1)
    assert [e.type async for e in stream] == ["image_edit.partial_image", "image_edit.completed"]
    assert form_fields(gw.pool[0].requests[0])["stream"] == b"true"
    row = await _row(gw)
    assert (row["stream"], row["outcome"], row["total_tokens"]) == (1, "ok", 33)


async def test_speech_that_breaks_off_is_never_a_complete_file(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    gw.pool[0].script(Stream((b"ID3" + b"\0" * 100, 0.05), content_type="audio/mpeg", end=End.RESET))
    with pytest.raises(openai.APIError):
        speech = await gw.client.audio.speech.create(model=f"cheap/{MODEL}", voice="alloy", input="hi")
        speech.read()
    assert (await _row(gw))["outcome"] == "upstream_error"


@pytest.mark.parametrize("lane", LANES)
async def test_transcriptions_json_text_and_stream(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1)
    upstream = _upstream(gw, lane)
    audio = b"RIFF" + bytes(range(256)) * 4
    transcript = await gw.client.audio.transcriptions.create(model=f"{lane}/{MODEL}", file=("a.wav", audio, "audio/wav"),
                                                             language="en")
    assert transcript.text == "fake transcript"
    fields = form_fields(upstream.requests[0])
    assert fields["file"] == audio and fields["model"] == MODEL.encode() and fields["language"] == b"en"
    upstream.script(Reply(body="one\ntwo\n", content_type="text/plain"))
    text = await gw.client.audio.transcriptions.create(model=f"{lane}/{MODEL}", file=("a.wav", audio, "audio/wav"),
                                                       response_format="text")
    assert text == "one\ntwo\n"
    usage = {"type": "tokens", "input_tokens": 14, "output_tokens": 3, "total_tokens": 17}
    upstream.script(Stream((payloads.sse({"type": "transcript.text.delta", "delta": "fake "}), 0.02,
                            payloads.sse({"type": "transcript.text.delta", "delta": "transcript"}),
                            payloads.sse({"type": "transcript.text.done", "text": "fake transcript", "usage": usage}))))
    stream = await gw.client.audio.transcriptions.create(model=f"{lane}/{MODEL}", file=("a.wav", audio, "audio/wav"),
                                                         stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.delta", "transcript.text.done"]
    assert form_fields(upstream.requests[2])["stream"] == b"true"
    rows = await gw.usage_rows(3)
    assert [(r["endpoint"], r["stream"], r["outcome"], r["total_tokens"]) for r in rows] == [
        ("audio/transcriptions", 0, "ok", 17), ("audio/transcriptions", 0, "ok", 0), ("audio/transcriptions", 1, "ok", 17)]


async def test_translations(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    result = await gw.client.audio.translations.create(model=f"cheap/{MODEL}", file=("a.wav", b"RIFFdata", "audio/wav"))
    assert result.text == "fake translation"
    assert gw.pool[0].requests[0].path == "/v1/audio/translations"


# --- input tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lane", LANES)
async def test_responses_input_tokens_on_every_lane(gateway: Any, lane: str) -> None:
    gw: Gateway = await gateway(pool=1)
    count = await gw.client.responses.input_tokens.count(model=f"{lane}/{MODEL}", input="how many tokens?")
    assert count.input_tokens == 42
    [got] = _upstream(gw, lane).requests
    assert got.path == "/v1/responses/input_tokens" and got.body["input"] == "how many tokens?"
    assert (await _row(gw))["endpoint"] == "responses/input_tokens"


async def test_input_tokens_on_budget_refuses_stored_state(gateway: Any) -> None:
    gw: Gateway = await gateway()
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client.responses.input_tokens.count(model=f"cheap/{MODEL}", input="hi", previous_response_id="resp_1")
    assert caught.value.code == "stateful_request_not_allowed"
    assert sum(len(u.requests) for u in gw.upstreams) == 0


# --- stateful endpoints -------------------------------------------------------------------------------


async def test_stateful_endpoints_are_a_clear_404(gateway: Any) -> None:
    gw: Gateway = await gateway()
    calls = [gw.client.files.list(), gw.client.batches.retrieve("batch_1"), gw.client.vector_stores.list(),
             gw.client.responses.retrieve("resp_1"), gw.client.responses.delete("resp_1"),
             gw.client.conversations.create(), gw.client.chat.completions.list(),
             gw.client.files.create(file=("a.jsonl", b"{}", "application/jsonl"), purpose="batch")]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        assert caught.value.code == "unsupported_endpoint"
        assert "POST /v1/moderations" in caught.value.message and "cheap/*" in caught.value.message
    assert sum(len(u.requests) for u in gw.upstreams) == 0
    answer = await gw.session.get(gw.url + "/v1/files")
    assert answer.status == 401  # still authenticated first
    answer.close()
    ok = await gw.post("/v1/responses/input_tokens", {"model": f"resale/{MODEL}", "input": "hi"})
    assert ok.status == 200 and orjson.loads(ok.body)["input_tokens"] == 42



# --- usage and cost ------------------------------------------------------------------------------------

PRICED = {"enabled": True, "currency": "USD",
          "prices": {"cheap/*": {"input": "1.00", "output": "4.00", "request": "0.001"}, "resale/*": {"input": "1.00"},
                     "byok/*": {"request": "0.0002"}}}


async def _costs(gw: Gateway, count: int) -> list[tuple[str, int, int, int, int]]:
    await gw.usage_rows(count)
    found = await gw.app[appkeys.STORE].fetchall(
        "SELECT endpoint, prompt_tokens, completion_tokens, tokens_estimated, cost_micros FROM usage "
        "ORDER BY started_at, rowid")
    return [tuple(r) for r in found]  # type: ignore[misc]  # reason: rows of five columns


async def test_cost_follows_the_usage_object_else_the_per_request_price(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1, billing=PRICED)
    await gw.app[appkeys.STORE].add_ledger_entry("ws", 30_000, "topup", "test credit", "test")
    model = f"cheap/{MODEL}"
    await gw.client.moderations.create(model=model, input="hello")
    await gw.client.images.generate(model=model, prompt="a red square")
    gw.pool[0].script(Stream((b"ID3" + b"\0" * 64,), content_type="audio/mpeg"))
    (await gw.client.audio.speech.create(model=model, voice="alloy", input="hi")).read()
    big = b"RIFF" + b"\0" * (2 * 1024 * 1024)  # 2 MiB of audio: its hold counts text fields, not the file
    await gw.client.audio.transcriptions.create(model=model, file=("a.wav", big, "audio/wav"))
    await gw.client.responses.input_tokens.count(model=model, input="count me")
    assert await _costs(gw, 5) == [
        ("moderations", 0, 0, 0, 1000),  # no usage object: the request price only, nothing estimated
        ("images/generations", 11, 22, 0, 11 + 22 * 4 + 1000),
        ("audio/speech", 0, 0, 0, 1000),
        ("audio/transcriptions", 14, 3, 0, 14 + 3 * 4 + 1000),
        ("responses/input_tokens", 0, 0, 0, 1000),
    ]


async def test_revoking_the_key_cuts_a_speech_answer_mid_body(gateway: Any) -> None:
    gw: Gateway = await gateway(pool=1)
    gw.pool[0].script(Stream(tuple(p for _ in range(60) for p in (b"\0" * 512, 0.1)), content_type="audio/mpeg"))
    received = b""
    async with gw.session.post(gw.url + "/v1/audio/speech", headers=gw.auth(),
                               json={"model": f"cheap/{MODEL}", "voice": "alloy", "input": "hi"}) as resp:
        received += await resp.content.readany()
        key_id = (await gw.app[appkeys.STORE].list_api_keys("ws"))[0].id
        async with gw.session.post(f"{gw.url}/admin/keys/{key_id}/revoke",
                                   headers={"Authorization": "Bearer admin-test-token"}) as revoked:
            assert revoked.status == 200
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientPayloadError):  # aborted: no chunked end, never a "complete" file
            while chunk := await resp.content.readany():
                received += chunk
    assert time.monotonic() - started < 3.0 and len(received) < 60 * 512
    assert (await _row(gw))["outcome"] == "interrupted"
