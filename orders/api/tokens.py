"""API tokens: made (shown once), found by their hash, revoked, and their last use noted.

A token is `wrn_` + 43 characters of `secrets.token_urlsafe(32)`: 256 random bits. Only its
SHA-256 is stored. A slow password hash (PBKDF2, Argon2) protects guessable secrets; nobody guesses
2**256, so it would buy nothing while costing every API request tens of milliseconds of CPU (a
denial of service handed to anyone with a bad token) and making lookup by hash impossible: with
SHA-256 the token is found by one indexed equality query. The hash is compared by the database's
index lookup; a timing difference there leaks at most how a *hash* begins, which does not help
forge a token.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from django.contrib.auth.models import User
from django.db.models import Q
from django.utils import timezone

from orders.models import ApiToken

log = logging.getLogger(__name__)

PREFIX = "wrn_"
TOUCH_EVERY = timedelta(minutes=1)
MAX_TOKENS = 50  # per user: a page that lists them stays short


class TokenError(Exception):
    """A token that cannot be made (the message says why, for the page)."""


def digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_token(*, user: User, name: str, scope: str) -> tuple[ApiToken, str]:
    """A new token and its plaintext, which is never stored: the caller shows it once."""
    name = name.strip()
    if not name or len(name) > 80:
        raise TokenError("Give the token a name of 1 to 80 characters.")
    if scope not in ApiToken.Scope.values:
        raise TokenError("Choose read or read-write.")
    if ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_TOKENS:
        raise TokenError(f"At most {MAX_TOKENS} tokens; revoke one first.")
    plaintext = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        scope=scope,
        prefix=plaintext[: len(PREFIX) + 6],
        token_hash=digest(plaintext),
    )
    log.info("event=api_token_created token_id=%s user_id=%s scope=%s", token.pk, user.pk, scope)
    return token, plaintext


def revoke_token(*, user: User, token_id: int) -> bool:
    """Revoke one of `user`'s tokens; False for a token that is not theirs or already revoked."""
    revoked = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if revoked:
        log.info("event=api_token_revoked token_id=%s user_id=%s", token_id, user.pk)
    return bool(revoked)


def active_tokens(user: User) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=user, revoked_at__isnull=True))


def authenticate(plaintext: str) -> ApiToken | None:
    """The live token with this plaintext (its user active), or None."""
    if not plaintext.startswith(PREFIX) or len(plaintext) > 100:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=digest(plaintext), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is not None:
        touch(token)
    return token


def touch(token: ApiToken) -> None:
    """Note the token's use, at most once a minute: most requests write nothing. Race: requests
    of one token at once all see a stale time; the UPDATE's condition lets one of them write."""
    now = timezone.now()
    if token.last_used_at is not None and token.last_used_at > now - TOUCH_EVERY:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - TOUCH_EVERY)
    ApiToken.objects.filter(stale, pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
