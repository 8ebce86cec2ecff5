import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from store.models import Plan

pytestmark = pytest.mark.django_db


def test_staff_can_list_and_edit_plans(client: Client) -> None:
    Plan.objects.create(
        slug="small", name="Small", memory_mb=512, disk_gb=4,
        max_connections=100, max_queues=200, monthly_price_cents=900,
    )
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456789")
    client.force_login(admin)
    response = client.get(reverse("admin:store_plan_changelist"), {"q": "small"})
    assert response.status_code == 200
    assert b"Small" in response.content


def test_a_customer_cannot(client: Client) -> None:
    user = get_user_model().objects.create_user("alice", "alice@example.com", "pw-123456789")
    client.force_login(user)
    response = client.get(reverse("admin:store_plan_changelist"))
    assert response.status_code == 302
