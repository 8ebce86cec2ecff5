from typing import Any

import pytest

FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """PBKDF2's real cost makes every create_user take a noticeable fraction of a second."""
    settings.PASSWORD_HASHERS = FAST_HASHERS
