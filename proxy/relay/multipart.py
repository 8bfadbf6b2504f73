"""multipart/form-data bodies (file uploads: image edits, transcriptions, translations), pure.

Parsed once into parts kept as their own bytes, so a body is rebuilt for the upstream with only
the `model` value changed and some fields dropped; file contents are never decoded or copied
more than once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.errors import InvalidRequestError

_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb'\bfilename\*?="?([^";\r\n]*)"?', re.IGNORECASE)
_DISPOSITION = re.compile(rb"^content-disposition:\s*form-data\b(.*)$", re.IGNORECASE | re.MULTILINE)
MAX_PARTS = 256


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    headers: bytes  # the part's header block as sent (without the blank line)
    value: bytes | memoryview  # a view into the request body: file contents are never copied
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class FormBody:
    boundary: str
    parts: tuple[Part, ...]

    def text(self, name: str) -> str | None:
        """The first non-file field of that name, decoded; None if there is none."""
        for part in self.parts:
            if part.name == name and part.filename is None:
                return bytes(part.value).decode("utf-8", "replace").strip()
        return None

    @property
    def names(self) -> list[str]:
        return [part.name for part in self.parts]

    def keep(self, allowed: frozenset[str]) -> FormBody:
        """Only the parts whose field name (without a trailing `[]`) is allowed."""
        return FormBody(self.boundary, tuple(p for p in self.parts if p.name.removesuffix("[]") in allowed))

    def encode(self, model: str) -> bytes:
        """The body to send upstream, with `model` set to the upstream's model name."""
        delimiter = b"--" + self.boundary.encode()
        out: list[bytes | memoryview] = []
        for part in self.parts:
            value = model.encode() if part.name == "model" and part.filename is None else part.value
            out += [delimiter, b"\r\n", part.headers, b"\r\n\r\n", value, b"\r\n"]
        out += [delimiter, b"--\r\n"]
        return b"".join(out)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"


def parse_form(raw: bytes, content_type: str | None) -> FormBody:
    """Split a multipart/form-data body into its parts; every problem is a 400 naming it.

    One scan for the boundaries and no copy of any value: parts are views into `raw`.
    """
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("this endpoint takes a multipart/form-data body (a file upload)")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise InvalidRequestError("the multipart/form-data Content-Type has no boundary")
    boundary = match.group(1)
    dash = b"--" + boundary.encode()
    delimiter = b"\r\n" + dash
    if raw.startswith(dash):
        pos = len(dash)
    else:  # a preamble before the first boundary
        first = raw.find(delimiter)
        if first < 0:
            raise InvalidRequestError("the multipart body does not contain its boundary")
        pos = first + len(delimiter)
    view = memoryview(raw)
    parts: list[Part] = []
    while not raw.startswith(b"--", pos):
        end = raw.find(delimiter, pos)
        if end < 0:
            raise InvalidRequestError("the multipart body is incomplete (no closing boundary)")
        parts.append(_part(raw, view, pos, end))
        if len(parts) > MAX_PARTS:
            raise InvalidRequestError(f"the multipart body has more than {MAX_PARTS} fields")
        pos = end + len(delimiter)
    return FormBody(boundary, tuple(parts))


def _part(raw: bytes, view: memoryview, start: int, end: int) -> Part:
    """The part between two delimiters: `raw[start:end]` is its line end, headers, blank line, value."""
    split = raw.find(b"\r\n\r\n", start, end)
    if split < 0:
        raise InvalidRequestError("a multipart field has no header block")
    head = raw[start:split].lstrip(b" \t").removeprefix(b"\r\n")
    disposition = _DISPOSITION.search(head)
    name = _NAME.search(disposition.group(1)) if disposition else None
    if name is None:
        raise InvalidRequestError("a multipart field has no Content-Disposition name")
    filename = _FILENAME.search(disposition.group(1)) if disposition else None
    return Part(name.group(1).decode("utf-8", "replace"), head, view[split + 4:end],
                filename.group(1).decode("utf-8", "replace") if filename else None)
