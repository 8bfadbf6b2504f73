"""Workspace API keys: format, checksum, keyed hash and masked form.

Pure: no I/O. A key is `okm_<key id:12>_<secret:43><crc32:6>` in base62; the key itself is
never stored, only `hash_api_key(key, pepper)` and `mask_key(key)`. It lives with the store,
which issues keys and keeps their hashes, so the store imports nothing above it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib

from proxy.types import Secret

PREFIX = "okm_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LEN = 12
SECRET_BYTES = 32
SECRET_LEN = 43  # 62**43 > 2**256, so 32 random bytes always fit
CHECKSUM_LEN = 6  # 62**6 > 2**32
KEY_LEN = len(PREFIX) + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN

_SHAPE = re.compile(rf"okm_([0-9A-Za-z]{{{KEY_ID_LEN}}})_[0-9A-Za-z]{{{SECRET_LEN + CHECKSUM_LEN}}}")
_KEY_ID = re.compile(rf"[0-9A-Za-z]{{{KEY_ID_LEN}}}")


def _base62(value: int, width: int) -> str:
    digits = []
    while value:
        value, rem = divmod(value, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, ALPHABET[0])


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LEN)


def generate_api_key() -> tuple[str, str]:
    """A fresh (key_id, key); the key id is embedded in the key and safe to show."""
    key_id = "".join(secrets.choice(ALPHABET) for _ in range(KEY_ID_LEN))
    body = f"{PREFIX}{key_id}_{_base62(int.from_bytes(secrets.token_bytes(SECRET_BYTES), 'big'), SECRET_LEN)}"
    return key_id, body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """Shape and checksum only: rejects typos and foreign tokens without a lookup."""
    if len(key) != KEY_LEN or _SHAPE.fullmatch(key) is None:
        return False
    body, checksum = key[:-CHECKSUM_LEN], key[-CHECKSUM_LEN:]
    return hmac.compare_digest(_checksum(body), checksum)


def key_id_of(key: str) -> str | None:
    """The key id embedded in a well-formed key, else None."""
    return key[len(PREFIX) : len(PREFIX) + KEY_ID_LEN] if is_well_formed(key) else None


def is_key_id(value: str) -> bool:
    return _KEY_ID.fullmatch(value) is not None


def hash_api_key(key: str, pepper: Secret) -> bytes:
    """HMAC-SHA256 of the key under the operator's pepper; what the store keeps."""
    secret = pepper.reveal().encode("utf-8")
    if not secret:
        raise ValueError(f"the API key pepper ({pepper.source or 'key_pepper_env'}) is empty")
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).digest()


def mask_key(key: str) -> str:
    """`okm_<key id>_…<last 4>`: enough to recognise a key in a listing, useless to an attacker."""
    return f"{key[: len(PREFIX) + KEY_ID_LEN + 1]}…{key[-4:]}"
