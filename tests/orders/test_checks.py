"""The shop refuses to start with keys that cannot keep the VM admin passwords (orders/checks.py:
warren.E003, warren.E004)."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from orders.checks import check_secrets_keys


def _ids(errors: list) -> list[str]:
    return [error.id for error in errors]


POSTGRES = {"ENGINE": "django.db.backends.postgresql", "NAME": "warren"}
SQLITE = {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}


def test_a_database_server_without_debug_needs_secrets_keys(settings):
    settings.DEBUG, settings.DATABASES = False, {"default": POSTGRES}
    settings.SECRETS_KEYS_FROM_ENVIRONMENT = False  # only the key generated in var/

    assert _ids(check_secrets_keys()) == ["warren.E003"]


@pytest.mark.parametrize(
    ("debug", "database", "from_environment"),
    [(False, POSTGRES, True), (True, POSTGRES, False), (False, SQLITE, False)],
    ids=["key-set", "debug", "one-machine-sqlite"],
)
def test_secrets_keys_pass_where_a_generated_key_is_safe_or_one_is_set(
    settings, debug, database, from_environment
):
    settings.DEBUG, settings.DATABASES = debug, {"default": database}
    settings.SECRETS_KEYS_FROM_ENVIRONMENT = from_environment

    assert check_secrets_keys() == []


def test_a_malformed_secrets_key_is_an_error(settings):
    settings.SECRETS_KEYS = [Fernet.generate_key().decode(), "not-a-fernet-key"]
    settings.SECRETS_KEYS_FROM_ENVIRONMENT = True

    errors = check_secrets_keys()

    assert _ids(errors) == ["warren.E004"]
    assert "entry 2" in errors[0].msg
