from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from core import crypto

SECRET = "postgres://t_0123:s3cr3t-p@ss@db/x"


@pytest.fixture(autouse=True)
def _fresh_cache():
    crypto.reset_cache()
    yield
    crypto.reset_cache()


def test_roundtrip_with_configured_key():
    with override_settings(FERNET_KEYS=[crypto.generate_key()]):
        token = crypto.encrypt(SECRET)
        assert crypto.decrypt(token) == SECRET


def test_roundtrip_with_development_key_derived_from_secret_key():
    with override_settings(FERNET_KEYS=[]):
        token = crypto.encrypt("héllo ✓")
        assert crypto.decrypt(token) == "héllo ✓"


def test_development_key_depends_on_secret_key():
    with override_settings(FERNET_KEYS=[], SECRET_KEY="one-secret-key-for-tests"):
        token = crypto.encrypt(SECRET)
    with (
        override_settings(FERNET_KEYS=[], SECRET_KEY="another-secret-key-for-tests"),
        pytest.raises(crypto.SecretDecryptError),
    ):
        crypto.decrypt(token)


def test_ciphertext_does_not_contain_plaintext():
    with override_settings(FERNET_KEYS=[crypto.generate_key()]):
        token = crypto.encrypt(SECRET)
    assert SECRET not in token
    assert "s3cr3t" not in token


def test_encryption_is_randomised():
    with override_settings(FERNET_KEYS=[crypto.generate_key()]):
        assert crypto.encrypt(SECRET) != crypto.encrypt(SECRET)


def test_old_ciphertext_decrypts_after_new_key_is_prepended():
    old_key, new_key = crypto.generate_key(), crypto.generate_key()
    with override_settings(FERNET_KEYS=[old_key]):
        old_token = crypto.encrypt(SECRET)
    with override_settings(FERNET_KEYS=[new_key, old_key]):
        assert crypto.decrypt(old_token) == SECRET


def test_rotate_reencrypts_with_primary_key():
    old_key, new_key = crypto.generate_key(), crypto.generate_key()
    with override_settings(FERNET_KEYS=[old_key]):
        old_token = crypto.encrypt(SECRET)
    with override_settings(FERNET_KEYS=[new_key, old_key]):
        rotated = crypto.rotate(old_token)
    with override_settings(FERNET_KEYS=[new_key]):
        assert crypto.decrypt(rotated) == SECRET
        with pytest.raises(crypto.SecretDecryptError):
            crypto.decrypt(old_token)


def test_wrong_key_raises_typed_error_without_details():
    with override_settings(FERNET_KEYS=[crypto.generate_key()]):
        token = crypto.encrypt(SECRET)
    with override_settings(FERNET_KEYS=[crypto.generate_key()]), pytest.raises(crypto.SecretDecryptError) as info:
        crypto.decrypt(token)
    assert str(info.value) == "secret could not be decrypted"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("token", ["", "not a token", "gAAAAAB" + "A" * 80, "ünïcode"])
def test_garbage_token_raises_typed_error(token):
    with override_settings(FERNET_KEYS=[crypto.generate_key()]), pytest.raises(crypto.SecretDecryptError):
        crypto.decrypt(token)


def test_rotate_of_garbage_raises_typed_error():
    with override_settings(FERNET_KEYS=[crypto.generate_key()]), pytest.raises(crypto.SecretDecryptError):
        crypto.rotate("garbage")


@pytest.mark.parametrize("bad_key", ["too-short-key", "x" * 44, "A" * 43 + "=" + "extra"])
def test_malformed_key_is_improperly_configured_without_echoing_it(bad_key):
    good_key = crypto.generate_key()
    with override_settings(FERNET_KEYS=[good_key, bad_key]), pytest.raises(ImproperlyConfigured) as info:
        crypto.encrypt(SECRET)
    message = str(info.value)
    assert "COLTSFOOT_FERNET_KEYS" in message
    assert "entry 2 of 2" in message
    assert bad_key not in message
    assert good_key not in message
    assert info.value.__cause__ is None


def test_setting_change_resets_cache():
    first, second = crypto.generate_key(), crypto.generate_key()
    with override_settings(FERNET_KEYS=[first]):
        token = crypto.encrypt(SECRET)
    # A fresh override must not keep using the previously cached MultiFernet.
    with override_settings(FERNET_KEYS=[second]), pytest.raises(crypto.SecretDecryptError):
        crypto.decrypt(token)


def test_generate_key_is_usable_and_unique():
    keys = {crypto.generate_key() for _ in range(5)}
    assert len(keys) == 5
    with override_settings(FERNET_KEYS=list(keys)):
        assert crypto.decrypt(crypto.encrypt("x")) == "x"
