"""The shop refuses to start with public development secrets where they would be dangerous, and
passes Django's deployment checks with the production settings docs/deploy.md describes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from store.checks import check_secret_key, check_stripe_webhook_secret

ROOT = Path(__file__).resolve().parents[2]
DEV_WEBHOOK_SECRET = "whsec_warren_offline_development"


def _ids(errors: list) -> list[str]:
    return [error.id for error in errors]


@pytest.mark.parametrize("webhook_secret", ["", DEV_WEBHOOK_SECRET])
def test_stripe_keys_with_the_development_webhook_secret_are_an_error(settings, webhook_secret):
    settings.STRIPE_SECRET_KEY = "sk_live_real"
    settings.STRIPE_WEBHOOK_SECRET = webhook_secret

    assert _ids(check_stripe_webhook_secret()) == ["warren.E001"]


def test_stripe_keys_with_a_generated_webhook_secret_are_an_error(settings):
    settings.STRIPE_SECRET_KEY = "sk_live_real"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_generated_in_var"
    settings.STRIPE_WEBHOOK_SECRET_FROM_ENVIRONMENT = False

    assert _ids(check_stripe_webhook_secret()) == ["warren.E001"]


def test_stripe_keys_with_a_real_webhook_secret_pass(settings):
    settings.STRIPE_SECRET_KEY = "sk_live_real"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_from_the_dashboard"
    settings.STRIPE_WEBHOOK_SECRET_FROM_ENVIRONMENT = True

    assert check_stripe_webhook_secret() == []


@pytest.mark.parametrize("debug", [False, True])
def test_offline_payments_refuse_the_development_webhook_secret(settings, debug):
    settings.DEBUG = debug
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = DEV_WEBHOOK_SECRET

    assert _ids(check_stripe_webhook_secret()) == ["warren.E001"]


def test_offline_payments_with_the_generated_webhook_secret_pass(settings):
    settings.STRIPE_SECRET_KEY = ""
    settings.STRIPE_WEBHOOK_SECRET = "whsec_generated_in_var"
    settings.STRIPE_WEBHOOK_SECRET_FROM_ENVIRONMENT = False

    assert check_stripe_webhook_secret() == []


def test_the_development_secret_key_without_debug_is_an_error(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = "dev-insecure-warren-key-change-me"

    assert _ids(check_secret_key()) == ["warren.E002"]


def test_the_development_secret_key_is_fine_with_debug(settings):
    settings.DEBUG = True
    settings.SECRET_KEY = "dev-insecure-warren-key-change-me"

    assert check_secret_key() == []


def test_a_generated_key_is_used_when_none_is_set(settings):
    from store.settings import DEV_SECRET_KEY

    # The test process itself runs without DJANGO_SECRET_KEY (unless a developer set one).
    assert settings.SECRET_KEY != DEV_SECRET_KEY
    assert len(settings.SECRET_KEY) >= 50


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "STRIPE_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "store.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_check_refuses_live_stripe_with_the_development_webhook_secret():
    done = _manage("check", STRIPE_SECRET_KEY="sk_live_real")

    assert done.returncode != 0
    assert "warren.E001" in done.stderr
    assert "STRIPE_WEBHOOK_SECRET" in done.stderr


def test_manage_py_check_refuses_the_development_webhook_secret_offline_without_debug():
    done = _manage("check", DJANGO_DEBUG="False", STRIPE_WEBHOOK_SECRET=DEV_WEBHOOK_SECRET)

    assert done.returncode != 0
    assert "warren.E001" in done.stderr
    assert "public development value" in done.stderr


def test_manage_py_check_offline_without_a_webhook_secret_generates_a_private_one(tmp_path):
    # SQLite, as `make run`: on a database server warren.E003 asks for WARREN_SECRETS_KEYS too.
    checked = _manage(
        "check", DJANGO_DEBUG="False", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}"
    )
    shown = _manage(
        "shell", "-c", "from django.conf import settings as s; print(s.STRIPE_WEBHOOK_SECRET)"
    )

    assert checked.returncode == 0, checked.stderr
    secret = shown.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_") and len(secret) > 50
    assert (ROOT / "var" / "webhook_secret").read_text().strip() == secret
    assert (ROOT / "var" / "webhook_secret").stat().st_mode & 0o777 == 0o600


def test_warren_run_stops_before_serving(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "STRIPE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "warren", "run", "--skip-image-build", "--no-daemon", "--port", "1"],
        cwd=ROOT,
        env={
            **clean,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "DJANGO_SECRET_KEY": "dev-insecure-warren-key-change-me",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1
    assert "warren.E002" in done.stderr + done.stdout
    assert "event=setup_failed" in done.stderr + done.stdout
    assert "Applying" not in done.stdout  # stopped before migrating anything


def test_the_production_settings_pass_the_deployment_checks():
    done = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_DEBUG="False",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(60),
        DJANGO_ALLOWED_HOSTS="shop.example.com",
        WARREN_HTTPS="true",
        WARREN_SECRETS_KEYS=Fernet.generate_key().decode(),
    )

    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


def test_without_https_the_deployment_checks_complain():
    # Guards the test above: the same check does fail when WARREN_HTTPS is off.
    done = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_DEBUG="False",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(60),
        DJANGO_ALLOWED_HOSTS="shop.example.com",
    )

    assert done.returncode != 0
    assert "security.W008" in done.stderr  # SECURE_SSL_REDIRECT


def test_https_settings_trust_the_proxys_forwarded_proto():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from django.conf import settings as s; print(s.SECURE_PROXY_SSL_HEADER, "
            "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)",
        ],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "store.settings", "WARREN_HTTPS": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.stdout.split() == [
        "('HTTP_X_FORWARDED_PROTO',",
        "'https')",
        "True",
        "True",
        "31536000",
    ]
