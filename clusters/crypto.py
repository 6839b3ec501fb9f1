"""Secrets at rest (cluster kubeconfigs, instance credentials): Fernet, keyed by a setting."""

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@functools.cache
def _fernet(key: str) -> Fernet:
    # Any string works as FIELD_ENCRYPTION_KEY; it is stretched to Fernet's 32 bytes.
    digest = hashlib.sha256(key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return _fernet(settings.FIELD_ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet(settings.FIELD_ENCRYPTION_KEY).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError(
            "A stored secret cannot be decrypted: FIELD_ENCRYPTION_KEY changed since it was saved."
        ) from exc
