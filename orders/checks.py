"""Refuse to start with keys that cannot keep the VM admin passwords (orders/lib/encryption.py).

Errors, like store/checks.py's (warren.E001, E002): every `manage.py` command that runs system
checks stops, and so does `python -m warren run`. Registered by OrdersConfig.ready.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

from orders.lib.encryption import invalid_keys


@register()
def check_secrets_keys(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The keys that encrypt the VM admin passwords in the database (orders/lib/encryption.py)."""
    errors = []
    bad = invalid_keys(settings.SECRETS_KEYS)
    if bad:
        errors.append(
            Error(
                f"WARREN_SECRETS_KEYS entry {', '.join(str(n + 1) for n in bad)} is not a Fernet "
                "key (32 bytes, URL-safe base64).",
                hint="Generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'",
                id="warren.E004",
            )
        )
    engine = settings.DATABASES["default"]["ENGINE"]
    if (
        not settings.DEBUG
        and not settings.SECRETS_KEYS_FROM_ENVIRONMENT
        and engine != "django.db.backends.sqlite3"
    ):
        errors.append(
            Error(
                "WARREN_SECRETS_KEYS is not set while DJANGO_DEBUG is off and the database is a "
                "server: each machine would generate its own key in var/, and passwords one "
                "encrypts the others cannot read (a lost key loses every stored password).",
                hint="Set WARREN_SECRETS_KEYS to a Fernet key, the same on every machine "
                "(docs/deploy.md).",
                id="warren.E003",
            )
        )
    return errors
