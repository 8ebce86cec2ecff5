import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_it_needs_a_login(client: Client) -> None:
    response = client.get(reverse("password_change"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_it_changes_the_password(client: Client) -> None:
    user = get_user_model().objects.create_user("alice", "alice@example.com", "old-password-1x")
    client.force_login(user)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": "old-password-1x",
            "new_password1": "new-password-2y-long",
            "new_password2": "new-password-2y-long",
        },
    )
    assert response["Location"] == reverse("password_change_done")
    user.refresh_from_db()
    assert user.check_password("new-password-2y-long")
