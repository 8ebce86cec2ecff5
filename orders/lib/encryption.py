"""Secrets the shop must keep but never store readable: Fernet (AES-128-CBC + HMAC-SHA256, from
`cryptography`) under the keys in settings.SECRETS_KEYS (env WARREN_SECRETS_KEYS).

The first key encrypts; every key decrypts (MultiFernet), so a new key can be put in front, the
stored tokens re-encrypted with `manage.py rotate_secrets`, and only then the old key removed
(docs/deploy.md, "Rotating WARREN_SECRETS_KEYS"). An empty string stays empty: it means "no
secret" (a forgotten password), not a secret.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class UnreadableSecret(Exception):
    """A stored token that no configured key opens (a key was removed before rotating)."""


@lru_cache(maxsize=8)
def _multi_fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _fernet() -> MultiFernet:
    keys = tuple(key.strip() for key in settings.SECRETS_KEYS if key.strip())
    if not keys:
        raise ImproperlyConfigured("WARREN_SECRETS_KEYS holds no key")
    return _multi_fernet(keys)


def invalid_keys(keys: list[str]) -> list[int]:
    """Positions (0-based) of the entries in `keys` that are not Fernet keys."""
    bad = []
    for position, key in enumerate(keys):
        try:
            Fernet(key.strip())
        except ValueError:
            bad.append(position)
    return bad


def generate_key() -> str:
    return Fernet.generate_key().decode()


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise UnreadableSecret("no key in WARREN_SECRETS_KEYS opens this secret") from exc


def rotate(token: str) -> str:
    """The same secret, encrypted with the first (current) key."""
    if not token:
        return ""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise UnreadableSecret("no key in WARREN_SECRETS_KEYS opens this secret") from exc
