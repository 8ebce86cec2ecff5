"""Failed logins are throttled per username and per client address; the lockout ends by itself."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.urls import reverse

from accounts import throttle

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-42"


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.LOGIN_FAILURES_PER_USERNAME = 5
    settings.LOGIN_FAILURES_PER_ADDRESS = 20
    settings.LOGIN_LOCKOUT_SECONDS = 900
    settings.CLIENT_IP_HEADER = ""


@pytest.fixture
def alice() -> AbstractUser:
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


def _login(client: Client, username: str, password: str, **extra: str):
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def test_forty_wrong_passwords_lock_the_account_and_the_right_one_is_refused(
    client: Client, alice: AbstractUser
) -> None:
    statuses = [_login(client, "alice", f"wrong-{i}").status_code for i in range(40)]

    assert statuses[:5] == [200] * 5  # the form again, "wrong password"
    assert set(statuses[5:]) == {429}
    response = _login(client, "alice", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed logins. Try again in 15 minutes." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_lockout_is_per_username(client: Client, alice: AbstractUser) -> None:
    get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    for i in range(5):
        _login(client, "alice", f"wrong-{i}")

    assert _login(client, "bob", PASSWORD).status_code == 302


def test_the_username_count_ignores_case_and_spaces(client: Client, alice: AbstractUser) -> None:
    for name in ("alice", "ALICE", "Alice", " alice", "aLiCe"):
        _login(client, name, "wrong")

    assert _login(client, "alice", PASSWORD).status_code == 429


def test_one_address_spraying_many_usernames_is_locked_out(
    client: Client, alice: AbstractUser
) -> None:
    for i in range(20):
        _login(client, f"user{i}", "wrong", REMOTE_ADDR="10.1.2.3")

    assert _login(client, "alice", PASSWORD, REMOTE_ADDR="10.1.2.3").status_code == 429
    assert _login(client, "alice", PASSWORD, REMOTE_ADDR="10.9.9.9").status_code == 302


def test_behind_a_proxy_the_configured_header_is_the_address(settings) -> None:
    from django.test import RequestFactory

    settings.CLIENT_IP_HEADER = "X-Real-IP"
    request = RequestFactory().get("/", HTTP_X_REAL_IP="203.0.113.7", REMOTE_ADDR="127.0.0.1")

    assert throttle.client_address(request) == "203.0.113.7"
    settings.CLIENT_IP_HEADER = ""
    assert throttle.client_address(request) == "127.0.0.1"


def test_a_success_clears_the_usernames_count(client: Client, alice: AbstractUser) -> None:
    for i in range(4):
        _login(client, "alice", f"wrong-{i}")
    assert _login(client, "alice", PASSWORD).status_code == 302
    client.logout()

    for i in range(4):
        _login(client, "alice", f"wrong-again-{i}")

    assert _login(client, "alice", PASSWORD).status_code == 302


def test_the_lockout_ends_by_itself() -> None:
    for _ in range(5):
        throttle.record_failure(username="alice", address="10.0.0.1", now=1000.0)

    assert throttle.seconds_locked(username="alice", address="10.0.0.1", now=1000.0) == 900
    assert throttle.seconds_locked(username="alice", address="10.0.0.1", now=1899.5) == 1
    assert throttle.seconds_locked(username="alice", address="10.0.0.1", now=1900.0) == 0


def test_the_lockout_really_expires(client: Client, alice: AbstractUser, settings) -> None:
    import time

    settings.LOGIN_LOCKOUT_SECONDS = 1
    for i in range(5):
        _login(client, "alice", f"wrong-{i}")
    assert _login(client, "alice", PASSWORD).status_code == 429

    time.sleep(1.2)

    assert _login(client, "alice", PASSWORD).status_code == 302


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1 second"), (59, "59 seconds"), (61, "2 minutes"), (900, "15 minutes")],
)
def test_the_wait_is_said_in_words(seconds: int, text: str) -> None:
    assert throttle.wait_message(seconds) == text


def test_the_admin_login_is_throttled_too(client: Client) -> None:
    get_user_model().objects.create_superuser("staff", "staff@example.com", PASSWORD)
    url = reverse("admin:login")
    for i in range(5):
        client.post(url, {"username": "staff", "password": f"wrong-{i}"})

    response = client.post(url, {"username": "staff", "password": PASSWORD})

    assert "Too many failed logins" in response.content.decode()
    assert "_auth_user_id" not in client.session
