"""What an upstream attempt gets back: one protocol for the network reply and the mock's.

Reading a reply raises only StreamBroken; each implementation maps its own failures to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from aiohttp import hdrs


class StreamBroken(Exception):
    """Reading an upstream reply failed after it had started."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timeout = timeout


class Reply(Protocol):
    """An upstream answer whose status and headers have arrived; the body is read on demand.

    HttpReply (the network) and mock.MockReply (the built-in provider) are the two kinds.
    """

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters."""
        ...

    async def read(self, limit: int) -> bytes:
        """The whole body; StreamBroken past `limit` bytes or when the connection breaks."""
        ...

    @property
    def ended(self) -> bool:
        """The whole body has arrived: reading what is left of it will not wait."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; StreamBroken when the connection breaks or idles."""
        ...

    def close(self) -> None:
        """Drop the connection: used when the exchange did not end cleanly."""

    def release(self) -> None:
        """Return the connection to the pool after a complete exchange."""


def media_type(headers: Mapping[str, str]) -> str:
    return headers.get(hdrs.CONTENT_TYPE, "").split(";", 1)[0].strip().lower()
