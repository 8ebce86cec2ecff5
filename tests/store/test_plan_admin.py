import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse

from store.models import Plan
from vmbackend.protocol import messages

pytestmark = pytest.mark.django_db


def test_staff_can_list_and_edit_plans(client: Client) -> None:
    Plan.objects.create(
        slug="small",
        name="Small",
        memory_mb=512,
        disk_gb=4,
        max_connections=100,
        max_queues=200,
        monthly_price_cents=900,
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


# -- the hosts' bounds (issue 9, item 3) ----------------------------------------------------------


VALID = {
    "slug": "big",
    "name": "Big",
    "memory_mb": 512,
    "vcpus": 1,
    "disk_gb": 4,
    "max_connections": 100,
    "max_queues": 200,
    "monthly_price_cents": 900,
    "rabbitmq_version": "4.0",
    "currency": "usd",
    "sort_order": 0,
}
OUT_OF_BOUNDS = [
    ("memory_mb", messages.MEMORY_MB[1] + 1),
    ("memory_mb", messages.MEMORY_MB[0] - 1),
    ("vcpus", messages.VCPUS[1] + 1),
    ("vcpus", 0),
    ("disk_gb", messages.DISK_GB[1] + 1),
    ("disk_gb", 0),
    ("max_connections", 0),
    ("max_queues", messages.LIMIT[1] + 1),
]


@pytest.fixture
def staff(client: Client) -> Client:
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456789")
    client.force_login(admin)
    return client


@pytest.mark.parametrize(("field", "value"), OUT_OF_BOUNDS)
def test_the_plan_admin_refuses_a_size_the_hosts_would_refuse(staff, field, value):
    response = staff.post(reverse("admin:store_plan_add"), {**VALID, field: value})

    assert response.status_code == 200  # the form again, with the error
    errors = response.context["adminform"].form.errors
    assert field in errors
    assert not Plan.objects.exists()


def test_the_plan_admin_takes_the_largest_plan_a_host_runs(staff):
    largest = {
        "memory_mb": messages.MEMORY_MB[1],
        "vcpus": messages.VCPUS[1],
        "disk_gb": messages.DISK_GB[1],
        "max_connections": messages.LIMIT[1],
    }

    response = staff.post(reverse("admin:store_plan_add"), {**VALID, **largest})

    assert response.status_code == 302
    assert Plan.objects.get(slug="big").memory_mb == messages.MEMORY_MB[1]


@pytest.mark.parametrize(("field", "value"), OUT_OF_BOUNDS)
def test_the_database_refuses_a_plan_outside_the_bounds(field, value):
    with pytest.raises(IntegrityError), transaction.atomic():
        Plan.objects.create(**{**VALID, field: value})


@pytest.mark.django_db(transaction=True)
def test_the_migration_brings_an_old_plan_within_bounds_and_deactivates_it():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("store", "0001_initial")])
    old_apps = executor.loader.project_state([("store", "0001_initial")]).apps
    before_versions = {k: v for k, v in VALID.items() if k != "rabbitmq_version"}
    old_apps.get_model("store", "Plan").objects.create(
        **{**before_versions, "memory_mb": 65536, "vcpus": 16}
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    plan = Plan.objects.get(slug="big")
    assert (plan.memory_mb, plan.vcpus, plan.is_active) == (16384, 8, False)
    assert plan.disk_gb == 4
