"""Refuse to start with the repository's public secrets where they would be dangerous.

These are errors, not deploy warnings: every `manage.py` command that runs system checks (runserver,
migrate, check, the relay and the event worker) stops, and so does `python -m warren run` (it
migrates before it serves). docs/deploy.md lists what to set instead.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_stripe_webhook_secret(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """With a Stripe key the shop takes real payments; the public development webhook secret
    would let anyone sign a checkout.session.completed and get a VM for free."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if settings.STRIPE_SECRET_KEY and (not secret or secret == settings.DEV_STRIPE_WEBHOOK_SECRET):
        return [
            Error(
                "STRIPE_SECRET_KEY is set but STRIPE_WEBHOOK_SECRET is empty or the public "
                "development default: anyone could sign a payment event.",
                hint="Set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_...) "
                "from Stripe's dashboard.",
                id="warren.E001",
            )
        ]
    return []


@register()
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Sessions, password reset links and CSRF tokens are signed with SECRET_KEY. (Django itself
    refuses an empty one.)"""
    if not settings.DEBUG and settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        return [
            Error(
                "DJANGO_SECRET_KEY is the public development default while DJANGO_DEBUG is off: "
                "anyone could forge sessions and password reset links.",
                hint="Set DJANGO_SECRET_KEY to a long random value (or unset it on a "
                "development machine to get a generated one).",
                id="warren.E002",
            )
        ]
    return []


@register()
def check_secrets_keys(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The keys that encrypt the VM admin passwords in the database (orders/lib/encryption.py)."""
    from orders.lib.encryption import invalid_keys

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
