"""manage.py rotate_secrets: re-encrypt every stored secret with the current (first) key.

Key rotation (docs/deploy.md): put the new key first in WARREN_SECRETS_KEYS, keeping the old one
after it, restart, run this, then remove the old key. Safe to run at any time and more than once.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orders.lib.encryption import UnreadableSecret, rotate
from orders.models import Instance

log = logging.getLogger(__name__)


def rotate_admin_passwords() -> tuple[int, list[str]]:
    """(how many were re-encrypted, vm-ids of those no configured key opens)."""
    rotated, unreadable = 0, []
    rows = Instance.objects.exclude(admin_password_encrypted="").values_list(
        "pk", "public_id", "admin_password_encrypted"
    )
    for pk, public_id, token in rows.iterator():
        try:
            fresh = rotate(token)
        except UnreadableSecret:
            unreadable.append(str(public_id))
            log.error("event=secret_unreadable instance_id=%s", public_id)
            continue
        # Compare-and-set on the token we read: a password forgotten meanwhile stays forgotten.
        rotated += Instance.objects.filter(pk=pk, admin_password_encrypted=token).update(
            admin_password_encrypted=fresh
        )
    log.info("event=secrets_rotated count=%s unreadable=%s", rotated, len(unreadable))
    return rotated, unreadable


class Command(BaseCommand):
    help = "Re-encrypt every stored VM admin password with the first key of WARREN_SECRETS_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated, unreadable = rotate_admin_passwords()
        self.stdout.write(f"Re-encrypted {rotated} password(s) with the current key.")
        if unreadable:
            raise CommandError(
                f"{len(unreadable)} password(s) no configured key opens (instances "
                f"{', '.join(unreadable)}): put the key they were written with back into "
                "WARREN_SECRETS_KEYS and run this again."
            )
