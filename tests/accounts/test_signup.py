import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse

from tests.net import free_port

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-42"


def _signup(client: Client, **overrides: str):
    data = {
        "username": "alice",
        "email": "alice@example.com",
        "password1": PASSWORD,
        "password2": PASSWORD,
        **overrides,
    }
    return client.post(reverse("signup"), data)


def test_it_shows_the_form(client: Client) -> None:
    response = client.get(reverse("signup"))
    assert response.status_code == 200
    assert b'name="email"' in response.content
    assert b'name="password1"' in response.content


def test_it_creates_an_account_and_logs_in(client: Client) -> None:
    response = _signup(client)
    assert response.status_code == 302
    assert response["Location"] == reverse("store:pricing")
    user = get_user_model().objects.get(username="alice")
    assert user.email == "alice@example.com"
    assert user.check_password(PASSWORD)
    assert client.session["_auth_user_id"] == str(user.pk)


def test_it_goes_back_to_next(client: Client) -> None:
    response = client.post(
        reverse("signup") + "?next=/orders/",
        {"username": "a", "email": "a@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response["Location"] == "/orders/"


def test_it_ignores_an_offsite_next(client: Client) -> None:
    response = _signup(client, next="https://evil.example/")
    assert response["Location"] == reverse("store:pricing")


def test_it_requires_an_email(client: Client) -> None:
    response = _signup(client, email="")
    assert response.status_code == 200
    assert not get_user_model().objects.exists()


def test_a_known_email_answers_exactly_like_a_new_one(client: Client) -> None:
    # Refusing it ("already exists") told anyone which addresses have an account here.
    fresh = _signup(client, username="carol", email="carol@example.com")
    client.logout()
    get_user_model().objects.create_user("bob", "Alice@Example.com", PASSWORD)
    mail.outbox.clear()

    known = _signup(client)

    assert (known.status_code, known["Location"]) == (fresh.status_code, fresh["Location"])
    assert get_user_model().objects.filter(username="alice").exists()
    assert "_auth_user_id" in client.session


def test_the_owner_of_a_known_email_hears_of_the_new_account(client: Client) -> None:
    get_user_model().objects.create_user("bob", "Alice@Example.com", PASSWORD)

    _signup(client)

    (message,) = mail.outbox
    assert message.to == ["Alice@example.com"]  # create_user lowercases the domain
    assert '"alice"' in message.body and "bob" in message.body
    assert "/accounts/password_reset/" in message.body


def test_a_new_email_sends_no_mail(client: Client) -> None:
    _signup(client)

    assert mail.outbox == []


def test_it_rejects_a_weak_password(client: Client) -> None:
    response = _signup(client, password1="12345678", password2="12345678")
    assert response.status_code == 200
    assert not get_user_model().objects.exists()


def test_it_redirects_a_logged_in_user(client: Client) -> None:
    user = get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)
    client.force_login(user)
    response = client.get(reverse("signup"))
    assert response.status_code == 302


def test_a_mail_server_that_is_down_does_not_give_the_address_away(
    client: Client, settings
) -> None:
    from accounts.models import QueuedEmail

    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nothing listens
    settings.EMAIL_BACKEND = "accounts.mail_queue.QueueBackend"  # as in production
    settings.MAIL_DELIVERY_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    get_user_model().objects.create_user("bob", "alice@example.com", PASSWORD)

    response = _signup(client)

    assert (response.status_code, response["Location"]) == (302, reverse("store:pricing"))
    assert QueuedEmail.objects.get().to == ["alice@example.com"]  # sent when the server is back
