"""The AMQP outbox and the dead letters the event worker read."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from orders.models.instances import Instance


class OutboxMessage(models.Model):
    """An AMQP message written in the same transaction as the change that needs it.

    The relay (manage.py relay_outbox) publishes unsent rows with publisher confirms and sets
    sent_at afterwards: at-least-once, so consumers de-duplicate by message_id / vm-id.
    """

    message_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    exchange = models.CharField(max_length=255)
    routing_key = models.CharField(max_length=255)
    body = models.JSONField()
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="outbox_messages"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The relay's query: unsent rows, oldest first.
            models.Index(
                fields=["created_at", "id"],
                condition=models.Q(sent_at__isnull=True),
                name="outbox_unsent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.routing_key} {self.message_id}"


class DeadLetter(models.Model):
    """A message nobody could serve, read back from the dead-letter queue `computing.dead.q`.

    Commands a host refused (a create-vm here fails its order with the host's reason) and events
    the shop refused. Kept so staff see them in the admin; bounded (orders/messaging/dead_letters.py
    keeps the newest DEAD_LETTERS_KEPT rows). The body is stored with every password masked.
    """

    received_at = models.DateTimeField(default=timezone.now, editable=False)
    rejected_by = models.CharField(max_length=100)  # a host id, or "shop"
    routing_key = models.CharField(max_length=255, blank=True)
    message_id = models.CharField(max_length=100, blank=True)
    reason = models.TextField()
    body = models.TextField(blank=True)
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_letters"
    )
    # What the shop did with it (orders/messaging/dead_letters.py): order_failed, deletion_finished,
    # ...
    result = models.CharField(max_length=30)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.routing_key or '-'} refused by {self.rejected_by}"
