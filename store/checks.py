"""Refuse to start with the repository's public secrets where they would be dangerous.

These are errors, not deploy warnings: every `manage.py` command that runs system checks (runserver,
migrate, check, the relay and the event worker) stops, and so does `python -m warren run` (it
migrates before it serves). docs/deploy.md lists what to set instead. The check of the keys that
encrypt the VM passwords (warren.E003, E004) is orders/checks.py: it needs orders' encryption.
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
