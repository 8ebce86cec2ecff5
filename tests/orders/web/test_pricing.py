import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from store.models import Plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def plans() -> list[Plan]:
    return [
        Plan.objects.create(
            slug="small",
            name="Small",
            memory_mb=512,
            vcpus=1,
            disk_gb=4,
            max_connections=100,
            max_queues=200,
            monthly_price_cents=900,
            sort_order=1,
        ),
        Plan.objects.create(
            slug="big",
            name="Big",
            memory_mb=2048,
            vcpus=2,
            disk_gb=16,
            max_connections=2000,
            max_queues=5000,
            monthly_price_cents=4900,
            sort_order=2,
        ),
        Plan.objects.create(
            slug="old",
            name="Retired",
            memory_mb=256,
            vcpus=1,
            disk_gb=1,
            max_connections=10,
            max_queues=10,
            monthly_price_cents=100,
            is_active=False,
        ),
    ]


def test_it_lists_active_plans_with_their_sizes(client: Client, plans: list[Plan]) -> None:
    response = client.get(reverse("store:pricing"))
    assert response.status_code == 200
    assert [p.slug for p in response.context["plans"]] == ["small", "big"]
    html = response.content.decode()
    assert "Retired" not in html
    for text in ("512 MiB", "2 GiB", "16 GB", "up to 2000", "up to 5000", "$49.00", "$9.00"):
        assert text in html


def test_anonymous_buy_goes_to_login_and_back(client: Client, plans: list[Plan]) -> None:
    html = client.get(reverse("store:pricing")).content.decode()
    assert f"{reverse('login')}?next=%2F%23plan-small" in html
    assert reverse("orders:checkout", args=["small"]) not in html


def test_a_customer_gets_buy_forms(client: Client, plans: list[Plan]) -> None:
    user = get_user_model().objects.create_user("alice", "alice@example.com", "pw-123456789")
    client.force_login(user)
    html = client.get(reverse("store:pricing")).content.decode()
    assert f'action="{reverse("orders:checkout", args=["small"])}"' in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_it_says_so_when_nothing_is_on_sale(client: Client) -> None:
    response = client.get(reverse("store:pricing"))
    assert response.status_code == 200
    assert b"No plans are on sale" in response.content
