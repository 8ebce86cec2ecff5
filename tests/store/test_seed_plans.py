from io import StringIO

import pytest
from django.core.management import call_command

from store.models import Plan

pytestmark = pytest.mark.django_db


def test_it_creates_the_demo_plans() -> None:
    out = StringIO()
    call_command("seed_plans", stdout=out)
    assert list(Plan.objects.values_list("slug", "memory_mb")) == [
        ("bunny", 512),
        ("hare", 1024),
        ("warren", 2048),
    ]
    assert "3 created" in out.getvalue()


def test_it_is_idempotent_and_keeps_what_staff_changed() -> None:
    call_command("seed_plans", stdout=StringIO())
    Plan.objects.filter(slug="hare").update(
        stripe_price_id="price_123", is_active=False, monthly_price_cents=2500
    )
    out = StringIO()
    call_command("seed_plans", stdout=out)
    assert Plan.objects.count() == 3
    hare = Plan.objects.get(slug="hare")
    assert (hare.stripe_price_id, hare.is_active, hare.monthly_price_cents) == (
        "price_123",
        False,
        2500,
    )
    assert "0 created, 3 already there" in out.getvalue()


def test_it_adds_only_the_missing_ones() -> None:
    call_command("seed_plans", stdout=StringIO())
    Plan.objects.filter(slug="bunny").delete()
    out = StringIO()
    call_command("seed_plans", stdout=out)
    assert Plan.objects.filter(slug="bunny").exists()
    assert "1 created, 2 already there" in out.getvalue()
