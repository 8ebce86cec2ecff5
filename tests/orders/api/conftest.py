"""Two customers, each with a ready server (metrics, an alarm, a finished job) and tokens, and a
client that speaks to /api/v1/ with a token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from orders.api import tokens
from orders.models import Alarm, ApiToken, ConsoleCommand, Instance, MetricSample, Order
from orders.monitoring.alarms import add_alarm
from store.models import Plan
from tests.orders.conftest import provision
from tests.orders.console_support import make_ready

API = "/api/v1"


class Api:
    """A test client with a bearer token; `call` answers (status, parsed body, response)."""

    def __init__(self, client: Client, token: str) -> None:
        self.client = client
        self.token = token

    def call(
        self, method: str, path: str, body: Any = None, *, key: str = "", **headers: str
    ) -> tuple[int, Any, Any]:
        extra = {"HTTP_AUTHORIZATION": f"Bearer {self.token}"} if self.token else {}
        if key:
            extra["HTTP_IDEMPOTENCY_KEY"] = key
        extra |= {"HTTP_" + k.upper(): v for k, v in headers.items()}
        data = json.dumps(body) if body is not None else None
        response = getattr(self.client, method.lower())(
            API + path, data=data, content_type="application/json", **extra
        )
        parsed = json.loads(response.content) if response.content else None
        return response.status_code, parsed, response


@dataclass
class Customer:
    user: Any
    order: Order
    instance: Instance
    alarm: Alarm
    job: ConsoleCommand
    api: Api  # read-write
    reader: Api  # read-only


def make_customer(name: str, plan: Plan) -> Customer:
    user = get_user_model().objects.create_user(name, f"{name}@example.com", f"pw-{name}-1234567")
    order = Order.objects.create(user=user, plan=plan)
    made = provision(order)
    assert made is not None
    instance = make_ready(made)
    at = timezone.now() - timedelta(minutes=5)
    MetricSample.objects.create(instance=instance, at=at, reachable=True, messages_ready=3)
    alarm = add_alarm(instance=instance, kind="queue_depth", threshold=100, minutes=5)
    job = ConsoleCommand.objects.create(
        instance=instance,
        request_id=__import__("uuid").uuid4(),
        kind=ConsoleCommand.Kind.RESTART,
        status=ConsoleCommand.Status.DONE,
        finished_at=timezone.now(),
    )
    _, rw = tokens.create_token(user=user, name="rw", scope=ApiToken.Scope.READ_WRITE)
    _, ro = tokens.create_token(user=user, name="ro", scope=ApiToken.Scope.READ)
    return Customer(user, order, instance, alarm, job, Api(Client(), rw), Api(Client(), ro))


@pytest.fixture(autouse=True)
def _fresh_rate_counts() -> Any:
    """Each test counts its requests from zero (the counters live in the process's cache)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def api_plans(db: None) -> list[Plan]:
    common = dict(vcpus=1, max_connections=100, max_queues=200, currency="usd")
    return [
        Plan.objects.create(
            slug="api-small",
            name="Small",
            memory_mb=512,
            disk_gb=4,
            monthly_price_cents=900,
            **common,
        ),
        Plan.objects.create(
            slug="api-large",
            name="Large",
            memory_mb=1024,
            disk_gb=8,
            monthly_price_cents=1900,
            **common,
        ),
    ]


@pytest.fixture
def alice(api_plans: list[Plan]) -> Customer:
    return make_customer("alice", api_plans[0])


@pytest.fixture
def bob(api_plans: list[Plan]) -> Customer:
    return make_customer("bob", api_plans[0])
