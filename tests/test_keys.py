"""Workspace API key format, checksum, hashing and masking (pure, table-driven)."""

from __future__ import annotations

import pytest

from proxy.store import keys
from proxy.types import Secret

KEY_ID, KEY = keys.generate_api_key()


def _replace(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


def test_generated_key_shape():
    assert KEY.startswith(f"okm_{KEY_ID}_")
    assert len(KEY) == keys.KEY_LEN == 66
    assert keys.is_well_formed(KEY)
    assert keys.key_id_of(KEY) == KEY_ID
    assert keys.is_key_id(KEY_ID)


def test_generated_keys_are_unique():
    generated = [keys.generate_api_key() for _ in range(200)]
    assert len({k for _, k in generated}) == 200
    assert len({i for i, _ in generated}) == 200


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "okm_",
        "sk-" + KEY[3:],
        "OKM_" + KEY[4:],
        KEY[:-1],
        KEY + "a",
        " " + KEY[1:],
        KEY.replace("_", "-"),
        _replace(KEY, 20, "!"),
        "Bearer " + KEY,
        "okm_" + "a" * 62,
        "x" * 10_000,
    ],
)
def test_malformed_keys_are_rejected(candidate):
    assert not keys.is_well_formed(candidate)
    assert keys.key_id_of(candidate) is None


def test_every_single_character_typo_is_caught_by_the_checksum():
    for index in range(len(keys.PREFIX), len(KEY)):
        if KEY[index] == "_":
            continue
        for char in ("0", "Z", "z", "5"):
            if char != KEY[index]:
                assert not keys.is_well_formed(_replace(KEY, index, char)), (index, char)


def test_hash_is_keyed_by_the_pepper():
    one = keys.hash_api_key(KEY, Secret("pepper-one"))
    assert one == keys.hash_api_key(KEY, Secret("pepper-one"))
    assert one != keys.hash_api_key(KEY, Secret("pepper-two"))
    assert len(one) == 32
    assert KEY.encode() not in one


def test_empty_pepper_is_refused_without_revealing_anything():
    with pytest.raises(ValueError, match="OKM_KEY_PEPPER"):
        keys.hash_api_key(KEY, Secret("", "OKM_KEY_PEPPER"))


def test_mask_shows_the_id_and_four_characters_only():
    masked = keys.mask_key(KEY)
    assert masked == f"okm_{KEY_ID}_…{KEY[-4:]}"
    secret_part = KEY[len(keys.PREFIX) + keys.KEY_ID_LEN + 1 : -4]
    assert secret_part not in masked
