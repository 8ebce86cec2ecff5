import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-42"


@pytest.fixture
def alice() -> AbstractUser:
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


def test_it_shows_the_form_with_links(client: Client) -> None:
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert reverse("password_reset").encode() in response.content
    assert reverse("signup").encode() in response.content


def test_it_logs_in_and_lands_on_the_orders(client: Client, alice: AbstractUser) -> None:
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("orders:list")
    assert client.session["_auth_user_id"] == str(alice.pk)


def test_it_goes_back_to_next(client: Client, alice: AbstractUser) -> None:
    response = client.post(
        reverse("login"), {"username": "alice", "password": PASSWORD, "next": "/#plan-hare"}
    )
    assert response["Location"] == "/#plan-hare"


def test_it_rejects_a_wrong_password(client: Client, alice: AbstractUser) -> None:
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_logout_needs_post_and_goes_to_pricing(client: Client, alice: AbstractUser) -> None:
    client.force_login(alice)
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))
    assert response["Location"] == reverse("store:pricing")
    assert "_auth_user_id" not in client.session
