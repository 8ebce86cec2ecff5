"""A plan's TLS setting (docs/tls.md): whether the plain ports stay open, sent in create-vm."""

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from orders.core.provisioning import request_provisioning
from orders.models import Order, OutboxMessage
from store.models import Plan

pytestmark = pytest.mark.django_db


def _options(plan: Plan) -> dict:
    user = get_user_model().objects.create_user(f"buyer-{plan.slug}", password="pw-123456789")
    order = Order.objects.create(user=user, plan=plan)
    with transaction.atomic():
        request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    (row,) = OutboxMessage.objects.filter(routing_key="create-vm", instance__order=order)
    return row.body["options"]


def _plan(slug: str, **fields: object) -> Plan:
    return Plan.objects.create(
        slug=slug, name=slug.title(), memory_mb=512, vcpus=1, disk_gb=4,
        max_connections=100, max_queues=200, monthly_price_cents=900, **fields,
    )  # fmt: skip


def test_a_plan_keeps_the_plain_ports_open_by_default_and_says_nothing() -> None:
    plan = _plan("open")
    assert plan.plain_ports is True
    assert "plain-ports" not in _options(plan)  # the body older hosts already know


def test_a_tls_only_plan_asks_the_host_to_close_them() -> None:
    assert _options(_plan("tls-only", plain_ports=False))["plain-ports"] is False
