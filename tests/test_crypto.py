"""BYOK keys at rest: AES-256-GCM roundtrip, row binding, tamper and wrong-key detection, master key parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from proxy.types import Secret
from proxy.workspaces.crypto import (
    MasterKey,
    MasterKeyError,
    decrypt_provider_key,
    encrypt_provider_key,
    generate_master_key,
)

ENV = "OKM_MASTER_KEY"
RAW = bytes(range(32))
RAW_B64 = base64.b64encode(RAW).decode()
MASTER = MasterKey.from_base64(RAW_B64, ENV)
OTHER = MasterKey.from_base64(base64.b64encode(b"\x01" * 32).decode(), ENV)
PLAIN = "sk-proj-tenantKey1234567890"


@pytest.mark.parametrize("plaintext", [PLAIN, "", "ключ-🔑", "x" * 4096])
def test_roundtrip(plaintext):
    blob = encrypt_provider_key(MASTER, 7, "openai", plaintext)
    assert blob.startswith(b"v1")
    assert len(blob) == 2 + 12 + len(plaintext.encode()) + 16
    if plaintext:
        assert plaintext.encode() not in blob
    secret = decrypt_provider_key(MASTER, 7, "openai", blob)
    assert isinstance(secret, Secret) and secret.reveal() == plaintext
    assert plaintext not in repr(secret) or not plaintext


def test_each_encryption_uses_a_fresh_nonce():
    assert encrypt_provider_key(MASTER, 7, "openai", PLAIN) != encrypt_provider_key(MASTER, 7, "openai", PLAIN)


def test_blob_from_store_as_memoryview_opens():
    blob = encrypt_provider_key(MASTER, 7, "openai", PLAIN)
    assert decrypt_provider_key(MASTER, 7, "openai", memoryview(blob)).reveal() == PLAIN


def assert_no_chained_error(err: BaseException) -> None:
    # a chained cryptography/binascii error would print beside ours in a traceback
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def assert_refused(master: MasterKey, workspace_id: int, provider: str, blob: bytes) -> str:
    with pytest.raises(MasterKeyError) as info:
        decrypt_provider_key(master, workspace_id, provider, blob)
    message = str(info.value)
    for secret in (PLAIN, RAW_B64, RAW.hex(), repr(RAW)):
        assert secret not in message
    assert_no_chained_error(info.value)
    return message


@pytest.mark.parametrize(
    ("master", "workspace_id", "provider"),
    [
        (OTHER, 7, "openai"),  # wrong master key
        (MASTER, 8, "openai"),  # copied to another workspace's row
        (MASTER, 7, "anthropic"),  # copied to another provider's row
        (MASTER, 70, "openai"),
        (MASTER, 7, "OpenAI"),
    ],
    ids=["wrong-master-key", "other-workspace", "other-provider", "workspace-prefix", "provider-case"],
)
def test_wrong_key_or_moved_blob_is_refused(master, workspace_id, provider):
    blob = encrypt_provider_key(MASTER, 7, "openai", PLAIN)
    message = assert_refused(master, workspace_id, provider, blob)
    assert ENV in message and "byok set" in message
    assert str(workspace_id) in message and provider in message


@pytest.mark.parametrize("position", [2, 5, 13, 14, 20, -17, -1])  # nonce, ciphertext, tag
def test_tampered_blob_is_refused(position):
    blob = bytearray(encrypt_provider_key(MASTER, 7, "openai", PLAIN))
    blob[position] ^= 0x01
    assert_refused(MASTER, 7, "openai", bytes(blob))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],
        lambda b: b[:29],
        lambda b: b"",
        lambda b: b"v2" + b[2:],
        lambda b: b[2:],
        lambda b: b + b"\x00",
    ],
    ids=["truncated-tag", "too-short", "empty", "unknown-version", "no-version", "extra-byte"],
)
def test_malformed_blob_is_refused(mangle):
    assert_refused(MASTER, 7, "openai", mangle(encrypt_provider_key(MASTER, 7, "openai", PLAIN)))


@pytest.mark.parametrize(
    ("value", "expect_in_message"),
    [
        ("", "is not set"),
        ("   \n", "is not set"),
        ("not base64 at all!!", "not valid base64"),
        ("%%%%" + RAW_B64[4:], "not valid base64"),
        (base64.b64encode(RAW[:31]).decode(), "31 bytes"),
        (base64.b64encode(RAW + b"!").decode(), "33 bytes"),
        (base64.b64encode(RAW[:16]).decode(), "16 bytes"),
        (RAW.hex(), "48 bytes"),  # 64 hex chars read as base64
    ],
)
def test_bad_master_key_is_refused_naming_the_env_var_not_the_value(value, expect_in_message):
    with pytest.raises(MasterKeyError) as info:
        MasterKey.from_base64(value, ENV)
    message = str(info.value)
    assert message.startswith(ENV) and expect_in_message in message
    assert "32" in message
    if value.strip():
        assert value.strip() not in message
    assert_no_chained_error(info.value)


@pytest.mark.parametrize(
    "value",
    [
        RAW_B64,
        base64.urlsafe_b64encode(RAW).decode(),
        RAW_B64.rstrip("="),
        f"  {RAW_B64}\n",
    ],
    ids=["standard", "urlsafe", "unpadded", "whitespace"],
)
def test_master_key_accepts_common_base64_forms(value):
    assert MasterKey.from_base64(value, ENV) == MASTER


def test_key_id_is_hmac_fingerprint_and_tells_keys_apart():
    expected = hmac.new(RAW, b"okm-master-key-id", hashlib.sha256).hexdigest()[:16]
    assert MASTER.key_id == expected
    assert len(MASTER.key_id) == 16 and MASTER.key_id != OTHER.key_id
    assert MasterKey.from_base64(RAW_B64, "OTHER_VAR").key_id == expected


def test_repr_and_str_mask_the_key():
    for text in (repr(MASTER), str(MASTER), f"{MASTER}", repr([MASTER])):
        assert RAW_B64 not in text and repr(RAW) not in text and RAW.hex() not in text
        assert "***" in text and MASTER.key_id in text


def test_master_key_of_wrong_length_cannot_be_built_directly():
    with pytest.raises(MasterKeyError, match="32 bytes"):
        MasterKey(key=b"short", key_id="x")


def test_generated_master_key_is_32_random_bytes():
    first, second = generate_master_key(), generate_master_key()
    assert first != second
    assert len(base64.b64decode(first, validate=True)) == 32
    master = MasterKey.from_base64(first, ENV)
    blob = encrypt_provider_key(master, 1, "openai", PLAIN)
    assert decrypt_provider_key(master, 1, "openai", blob).reveal() == PLAIN
