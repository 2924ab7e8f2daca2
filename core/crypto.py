"""Secrets at rest: config var values and add-on credentials, encrypted with MultiFernet.

Keys come from ``settings.FERNET_KEYS`` (env ``COLTSFOOT_FERNET_KEYS``), newest first: the first
key encrypts, every key decrypts, so rotation is "prepend a new key, re-encrypt rows with
``rotate()``, then drop the old key". When no key is configured, one key is derived from
``SECRET_KEY`` with HKDF. That fallback is for development only: rotating SECRET_KEY would then
make every stored secret unreadable, and SECRET_KEY has other readers than this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
from typing import Any

from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken
from cryptography.fernet import MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

logger = logging.getLogger(__name__)

KEYS_ENV_VAR = "COLTSFOOT_FERNET_KEYS"
_DERIVATION_INFO = b"coltsfoot-secrets-v1"
_RELEVANT_SETTINGS = frozenset({"FERNET_KEYS", "SECRET_KEY"})

_lock = threading.Lock()
_cached: MultiFernet | None = None
_cached_primary: Fernet | None = None


class SecretDecryptError(Exception):
    """A token could not be decrypted: wrong or retired key, or tampered/corrupt data.

    Deliberately carries no detail: which key was tried or what the bytes were is of no use to a
    tenant and could help an attacker.
    """

    def __init__(self) -> None:
        super().__init__("secret could not be decrypted")


def generate_key() -> str:
    """A new random Fernet key, in the form COLTSFOOT_FERNET_KEYS expects."""
    return Fernet.generate_key().decode("ascii")


def encrypt(plaintext: str) -> str:
    """Encrypt with the primary (first) key; the token is ASCII, safe for a text column."""
    return _multi_fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """Decrypt a token made with any configured key, or raise SecretDecryptError."""
    try:
        return _multi_fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise SecretDecryptError from None


def rotate(token: str) -> str:
    """Re-encrypt a token under the primary key (it may have been made with any configured key)."""
    try:
        return _multi_fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError):
        raise SecretDecryptError from None


def uses_primary_key(token: str) -> bool:
    """Whether the primary (first) key alone decrypts ``token``: such a token needs no rotation.

    Only the primary key is tried, so a token under an old key answers False; so does one no
    configured key decrypts (``rotate`` then raises SecretDecryptError).
    """
    try:
        _primary_fernet().decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeError):
        return False
    return True


def primary_key_fingerprint() -> str:
    """A short, non-secret name of the primary key (the first 12 hex digits of the key's SHA-256),
    for reports that say which key a run rotated to; never the key itself."""
    return hashlib.sha256(_primary_raw_key()).hexdigest()[:12]


def reset_cache() -> None:
    """Forget the cached keys; the next call reads the settings again."""
    global _cached, _cached_primary
    with _lock:
        _cached = None
        _cached_primary = None


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    # override_settings() in tests; also any runtime settings change in development.
    if setting in _RELEVANT_SETTINGS:
        reset_cache()


def _primary_fernet() -> Fernet:
    _multi_fernet()
    primary = _cached_primary
    if primary is None:  # the cache was reset in between (a settings change): read the keys again
        return _load_keys()[0]
    return primary


def _primary_raw_key() -> bytes:
    configured: list[str] = list(settings.FERNET_KEYS)
    if configured:
        return configured[0].strip().encode("ascii")
    return _derive_development_key(settings.SECRET_KEY)


def _multi_fernet() -> MultiFernet:
    global _cached, _cached_primary
    cached = _cached
    if cached is not None:
        return cached
    with _lock:
        if _cached is None:
            keys = _load_keys()
            _cached_primary = keys[0]
            _cached = MultiFernet(keys)
        return _cached


def _load_keys() -> list[Fernet]:
    configured: list[str] = list(settings.FERNET_KEYS)
    if not configured:
        logger.warning(
            "no Fernet keys configured; deriving one from DJANGO_SECRET_KEY (development only, set %s)",
            KEYS_ENV_VAR,
        )
        return [Fernet(_derive_development_key(settings.SECRET_KEY))]
    keys: list[Fernet] = []
    for position, raw in enumerate(configured, start=1):
        try:
            keys.append(_parse_key(raw.strip()))
        except (ValueError, TypeError, binascii.Error):
            # `from None`: the underlying exception must not carry the key into a traceback.
            raise ImproperlyConfigured(
                f"{KEYS_ENV_VAR}: entry {position} of {len(configured)} is not a valid Fernet key "
                "(expected 32 bytes, url-safe base64 encoded; generate one with "
                "`python -c 'from core.crypto import generate_key; print(generate_key())'`)."
            ) from None
    return keys


def _parse_key(raw: str) -> Fernet:
    # Fernet() alone accepts trailing junk after the padding; insist on the canonical encoding so
    # a truncated or mangled variable fails loudly at start-up instead of half-working.
    if base64.urlsafe_b64encode(base64.urlsafe_b64decode(raw)).decode("ascii") != raw:
        raise ValueError("non-canonical key encoding")
    return Fernet(raw)


def _derive_development_key(secret_key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode("utf-8")))
