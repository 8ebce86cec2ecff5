"""Console actions submitted at the same moment (real threads, real transactions, PostgreSQL's
row locks): the same form twice sends once, two different actions send one."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection  # noqa: F401 - needs_row_locks evaluates its condition here

from orders.console import commands as console
from orders.models import ConsoleCommand, Instance, OutboxMessage
from tests.orders.billing.test_webhooks_concurrency import THREADS, _run_at_once, needs_row_locks
from tests.orders.console_support import make_ready

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ready(instance: Instance) -> Instance:
    return make_ready(instance)


def _sent(instance: Instance) -> int:
    return OutboxMessage.objects.filter(instance=instance, routing_key="host.host-a").count()


@needs_row_locks
def test_the_same_form_posted_at_once_sends_one_command(ready: Instance) -> None:
    rid = uuid.uuid4()
    call: Callable[[], Any] = lambda: console.request_restart(order=ready.order, request_id=rid)  # noqa: E731

    results = _run_at_once([call] * THREADS)

    assert all(isinstance(r, console.Started) for r in results), results
    assert sorted(r.new for r in results) == [False] * (THREADS - 1) + [True]
    assert ConsoleCommand.objects.count() == 1 and _sent(ready) == 1


@needs_row_locks
def test_different_actions_at_once_send_one(ready: Instance) -> None:
    calls = [
        (lambda: console.request_restart(order=ready.order, request_id=uuid.uuid4()))
        if n % 2
        else (lambda: console.request_password_rotation(order=ready.order, request_id=uuid.uuid4()))
        for n in range(THREADS)
    ]

    results = _run_at_once(calls)

    started = [r for r in results if isinstance(r, console.Started)]
    refused = [r for r in results if isinstance(r, console.ConsoleError)]
    assert len(started) == 1 and len(refused) == THREADS - 1, results
    assert ConsoleCommand.objects.count() == 1 and _sent(ready) == 1
