"""The two workers as processes and under database trouble: they stop on SIGTERM, and a database
error neither loses an event nor kills the loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pika
import pytest
from django.db import OperationalError

from orders.core.provisioning import enqueue
from orders.messaging import host_events, outbox
from orders.messaging.consumer import EventConsumer
from orders.messaging.outbox import Relay
from tests.orders.conftest import get_all
from vmbackend.protocol import topology

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def migrated_sqlite(tmp_path_factory) -> dict[str, str]:
    """Environment for a worker process: its own migrated SQLite file."""
    db = tmp_path_factory.mktemp("workers") / "shop.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{db}",
        "DJANGO_SETTINGS_MODULE": "store.settings",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--skip-checks", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    return env


def _start(command: str, env: dict[str, str], url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", command, "--url", url],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(process: subprocess.Popen, needle: str) -> list[str]:
    seen: list[str] = []
    for line in process.stderr:  # blocks until the worker logs; the pytest timeout bounds it
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never logged: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize(
    ("command", "ready", "stopped"),
    [
        ("relay_outbox", "event=relay_connected", "event=relay_stopped"),
        ("consume_events", "event=consumer_connected", "event=consumer_stopped"),
    ],
)
def test_a_worker_stops_cleanly_on_sigterm(
    command, ready, stopped, migrated_sqlite, orders_amqp_url
):
    process = _start(command, migrated_sqlite, orders_amqp_url)
    try:
        _wait_for_line(process, ready)

        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0
    assert stopped in rest


@pytest.mark.django_db
def test_a_database_error_leaves_the_event_on_the_queue(amqp, orders_amqp_url):
    amqp.basic_publish(
        "warren.events",
        "host.heartbeat",
        json.dumps({"type": "host.heartbeat", "host_id": "h", "capacity": 1}).encode(),
        pika.BasicProperties(delivery_mode=2, user_id="guest"),
    )
    consumer = EventConsumer(url=orders_amqp_url, idle_timeout=0.3)

    with mock.patch.object(host_events, "apply_event", side_effect=OperationalError("db down")):
        with pytest.raises(OperationalError):
            consumer.run(once=True)

    assert len(get_all(amqp, topology.EVENTS_STORE_QUEUE)) == 1  # nacked and requeued, not lost


@pytest.mark.django_db
def test_the_consumer_loop_backs_off_on_a_database_error_and_goes_on(amqp, orders_amqp_url):
    amqp.basic_publish(
        "warren.events",
        "host.heartbeat",
        json.dumps({"type": "host.heartbeat", "host_id": "h", "capacity": 1}).encode(),
        pika.BasicProperties(delivery_mode=2, user_id="guest"),
    )
    consumer = EventConsumer(url=orders_amqp_url, idle_timeout=0.2, backoff_initial=0.01)
    real = host_events.apply_event
    calls = {"n": 0}

    def flaky(body: bytes) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("db down")
        consumer.stop()  # applied on the retry: enough
        return real(body)

    with mock.patch.object(host_events, "apply_event", side_effect=flaky):
        counts = consumer.run()

    assert counts == {"applied": 1}
    assert calls["n"] == 2


@pytest.mark.django_db
def test_the_relay_loop_backs_off_on_a_database_error_and_goes_on(amqp, orders_amqp_url):
    row = enqueue(routing_key="create-vm", body={"version": 1, "command": "create-vm"})
    relay = Relay(url=orders_amqp_url, backoff_initial=0.01)
    real = outbox.publish_pending
    calls = {"n": 0}

    def flaky(channel, **kwargs):  # noqa: ANN001, ANN003
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("db down")
        sent = real(channel, **kwargs)
        relay.stop()
        return sent

    with mock.patch.object(outbox, "publish_pending", side_effect=flaky):
        relay.run()

    row.refresh_from_db()
    assert row.sent_at is not None
    assert calls["n"] == 2


@pytest.mark.django_db
def test_a_database_outage_is_waited_out_with_a_growing_delay_on_one_connection(
    amqp, orders_amqp_url, caplog
):
    """The retry delay doubles while the database stays down and is not reset by reconnecting
    (it was: a poison event looped at the shortest delay, 20 times in 12 s); the event is kept
    (not redelivered through a new connection) and applied once the database is back."""
    amqp.basic_publish(
        "warren.events",
        "host.heartbeat",
        json.dumps({"type": "host.heartbeat", "host_id": "h", "capacity": 1}).encode(),
        pika.BasicProperties(delivery_mode=2, user_id="guest"),
    )
    consumer = EventConsumer(url=orders_amqp_url, idle_timeout=0.2, backoff_initial=0.1)
    real = host_events.apply_event
    calls = {"n": 0}

    def down_for_four_tries(body: bytes) -> str:
        calls["n"] += 1
        if calls["n"] <= 4:
            raise OperationalError("db down")
        consumer.stop()
        return real(body)

    caplog.set_level("WARNING", logger="orders.messaging.host_events")
    with mock.patch.object(host_events, "apply_event", side_effect=down_for_four_tries):
        counts = consumer.run()

    delays = [
        r.getMessage().split("retry_in=")[1]
        for r in caplog.records
        if "event=database_unavailable" in r.getMessage()
    ]
    assert delays == ["0.1s", "0.2s", "0.4s", "0.8s"]
    assert consumer.db_backoff.delay == 0.1  # reset by the applied event
    assert not [r for r in caplog.records if "event=consumer_unavailable" in r.getMessage()]
    assert counts == {"applied": 1}
