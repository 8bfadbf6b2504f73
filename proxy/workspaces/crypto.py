"""BYOK provider keys at rest: AES-256-GCM under the operator's master key, bound to their row.

Pure functions; never logs, and no error message or repr here contains a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field

from proxy.types import Secret

_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_VERSION = b"v1"
_KEY_ID_LABEL = b"okm-master-key-id"
# _AESGCM_LAZY: `cryptography` (OpenSSL, ~6.7 MiB of RSS) is imported on the first seal or open,
# so a gateway without BYOK keys never loads it; after that the import is a sys.modules lookup.


class MasterKeyError(Exception):
    """The master key is missing, malformed or not the one a stored key was sealed with."""


@dataclass(frozen=True, slots=True, repr=False)
class MasterKey:
    key: bytes  # 32 bytes
    key_id: str  # first 16 hex of HMAC-SHA256(key, label): stored beside each ciphertext
    source: str = field(default="", compare=False)  # env var it came from, for error messages

    def __post_init__(self) -> None:
        if len(self.key) != _KEY_BYTES:
            raise MasterKeyError(f"{self.source or 'master key'}: must be exactly 32 bytes")

    @classmethod
    def from_bytes(cls, key: bytes, source: str = "") -> MasterKey:
        key_id = hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]
        return cls(key=key, key_id=key_id, source=source)

    @classmethod
    def from_base64(cls, value: str, source: str) -> MasterKey:
        """Parse standard or URL-safe base64 of exactly 32 bytes; errors name `source` only."""
        text = value.strip() if isinstance(value, str) else ""
        if not text:
            raise MasterKeyError(
                f"{source} is not set: it must hold a base64-encoded 32-byte key "
                "(make one with `openssl rand -base64 32`)"
            )
        text = text.replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(
                f"{source} is not valid base64: it must hold a base64-encoded 32-byte key "
                "(make one with `openssl rand -base64 32`)"
            ) from None
        if len(key) != _KEY_BYTES:
            raise MasterKeyError(
                f"{source} decodes to {len(key)} bytes; it must be exactly 32 "
                "(make one with `openssl rand -base64 32`)"
            )
        return cls.from_bytes(key, source)

    def __repr__(self) -> str:
        return f"MasterKey(key=***, key_id={self.key_id!r}, source={self.source!r})"

    __str__ = __repr__


def master_key(secret: Secret | None, source: str, *, required: bool = False) -> MasterKey | None:
    """The master key a config names (the one constructor from config); None when its variable
    is unset, unless `required` (then MasterKeyError naming `source`)."""
    if secret is None and not required:
        return None
    return MasterKey.from_base64(secret.reveal() if secret is not None else "", source)


def generate_master_key() -> str:
    """A fresh master key: base64 of 32 random bytes."""
    return base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")


def _associated_data(workspace_id: int, provider: str) -> bytes:
    # Binds the blob to its row: copied to another workspace or provider, it no longer opens.
    return b"okm-byok:v1:%d:%s" % (workspace_id, provider.encode("utf-8"))


def encrypt_provider_key(master: MasterKey, workspace_id: int, provider: str, plaintext: str) -> bytes:
    """Blob = b"v1" + 12-byte nonce + AES-GCM ciphertext and tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # see _AESGCM_LAZY

    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(master.key).encrypt(
        nonce, plaintext.encode("utf-8"), _associated_data(workspace_id, provider)
    )
    return _VERSION + nonce + sealed


def decrypt_provider_key(master: MasterKey, workspace_id: int, provider: str, blob: bytes) -> Secret:
    """Open a blob from encrypt_provider_key; MasterKeyError if the key, row or bytes differ."""
    from cryptography.exceptions import InvalidTag  # see _AESGCM_LAZY
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    where = f"the stored {provider!r} key of workspace {workspace_id}"
    blob = bytes(blob)
    if not blob.startswith(_VERSION) or len(blob) < len(_VERSION) + _NONCE_BYTES + _TAG_BYTES:
        raise MasterKeyError(f"{where} is not in a known format (expected {_VERSION.decode()})")
    nonce = blob[len(_VERSION) : len(_VERSION) + _NONCE_BYTES]
    try:
        plain = AESGCM(master.key).decrypt(
            nonce, blob[len(_VERSION) + _NONCE_BYTES :], _associated_data(workspace_id, provider)
        )
        return Secret(plain.decode("utf-8"), source=f"byok:{provider}")
    except (InvalidTag, UnicodeDecodeError):
        raise MasterKeyError(
            f"cannot decrypt {where}: {master.source or 'the master key'} is not the key it was "
            "stored with, or the stored value was altered or moved; store the key again with "
            "`byok set`"
        ) from None
