"""Password rules and argon2id hashing (argon2-cffi), run off the event loop.

A hash takes ~0.1 s of CPU by design; it runs in a worker thread so /v1 traffic never waits.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 1024
_HASHER = PasswordHasher()  # argon2id with RFC 9106's low-memory profile
# Verified when the email is unknown, so an unknown email costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("okm-console-no-such-user")


class WeakPassword(ValueError):
    pass


def check_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"use a password of at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"use a password of at most {MAX_LENGTH} characters")
    return password


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, check_password(password))


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; None as the hash always fails, in the same time."""
    return await asyncio.to_thread(_verify, password_hash, password[:MAX_LENGTH])
