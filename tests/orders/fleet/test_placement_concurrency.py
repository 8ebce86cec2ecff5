"""Placements at the same moment (real threads, real transactions, PostgreSQL's row locks): two
relays placing on a host with room for one VM never both claim it."""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import connection  # noqa: F401 - needs_row_locks evaluates its condition here

from orders.fleet import placement
from orders.messaging.host_events import handle_message
from orders.models import Instance, OutboxMessage
from store.models import Plan
from tests.orders.billing.test_webhooks_concurrency import THREADS, _run_at_once, needs_row_locks
from tests.orders.fleet.test_placement import heartbeat, paid

pytestmark = pytest.mark.django_db(transaction=True)


@needs_row_locks
def test_relays_racing_for_the_last_room_on_a_host_claim_it_once() -> None:
    plan = Plan.objects.create(
        slug="race",
        name="Race",
        memory_mb=1024,
        vcpus=1,
        disk_gb=4,
        max_connections=10,
        max_queues=10,
        monthly_price_cents=100,
    )
    host_id = f"race-{uuid.uuid4().hex[:6]}"
    handle_message(json.dumps(heartbeat(host_id, 1500)).encode())  # room for one 1 GiB VM
    instances = [paid(plan) for _ in range(THREADS)]
    rows = [OutboxMessage.objects.get(instance=i) for i in instances]

    keys = _run_at_once([lambda row=row: placement.route(row) for row in rows])

    assert sorted(keys) == ["create-vm"] * (THREADS - 1) + [f"host.{host_id}"], keys
    assert Instance.objects.filter(placed_on=host_id).count() == 1
    assert OutboxMessage.objects.filter(routing_key=f"host.{host_id}").count() == 1
