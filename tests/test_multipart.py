"""multipart/form-data parsing and rebuilding (pure), checked against the standard library's parser."""

from __future__ import annotations

import email
import email.policy

import pytest

from proxy.errors import InvalidRequestError
from proxy.relay.multipart import parse_form

B = "xXx-boundary-123"
CT = f"multipart/form-data; boundary={B}"
AUDIO = bytes(range(256)) * 4 + b"\r\n--xXx-boundar" + b"\r\n\r\n"  # near-misses of the delimiter inside a file


def body(*parts: tuple[str, bytes, str | None], preamble: bytes = b"") -> bytes:
    out = [preamble]
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{B}\r\nContent-Disposition: {disposition}\r\n".encode()
                   + (b"Content-Type: audio/wav\r\n" if filename else b"") + b"\r\n" + value + b"\r\n")
    out.append(f"--{B}--\r\n".encode())
    return b"".join(out)


def stdlib_fields(raw: bytes, content_type: str) -> dict[str, bytes]:
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw, policy=email.policy.HTTP)
    return {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
            for p in message.iter_parts()}  # type: ignore[attr-defined]  # reason: a multipart EmailMessage


@pytest.mark.parametrize("preamble", [b"", b"ignored preamble\r\n"])
def test_parse_and_rebuild_with_the_model_rewritten(preamble: bytes) -> None:
    raw = body(("model", b"cheap/whisper-1", None), ("file", AUDIO, "a.wav"), ("language", b"en", None),
               ("timestamp_granularities[]", b"word", None), preamble=preamble)
    form = parse_form(raw, CT)
    assert form.names == ["model", "file", "language", "timestamp_granularities[]"]
    assert form.text("model") == "cheap/whisper-1" and form.text("file") is None
    assert bytes(form.parts[1].value) == AUDIO and form.parts[1].filename == "a.wav"
    rebuilt = form.keep(frozenset({"model", "file", "timestamp_granularities"})).encode("whisper-1")
    assert stdlib_fields(rebuilt, form.content_type) == {"model": b"whisper-1", "file": AUDIO,
                                                         "timestamp_granularities[]": b"word"}


@pytest.mark.parametrize(
    ("raw", "content_type", "message"),
    [
        (body(("model", b"m", None)), "application/json", "multipart/form-data body"),
        (body(("model", b"m", None)), "multipart/form-data", "no boundary"),
        (b"no boundary here", CT, "does not contain its boundary"),
        (body(("model", b"m", None))[:-len(f"--{B}--\r\n")], CT, "incomplete"),
        (f"--{B}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{B}--\r\n".encode(), CT, "no Content-Disposition name"),
        (f"--{B}\r\nContent-Disposition: form-data; name=\"a\"".encode() + f"\r\n--{B}--\r\n".encode(), CT,
         "no header block"),
    ],
)
def test_malformed_forms_are_a_400_naming_the_problem(raw: bytes, content_type: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_form(raw, content_type)
    assert message in caught.value.message
