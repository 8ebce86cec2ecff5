"""Shared fixtures. Area fixtures live in tests/<area>/conftest.py.

Every test session gets its own RabbitMQ virtual host on the real local broker, so concurrent test
runs (and a developer's running system) never take each other's messages. A test that uses the
broker (through any fixture that makes a vhost on it) is marked `broker` here, automatically:
`pytest -m "not broker"` runs where no RabbitMQ is.
"""

import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

BROKER = "127.0.0.1:5672"
# The fixtures that create a vhost on the real broker; every broker fixture depends on one of them.
BROKER_FIXTURES = frozenset({"amqp_vhost", "amqp_url", "orders_amqp_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `broker` every test that reaches the real broker through its fixtures (directly or
    through another fixture: `fixturenames` is the whole closure), so the marker is never
    forgotten on a new test."""
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


@pytest.fixture
def shared_broker_user(settings) -> None:
    """The shop accepts events published as the broker's guest user: the development mode in which
    every host shares it (WARREN_BROKER_SHARED_USER). Production (one user per host) is tested in
    tests/orders/messaging/test_senders.py."""
    settings.BROKER_SHARED_USER = "guest"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """PBKDF2's real cost makes every create_user take a noticeable fraction of a second."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def make_vhost(prefix: str) -> str:
    """A new virtual host on the real broker that guest may use fully."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def drop_vhost(vhost: str) -> None:
    try:
        _rabbitmqctl("delete_vhost", vhost)
    except (subprocess.SubprocessError, OSError):
        pass  # the broker may be down after a failure drill; a leftover vhost is harmless


def vhost_url(vhost: str) -> str:
    return f"amqp://guest:guest@{BROKER}/{quote(vhost, safe='')}"


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    vhost = make_vhost("warren-test")
    yield vhost
    drop_vhost(vhost)


@pytest.fixture(scope="session")
def amqp_url(amqp_vhost: str) -> str:
    """URL of the session's private vhost on the real local RabbitMQ."""
    return vhost_url(amqp_vhost)
