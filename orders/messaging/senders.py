"""Who sent an event: the broker user in its `user_id` (checked by the broker against the
publishing connection) must be the user of the host the event names (docs/security.md).

A host can publish to the events exchange, so without this any host could speak for another:
report another host's VM ready with its own URLs, or heartbeat for it.
"""

from __future__ import annotations

from django.conf import settings

from vmbackend.protocol import broker_users
from vmbackend.protocol.messages import Event

MAX_NAME = 128


def host_user(host_id: str) -> str:
    """The broker user host `host_id` must send as (a shared one only in development)."""
    return str(settings.BROKER_SHARED_USER) or broker_users.host_user(host_id)


def sender_refusal(event: Event, user_id: str | None) -> str:
    """Why `event` must not be applied because of who sent it; "" when its sender is its host."""
    if not user_id:
        return "event refused: no user_id, so no sender the broker vouches for"
    if user_id != host_user(event.host_id):
        return (
            f"event refused: sent by broker user {user_id[:MAX_NAME]}, "
            f"not by host {event.host_id[:MAX_NAME]}'s user"
        )
    return ""
