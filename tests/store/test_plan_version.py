"""A plan names its RabbitMQ version: the pages show it and the create-vm request boots its image."""

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client
from django.urls import reverse

from orders.core.provisioning import request_provisioning
from orders.models import Order, OutboxMessage
from store.models import Plan
from vmbackend.protocol import versions

pytestmark = pytest.mark.django_db


def _plan(slug: str, **fields: object) -> Plan:
    return Plan.objects.create(
        slug=slug, name=slug.title(), memory_mb=512, vcpus=1, disk_gb=4,
        max_connections=100, max_queues=200, monthly_price_cents=900, **fields,
    )  # fmt: skip


def _provision(plan: Plan) -> dict:
    user = get_user_model().objects.create_user(f"buyer-{plan.slug}", password="pw-123456789")
    order = Order.objects.create(user=user, plan=plan)
    with transaction.atomic():
        request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))
    (row,) = OutboxMessage.objects.filter(routing_key="create-vm", instance__order=order)
    return row.body["options"]


def test_a_new_plan_runs_the_default_version_and_every_version_has_an_image() -> None:
    assert _plan("fresh").rabbitmq_version == versions.DEFAULT_VERSION == "4.0"
    assert {v: versions.image_for(v) for v, _ in versions.CHOICES} == {
        "4.0": "rabbitmq-4.0",
        "3.10": "rabbitmq-3.10",
    }
    assert versions.for_image("rabbitmq").version == "3.10"  # the name 3.10 had before versions
    assert versions.for_image("tiny") is None
    with pytest.raises(KeyError):
        versions.image_for("3.9")


def test_create_vm_boots_the_image_of_the_plans_version(settings) -> None:
    settings.INSTANCE_IMAGE = ""
    assert _provision(_plan("new"))["image"] == "rabbitmq-4.0"
    assert _provision(_plan("old", rabbitmq_version="3.10"))["image"] == "rabbitmq-3.10"


def test_an_instance_image_setting_overrides_the_plan(settings) -> None:
    settings.INSTANCE_IMAGE = "tiny"  # demo/test override: WARREN_INSTANCE_IMAGE=tiny
    assert _provision(_plan("demo"))["image"] == "tiny"


def test_the_pricing_and_order_pages_name_the_version(client: Client) -> None:
    new, old = _plan("new", sort_order=1), _plan("old", rabbitmq_version="3.10", sort_order=2)
    html = client.get(reverse("store:pricing")).content.decode()
    new_card = html[html.index('id="plan-new"') : html.index('id="plan-old"')]
    old_card = html[html.index('id="plan-old"') :]
    assert "<span>RabbitMQ</span>4.0" in new_card and "3.10" not in new_card
    assert "<span>RabbitMQ</span>3.10" in old_card

    user = get_user_model().objects.create_user("carol", password="pw-carol-123456")
    order = Order.objects.create(user=user, plan=old)
    client.force_login(user)
    html = client.get(reverse("orders:detail", args=[order.public_id])).content.decode()
    assert "RabbitMQ 3.10" in html
    assert new.get_rabbitmq_version_display() == "RabbitMQ 4.0"
