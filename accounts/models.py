"""The accounts app's tables: failed-login counters (accounts/throttle.py)."""

from __future__ import annotations

from django.db import models


class LoginFailures(models.Model):
    """Failed logins counted for one username or one client address (hashed, see throttle.py).

    Times are Unix seconds (time.time()), as the throttle computes with them."""

    key = models.CharField(max_length=80, primary_key=True)
    count = models.PositiveIntegerField(default=0)
    last_failure_at = models.FloatField(db_index=True)
    locked_until = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.key}: {self.count} failures"
