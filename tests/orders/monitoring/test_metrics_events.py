"""instance.metrics through the real broker: built with the contract's builder, published to
warren.events, applied by the event worker (EventConsumer), on SQLite or PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from orders.models import Alarm, DeadLetter, Instance, MetricSample
from tests.orders.conftest import get_all
from tests.orders.messaging.test_host_events import _consume, _publish
from tests.orders.monitoring.test_metrics import sample
from vmbackend.protocol import messages, topology

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ready(instance: Instance) -> Instance:
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.READY, host_id="host-a", ready_at=timezone.now(), last_event_seq=7
    )
    instance.refresh_from_db()
    return instance


def body(instance: Instance, seconds_ago: float, host: str = "host-a", **values: Any) -> dict:
    event = messages.metrics_event(
        instance_id=str(instance.public_id), host_id=host, metrics=sample(**values)
    )
    event["occurred_at"] = (timezone.now() - timedelta(seconds=seconds_ago)).isoformat()
    return event


def test_samples_published_to_the_broker_are_stored_outside_the_seq_path(
    ready, amqp, orders_amqp_url
):
    first = body(ready, 90, messages_ready=1234)
    _publish(amqp, first, body(ready, 60, messages_ready=1300), first)  # the first one twice
    counts = _consume(orders_amqp_url)
    assert counts == {"recorded": 2, "duplicate": 1}
    rows = list(MetricSample.objects.order_by("at").values_list("messages_ready", flat=True))
    assert rows == [1234, 1300]
    ready.refresh_from_db()
    assert ready.last_event_seq == 7  # untouched: metrics are not seq-ordered
    assert get_all(amqp, topology.EVENTS_STORE_QUEUE) == []  # all acked


def test_a_copy_on_another_host_and_an_unknown_vm_store_nothing(ready, amqp, orders_amqp_url):
    stranger = body(ready, 30)
    stranger["instance_id"] = "00000000-0000-4000-8000-000000000000"
    _publish(amqp, body(ready, 30, host="host-b"), stranger)
    assert _consume(orders_amqp_url) == {"other_host": 1, "unknown_instance": 1}
    assert MetricSample.objects.count() == 0


def test_a_malformed_sample_is_dead_lettered_and_the_next_one_applied(ready, amqp, orders_amqp_url):
    bad = body(ready, 60)
    bad["messages_ready"] = -1
    _publish(amqp, json.dumps(bad).encode(), body(ready, 30))
    counts = _consume(orders_amqp_url)
    assert counts["rejected"] == 1 and counts["recorded"] == 1
    assert MetricSample.objects.count() == 1
    assert DeadLetter.objects.filter(reason__contains="messages_ready").exists()


def test_a_queue_depth_alarm_fires_and_clears_through_the_worker(
    ready, amqp, orders_amqp_url, mailoutbox
):
    from orders.monitoring.alarms import add_alarm

    add_alarm(instance=ready, kind=Alarm.Kind.QUEUE_DEPTH, threshold=100, minutes=1)
    _publish(amqp, *(body(ready, 600 - 30 * i, messages_ready=500) for i in range(3)))
    _consume(orders_amqp_url)
    alarm = ready.alarms.get(kind=Alarm.Kind.QUEUE_DEPTH)
    assert alarm.status == Alarm.State.FIRING
    _publish(amqp, *(body(ready, 300 - 30 * i, messages_ready=0) for i in range(3)))
    _consume(orders_amqp_url)
    alarm.refresh_from_db()
    assert alarm.status == Alarm.State.OK
    assert [m.subject.split(":")[0] for m in mailoutbox] == ["Alarm", "Cleared"]
