"""The signed-in request of the account pages (for mypy: `user` is a User)."""

from django.contrib.auth.models import User
from django.http import HttpRequest


class SignedInRequest(HttpRequest):
    user: User
