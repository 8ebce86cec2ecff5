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


def test_it_is_idempotent_and_keeps_staff_choices() -> None:
    call_command("seed_plans", stdout=StringIO())
    Plan.objects.filter(slug="hare").update(stripe_price_id="price_123", is_active=False)
    out = StringIO()
    call_command("seed_plans", stdout=out)
    assert Plan.objects.count() == 3
    hare = Plan.objects.get(slug="hare")
    assert (hare.stripe_price_id, hare.is_active) == ("price_123", False)
    assert "0 created, 3 updated" in out.getvalue()
