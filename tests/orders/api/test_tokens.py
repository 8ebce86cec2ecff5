"""Tokens: made on the account page and shown once, kept as a hash, scoped, revoked, last use
noted at most once a minute."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.api import tokens
from orders.models import ApiToken
from tests.orders.api.conftest import Api

TOKEN = re.compile(r"wrn_[-\w]{43}")


@pytest.fixture
def signed_in(client, alice):
    client.force_login(alice.user)
    return client


def test_a_new_token_is_shown_once_and_kept_only_as_its_hash(signed_in, alice):
    response = signed_in.post("/account/api-tokens/", {"name": "ci", "scope": "read"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    plaintext = TOKEN.search(response.content.decode()).group(0)
    token = ApiToken.objects.get(user=alice.user, name="ci")
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert token.scope == "read" and plaintext.startswith(token.prefix)
    again = signed_in.get("/account/api-tokens/").content.decode()
    assert plaintext not in again and token.prefix in again
    assert Api(alice.api.client, plaintext).call("GET", "/servers")[0] == 200


@pytest.mark.parametrize(
    ("name", "scope", "error"),
    [("", "read", "a name of 1 to 80"), ("x" * 81, "read", "a name"), ("ci", "admin", "Choose")],
)
def test_a_token_form_that_is_wrong_says_why_and_makes_none(signed_in, alice, name, scope, error):
    before = ApiToken.objects.count()
    response = signed_in.post("/account/api-tokens/", {"name": name, "scope": scope})
    assert response.status_code == 400
    assert error in response.content.decode()
    assert ApiToken.objects.count() == before


def test_a_user_has_at_most_so_many_tokens(alice, monkeypatch):
    monkeypatch.setattr(tokens, "MAX_TOKENS", 2)  # alice has two already
    with pytest.raises(tokens.TokenError, match="At most 2"):
        tokens.create_token(user=alice.user, name="third", scope="read")


def test_a_revoked_token_no_longer_works(signed_in, alice):
    token = ApiToken.objects.get(user=alice.user, name="rw")
    response = signed_in.post(f"/account/api-tokens/{token.pk}/revoke/")
    assert response.status_code == 302
    status, body, _ = alice.api.call("GET", "/servers")
    assert status == 401 and body["status"] == 401
    assert "rw" not in [t.name for t in tokens.active_tokens(alice.user)]


def test_nobody_revokes_another_customers_token(client, alice, bob):
    client.force_login(bob.user)
    token = ApiToken.objects.get(user=alice.user, name="rw")
    client.post(f"/account/api-tokens/{token.pk}/revoke/")
    assert alice.api.call("GET", "/servers")[0] == 200


def test_the_page_needs_a_sign_in(client, db):
    assert client.get("/account/api-tokens/").status_code == 302


def test_a_deactivated_users_tokens_stop_working(alice):
    alice.user.is_active = False
    alice.user.save()
    assert alice.api.call("GET", "/servers")[0] == 401


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer wrn_nope", "Basic abc", "Bearer " + "wrn_" + "a" * 200]
)
def test_a_missing_or_wrong_token_is_401(alice, header):
    response = alice.api.client.get("/api/v1/servers", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_a_session_is_not_a_token(client, alice):
    """The API does not take the page's sign-in: a page cannot be made to call it (CSRF)."""
    client.force_login(alice.user)
    assert client.get("/api/v1/servers").status_code == 401


def test_the_last_use_is_written_at_most_once_a_minute(alice):
    token = ApiToken.objects.get(user=alice.user, name="rw")
    assert token.last_used_at is None
    alice.api.call("GET", "/plans")
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        alice.api.call("GET", "/plans")
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    alice.api.call("GET", "/plans")
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_a_stale_copy_does_not_write_over_a_newer_use(alice):
    """Race: two requests read the token before either wrote; the second UPDATE finds the time
    fresh and writes nothing."""
    token = ApiToken.objects.get(user=alice.user, name="rw")
    stale = ApiToken.objects.get(pk=token.pk)
    tokens.touch(token)
    written = ApiToken.objects.get(pk=token.pk).last_used_at
    stale.last_used_at = timezone.now() - timedelta(hours=1)
    tokens.touch(stale)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == written


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=120))
def test_any_text_as_a_token_finds_nothing(db, text):
    assert tokens.authenticate(text) is None
