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
    """Whoever knows the webhook secret can sign any Stripe event: a checkout.session.completed
    (a VM for free) or a customer.subscription.deleted for someone else's order. The public
    development value is refused whatever the Stripe keys and DEBUG (offline, the shop generates
    a private one in var/); with a Stripe key the secret must be Stripe's own, from the
    environment (a generated one would refuse every real delivery)."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if secret == settings.DEV_STRIPE_WEBHOOK_SECRET:
        return [
            Error(
                "STRIPE_WEBHOOK_SECRET is the public development value: anyone could sign a "
                "payment or cancellation event.",
                hint="Unset it for offline payments (a private one is generated in var/), or "
                "set the endpoint's signing secret (whsec_...) from Stripe's dashboard.",
                id="warren.E001",
            )
        ]
    if settings.STRIPE_SECRET_KEY and (
        not secret or not getattr(settings, "STRIPE_WEBHOOK_SECRET_FROM_ENVIRONMENT", True)
    ):
        return [
            Error(
                "STRIPE_SECRET_KEY is set but STRIPE_WEBHOOK_SECRET is not: Stripe's deliveries "
                "could not be verified.",
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
