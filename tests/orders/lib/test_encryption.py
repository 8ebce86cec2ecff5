"""VM admin passwords are encrypted at rest (orders/lib/encryption.py) and keys rotate without
loss."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from orders.core.provisioning import forget_credentials, request_provisioning
from orders.lib import encryption
from orders.lib.encryption import UnreadableSecret
from orders.models import Instance, Order

pytestmark = pytest.mark.django_db


def _provision(order: Order) -> Instance:
    with transaction.atomic():
        return request_provisioning(order=Order.objects.select_for_update().get(pk=order.pk))


def _raw_password_column(instance: Instance) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT admin_password_encrypted FROM orders_instance WHERE id = %s",
            [instance.pk],
        )
        return cursor.fetchone()[0]


def _raw_outbox_bodies() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT body FROM orders_outboxmessage")
        return [str(row[0]) for row in cursor.fetchall()]


def test_the_database_never_holds_the_password_in_clear(order):
    instance = _provision(order)
    password = Instance.objects.get(pk=instance.pk).admin_password

    raw = _raw_password_column(instance)

    assert len(password) == 32
    assert password not in raw
    assert raw.startswith("gAAAA")  # a Fernet token (version byte 0x80)
    assert encryption.decrypt(raw) == password
    bodies = _raw_outbox_bodies()
    assert len(bodies) == 1  # the create-vm
    assert all(password not in body for body in bodies)


def test_each_encryption_of_one_password_differs(order):
    # Fernet adds a random IV: equal passwords give unequal tokens (no guessing by comparing).
    assert encryption.encrypt("same-password-123") != encryption.encrypt("same-password-123")


def test_a_forgotten_password_is_empty_not_a_token(order):
    instance = _provision(order)

    forget_credentials(instance=instance)

    assert _raw_password_column(instance) == ""
    assert Instance.objects.get(pk=instance.pk).admin_password == ""


def test_keys_rotate_without_losing_a_password(order, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SECRETS_KEYS = [old]
    instance = _provision(order)
    password = Instance.objects.get(pk=instance.pk).admin_password
    written_with_old = _raw_password_column(instance)

    settings.SECRETS_KEYS = [new, old]  # 1. the new key first, the old one still there
    assert Instance.objects.get(pk=instance.pk).admin_password == password
    call_command("rotate_secrets", stdout=io.StringIO())  # 2. re-encrypt with the new key
    settings.SECRETS_KEYS = [new]  # 3. the old key removed

    assert _raw_password_column(instance) != written_with_old
    assert Instance.objects.get(pk=instance.pk).admin_password == password


def test_removing_a_key_before_rotating_makes_its_passwords_unreadable(order, settings):
    # Guards the test above: without the rotate step, dropping the old key does lose access.
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]
    instance = _provision(order)
    settings.SECRETS_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(UnreadableSecret):
        Instance.objects.get(pk=instance.pk).admin_password  # noqa: B018
    with pytest.raises(CommandError, match=str(instance.public_id)):
        call_command("rotate_secrets")
    assert Instance.objects.get(pk=instance.pk).status == Instance.Status.REQUESTED  # still loads


def test_the_development_key_is_generated_once_outside_the_repository(settings):
    from store.settings import BASE_DIR

    if settings.SECRETS_KEYS_FROM_ENVIRONMENT:
        pytest.skip("WARREN_SECRETS_KEYS is set in this environment")
    generated = (BASE_DIR / "var" / "secrets_key").read_text().strip()
    assert settings.SECRETS_KEYS == [generated]
    assert (BASE_DIR / "var" / "secrets_key").stat().st_mode & 0o077 == 0
    Fernet(generated)  # a valid key


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_the_passwords_already_stored(customer, plan):
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("orders", "0001_initial")], [("orders", "0002_money_encrypt_admin_password")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    order = old.get_model("orders", "Order").objects.create(
        user_id=customer.pk, plan_id=plan.pk, status="paid", paid_at="2026-01-01T00:00:00Z"
    )
    instance = old.get_model("orders", "Instance").objects.create(
        order=order, admin_username="warren-abc123", admin_password="plain-password-before-0002"
    )
    old.get_model("orders", "OutboxMessage").objects.create(
        exchange="computing",
        routing_key="create-vm",
        instance=instance,
        body={
            "options": {
                "admin": {"username": "warren-abc123", "password": "plain-password-before-0002"}
            }
        },
    )

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes("orders"))

    raw = _raw_password_column(instance)
    assert "plain-password-before-0002" not in raw
    assert encryption.decrypt(raw) == "plain-password-before-0002"
    assert all("plain-password-before-0002" not in body for body in _raw_outbox_bodies())
