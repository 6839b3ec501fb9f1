"""Secrets at rest (cluster kubeconfigs, instance credentials, notebook tokens): Fernet, keyed
by FIELD_ENCRYPTION_KEY; the FIELD_ENCRYPTION_KEY_FALLBACKS are still read, so that a key can
be rotated with nothing stored becoming unreadable (`manage.py rotate_secrets`)."""

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@functools.cache
def _fernet(key: str) -> Fernet:
    # Any string works as FIELD_ENCRYPTION_KEY; it is stretched to Fernet's 32 bytes.
    digest = hashlib.sha256(key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _keys() -> MultiFernet:
    """The current key first (it encrypts), then the fallbacks (they only decrypt)."""
    return MultiFernet([_fernet(key) for key in (settings.FIELD_ENCRYPTION_KEY,
                                                  *settings.FIELD_ENCRYPTION_KEY_FALLBACKS)])


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return _fernet(settings.FIELD_ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _keys().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError(
            "A stored secret cannot be decrypted: FIELD_ENCRYPTION_KEY changed since it was "
            "saved, and the key it was saved with is not among FIELD_ENCRYPTION_KEY_FALLBACKS."
        ) from exc


def reencrypt(token: str) -> str:
    """The same secret, encrypted with the current key (ValueError if no key reads it)."""
    if not token:
        return ""
    try:
        return _keys().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("no FIELD_ENCRYPTION_KEY or fallback reads it") from exc
