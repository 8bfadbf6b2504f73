"""sd_notify(3) without libsystemd: one datagram to a notify socket (systemd's, or a supervisor's)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("okm.server")


def notify(message: str, address: str | None = None) -> None:
    """Send `message` to `address` (default $NOTIFY_SOCKET); no socket, no message."""
    address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("could not notify systemd (%s): %s", message, exc)
