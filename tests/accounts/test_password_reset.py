import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.core import mail
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-brand-new-secret-77"


@pytest.fixture
def alice() -> AbstractUser:
    return get_user_model().objects.create_user("alice", "alice@example.com", "old-password-1x")


def test_it_mails_a_link_that_sets_a_new_password(client: Client, alice: AbstractUser) -> None:
    response = client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert response["Location"] == reverse("password_reset_done")
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@example.com"]
    assert message.subject == "Reset your Warren password"

    link = re.search(r"https?://[^/\s]+(/accounts/reset/\S+)", message.body)
    assert link is not None
    response = client.get(link.group(1))  # redirects to the token-less "set-password" URL
    assert response.status_code == 302
    response = client.post(
        response["Location"], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert response["Location"] == reverse("password_reset_complete")
    alice.refresh_from_db()
    assert alice.check_password(NEW_PASSWORD)


def test_it_says_the_same_for_an_unknown_address(client: Client) -> None:
    response = client.post(reverse("password_reset"), {"email": "nobody@example.com"})
    assert response["Location"] == reverse("password_reset_done")
    assert mail.outbox == []


def test_a_bad_link_is_refused(client: Client, alice: AbstractUser) -> None:
    url = reverse("password_reset_confirm", kwargs={"uidb64": "MQ", "token": "bad-token"})
    response = client.get(url)
    assert response.status_code == 200
    assert b"no longer valid" in response.content


def test_a_known_and_an_unknown_address_get_the_same_answer(
    client: Client, alice: AbstractUser
) -> None:
    known = client.post(reverse("password_reset"), {"email": "alice@example.com"}, follow=True)
    unknown = client.post(reverse("password_reset"), {"email": "nobody@example.com"}, follow=True)

    assert known.redirect_chain == unknown.redirect_chain == [(reverse("password_reset_done"), 302)]
    assert known.content == unknown.content
    assert len(mail.outbox) == 1  # only the real account gets a mail
