"""The customer API's tables (orders/api/): access tokens and the answers kept per idempotency key."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiTokenScope(models.TextChoices):
    READ = "read", "Read"
    READ_WRITE = "read-write", "Read and write"


class ApiToken(models.Model):
    """A customer's API token. Only its SHA-256 is stored (orders/api/tokens.py says why not a
    slow hash); `prefix` is its first characters, for the customer to tell tokens apart."""

    Scope = ApiTokenScope

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=12, choices=ApiTokenScope.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Updated at most once a minute (tokens.touch): a request costs no write most of the time.
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scope__in=ApiTokenScope.values), name="api_token_scope_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def __repr__(self) -> str:  # never the hash
        return f"<ApiToken {self.pk} {self.prefix} scope={self.scope}>"

    @property
    def can_write(self) -> bool:
        return self.scope == ApiTokenScope.READ_WRITE


class IdempotentRequest(models.Model):
    """The first answer to a POST with an Idempotency-Key, per token: a repeat with the same body
    gets this answer again; `status_code` 0 while the first request is still running."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)  # sha256 of method, path and body
    status_code = models.PositiveSmallIntegerField(default=0)
    content_type = models.CharField(max_length=100, blank=True)
    body = models.BinaryField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            # Two requests with one key at once: one insert wins, the other finds its row.
            models.UniqueConstraint(fields=["token", "key"], name="idempotency_key_per_token"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status_code})"
