"""Warren settings: everything configurable comes from the environment (see .env.example).

store/checks.py and orders/checks.py refuse to start (a system check error) with the public
development secrets in a configuration that takes real money or runs without DEBUG.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from store.private_files import local_secret, private_sqlite_file, random_token
from vmbackend.protocol.server_names import DEFAULT_VM_DOMAIN

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Public values that ship in this repository (and in older copies of .env.example).
DEV_SECRET_KEY = "dev-insecure-warren-key-change-me"  # noqa: S105 - public on purpose
DEV_STRIPE_WEBHOOK_SECRET = "whsec_warren_offline_development"  # noqa: S105


DEBUG = env.bool("DJANGO_DEBUG", default=False)
# Production sets its own long random key (and the same one on every web host). Unset or empty:
# a random key generated once for this checkout in var/secret_key.
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or local_secret(
    BASE_DIR / "var" / "secret_key"
)
# Keys for secrets stored in the database (VM admin passwords; orders/lib/encryption.py):
# comma-separated Fernet keys, the first encrypts, all decrypt (rotation: docs/deploy.md). Unset:
# one key generated for this checkout in var/secrets_key, which every process of a one-machine shop
# shares; a shop on a database server must set it (orders/checks.py, warren.E003): its processes may
# run on machines that do not share var/, and a key lost is every stored password lost.
SECRETS_KEYS = [key.strip() for key in env.list("WARREN_SECRETS_KEYS", default=[]) if key.strip()]
SECRETS_KEYS_FROM_ENVIRONMENT = bool(SECRETS_KEYS)
if not SECRETS_KEYS:
    from cryptography.fernet import Fernet

    SECRETS_KEYS = [
        local_secret(BASE_DIR / "var" / "secrets_key", make=lambda: Fernet.generate_key().decode())
    ]
# No "testserver": Django's test setup adds it itself.
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# The https:// origins browsers post forms from when that is not the Host the proxy passes on.
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# Behind a TLS-terminating proxy (docs/deploy.md): HTTPS only, HSTS, cookies never sent over
# plain HTTP, and the proxy's X-Forwarded-Proto tells Django the request came in over TLS. The
# proxy must set that header itself (overwriting any a client sent).
HTTPS = env.bool("WARREN_HTTPS", default=False)
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("WARREN_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("WARREN_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("WARREN_HSTS_PRELOAD", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "store",
    "accounts",
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # /api/v1/ only: token, rate limit, idempotency keys, problem+json errors (orders/api/).
    "orders.api.middleware.ApiMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "store.urls"
WSGI_APPLICATION = "store.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            # The staff dashboard on the admin's front page (orders/admin/dashboard.py).
            "libraries": {"staff_dashboard": "orders.admin.dashboard"},
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Webhook deliveries, the relay and the event worker write concurrently: wait for the lock
    # instead of failing with "database is locked".
    # WAL lets the order pages read while a writer commits (web, relay and event worker are
    # separate processes on one file).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # Sessions and encrypted passwords live there: 0600 from the first byte (store/private_files).
    private_sqlite_file(DATABASES["default"]["NAME"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "orders:list"
LOGOUT_REDIRECT_URL = "store:pricing"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Django's cache. Nothing of Warren's needs it shared: the login throttle counts in the database
# (accounts/throttle.py). The default lives in one process's memory.
CACHES = {"default": env.cache("WARREN_CACHE_URL", default="locmemcache://")}
# Failed logins before a lockout, per username and per client address, and the lockout's length.
LOGIN_FAILURES_PER_USERNAME = env.int("WARREN_LOGIN_FAILURES_PER_USERNAME", default=5)
LOGIN_FAILURES_PER_ADDRESS = env.int("WARREN_LOGIN_FAILURES_PER_ADDRESS", default=20)
LOGIN_LOCKOUT_SECONDS = env.int("WARREN_LOGIN_LOCKOUT_SECONDS", default=900)
# The customer API's rate limit: requests per token per window (seconds); more answer 429.
API_RATE_LIMIT = env.int("WARREN_API_RATE_LIMIT", default=120)
API_RATE_WINDOW_SECONDS = env.int("WARREN_API_RATE_WINDOW_SECONDS", default=60)
# Request header holding the client's address, set by the TLS proxy (e.g. X-Real-IP). Empty: the
# TCP peer (REMOTE_ADDR), which behind a proxy is the proxy itself.
CLIENT_IP_HEADER = env.str("WARREN_CLIENT_IP_HEADER", default="")

# Every email is queued in the database (accounts/mail_queue.py) and delivered by the mail worker
# (`manage.py send_queued_mail`) through the backend the environment's EMAIL_BACKEND names: no
# request waits for (or fails with) the mail server. Django's test runner sets its own.
EMAIL_BACKEND = "accounts.mail_queue.QueueBackend"
MAIL_DELIVERY_BACKEND = env.str(
    "EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"
)
# The mail worker looks for due emails this often (seconds); a failed one is retried (30 s,
# doubling, at most hourly) until it is this old (default 3 days, a reset link's lifetime).
MAIL_QUEUE_POLL_SECONDS = env.float("WARREN_MAIL_POLL_SECONDS", default=1.0)
MAIL_GIVE_UP_SECONDS = env.int("WARREN_MAIL_GIVE_UP_SECONDS", default=3 * 24 * 3600)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Warren <noreply@warren.localhost>")
# For the SMTP backend (django.core.mail.backends.smtp.EmailBackend) in production.
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = 10

# Public base URL of the shop, used for Stripe success/cancel URLs and the offline checkout.
SITE_URL = env.str("WARREN_SITE_URL", default="http://127.0.0.1:8000")

# Stripe. With no secret key the shop runs its offline checkout (see
# orders/billing/offline_checkout.py).
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
# Production sets Stripe's whsec_. Unset (offline payments): a private one generated for this
# checkout in var/, which the offline checkout signs with; never a public value, since anyone
# who knows the secret can sign a customer.subscription.deleted (store/checks.py, warren.E001).
STRIPE_WEBHOOK_SECRET_FROM_ENVIRONMENT = bool(env.str("STRIPE_WEBHOOK_SECRET", default=""))
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="") or local_secret(
    BASE_DIR / "var" / "webhook_secret", make=lambda: f"whsec_{random_token()}"
)
STRIPE_WEBHOOK_TOLERANCE = env.int("STRIPE_WEBHOOK_TOLERANCE", default=300)

# The control broker between the shop and the host daemons.
AMQP_URL = env.str("WARREN_AMQP_URL", default="amqp://guest:guest@127.0.0.1:5672/%2F")
# Each host connects as its own broker user, warren-host-<host id>, and the event worker applies
# an event only when the broker vouches (user_id) that this user sent it (docs/security.md).
# Development only: a user every host shares (e.g. guest); then any host can speak for another.
BROKER_SHARED_USER = env.str("WARREN_BROKER_SHARED_USER", default="")
# The CA (PEM) an amqps:// WARREN_AMQP_URL is verified against; empty: the system's CAs.
BROKER_CA = env.str("WARREN_BROKER_CA", default="")
# Empty: each instance boots the image of its plan's RabbitMQ version (rabbitmq-4.0, ...).
# A name overrides that for every order (`tiny` for a seconds-fast demo or test).
INSTANCE_IMAGE = env.str("WARREN_INSTANCE_IMAGE", default="")
# Warren's root CA certificate (public; docs/tls.md), offered on the order page for clients to
# verify the servers' certificates. Empty: no download (hosts without TLS, or a public CA).
CA_CERT = env.str("WARREN_CA_CERT", default="")
# The servers' DNS domain: each server's certificate names `<short-id>.<domain>`, shown on its
# order page (vmbackend/protocol/server_names.py). The same value as the hosts' and the CA's.
VM_DOMAIN = env.str("WARREN_VM_DOMAIN", default=DEFAULT_VM_DOMAIN)
# A host that has not sent a heartbeat for this long is shown to staff as unreachable.
HOST_HEARTBEAT_TIMEOUT = env.int("WARREN_HOST_HEARTBEAT_TIMEOUT", default=90)
# Placement (orders/fleet/placement.py, docs/fleet.md): `pack` fills the fullest host that fits
# first, `spread` the emptiest; `shared` places nothing (every create-vm to the shared queue, the
# hosts take what fits them: the way before placement). A create-vm declined by PLACEMENT_TRIES
# hosts waits on the shared queue.
PLACEMENT = env.str("WARREN_PLACEMENT", default="pack")
if PLACEMENT not in ("pack", "spread", "shared"):
    raise ImproperlyConfigured("WARREN_PLACEMENT must be pack, spread or shared")
PLACEMENT_TRIES = env.int("WARREN_PLACEMENT_TRIES", default=3)
# Unpaid (pending_payment) orders one customer may have at once (orders/billing/checkout.py), and
# the alarms a customer may set on one server (orders/monitoring/alarms.py); both counted under a
# row lock, so concurrent requests cannot exceed them.
PENDING_ORDERS_PER_CUSTOMER = env.int("WARREN_PENDING_ORDERS_PER_CUSTOMER", default=3)
ALARMS_PER_SERVER = env.int("WARREN_ALARMS_PER_SERVER", default=20)
# SQLite only: the folder of the wake-up sockets between the shop's processes
# (orders/lib/wakeup.py); private to this user, never the shared temp folder.
WAKEUP_DIR = env.str("WARREN_WAKEUP_DIR", default=str(BASE_DIR / "var" / "wake"))
# Waitlist joins one customer may make per hour (orders/fleet/waitlist.py): a bound on rows,
# since each join needs a signed-in account and a sold-out plan.
WAITLIST_JOINS_PER_HOUR = env.int("WARREN_WAITLIST_JOINS_PER_HOUR", default=10)
# The pricing page sells a plan only while a live host fits it grown by this fraction.
SELL_MARGIN = env.float("WARREN_SELL_MARGIN", default=0.1)
# A host silent this many seconds has its VMs re-created elsewhere by the event worker
# (orders/fleet/evacuation.py); 0: only when staff evacuate it from the admin.
HOST_EVACUATE_AFTER = env.int("WARREN_HOST_EVACUATE_AFTER", default=0)
# The order page refetches its metrics and alarms this often (seconds).
METRICS_REFRESH_SECONDS = env.int("WARREN_METRICS_REFRESH_SECONDS", default=15)
# The order page's status request waits up to this long for its order to change (a long poll
# woken on commit, orders/web/order_wait.py); 0 answers at once (the page then polls every 2 s).
ORDER_LONG_POLL_SECONDS = env.float("WARREN_ORDER_LONG_POLL_SECONDS", default=20.0)
# Waiting status requests per web process at most; past it a request answers at once. Keep it
# under the web process's threads (`warren run`: WARREN_WEB_THREADS, default 16).
ORDER_LONG_POLL_MAX_WAITERS = env.int("WARREN_ORDER_LONG_POLL_MAX_WAITERS", default=12)
# The event worker rolls up and prunes the metrics this often (seconds; docs/metrics.md).
METRICS_MAINTENANCE_INTERVAL = env.int("WARREN_METRICS_MAINTENANCE_INTERVAL", default=60)
# Seconds a console command (restart, password, plan) may wait for its host's answer before the
# owner may try again (orders/console/commands.py); a resize restarts the VM, so minutes, not
# seconds.
CONSOLE_COMMAND_TIMEOUT = env.int("WARREN_CONSOLE_COMMAND_TIMEOUT", default=900)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "kv": {"format": "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "kv"}},
    "root": {"handlers": ["console"], "level": env.str("WARREN_LOG_LEVEL", default="INFO")},
    # pika narrates every connection step at INFO; our own modules log what matters.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "pika": {"level": "WARNING"}},
}
