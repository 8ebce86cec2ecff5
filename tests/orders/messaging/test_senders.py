"""A host is who the broker says it is (issue 20, item 1): events from another host's broker user
are refused, with real broker users on the real broker as the attacker.

Production mode here (WARREN_BROKER_SHARED_USER empty): host <id> must publish as broker user
warren-host-<id>; the broker itself refuses a user_id that is not the publishing connection's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.messaging.consumer import EventConsumer, dispatch
from orders.models import Instance, OutboxMessage
from tests.orders.conftest import get_all
from tests.orders.messaging.test_host_events import _event, _ready
from vmbackend.protocol import broker_users, messages, topology
from warren.broker_setup import with_user


@pytest.fixture(autouse=True)
def _one_user_per_host(settings: Any) -> None:
    settings.BROKER_SHARED_USER = ""


@pytest.fixture
def hosts(orders_amqp_url: str) -> Iterator[dict[str, str]]:
    """Two real broker users on the test's vhost, host-a's and an attacker's ("evil"), with
    the permissions `python -m vmbackend broker add-host` gives; deleted afterwards."""
    vhost = unquote(urlsplit(orders_amqp_url).path.lstrip("/"))
    suffix = uuid.uuid4().hex[:8]
    ids = {"a": f"host-a-{suffix}", "evil": f"evil-{suffix}"}
    urls = {
        name: with_user(
            orders_amqp_url,
            broker_users.host_user(host_id),
            broker_users.add_host(host_id, vhost=vhost),
        )
        for name, host_id in ids.items()
    }
    yield {**ids, **{f"{name}_url": url for name, url in urls.items()}}
    for host_id in ids.values():
        broker_users.delete_user(broker_users.host_user(host_id))


def _publish_as(url: str, event: dict[str, Any], user_id: str | None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            topology.EVENTS_EXCHANGE,
            event["type"],
            json.dumps(event).encode(),
            pika.BasicProperties(content_type="application/json", user_id=user_id),
        )
    finally:
        connection.close()


def _consume(url: str) -> dict[str, int]:
    return EventConsumer(url=url, idle_timeout=0.3).run(once=True)


def _owned_by_a(instance: Instance, host_a: str, *, placed: bool) -> None:
    """host-a accepted the VM (it is the owner); `placed`: its create-vm went to host-a's own
    queue, so no other host ever had it."""
    if placed:
        OutboxMessage.objects.filter(instance=instance).update(
            routing_key=topology.host_key(host_a)
        )
    Instance.objects.filter(pk=instance.pk).update(
        host_id=host_a, status=Instance.Status.BOOTING, last_event_seq=1
    )


def _deletes_to(instance: Instance, host_id: str) -> int:
    return OutboxMessage.objects.filter(
        instance=instance, routing_key=topology.host_key(host_id), body__command="delete-vm"
    ).count()


@pytest.mark.django_db(transaction=True)
def test_the_broker_refuses_an_event_under_another_hosts_user(instance, amqp, hosts):
    """The attacker cannot even publish as host-a: the broker closes its channel."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        _publish_as(
            hosts["evil_url"],
            _ready(instance, 5, hosts["a"]),
            broker_users.host_user(hosts["a"]),
        )
    assert refused.value.reply_code == 406


@pytest.mark.django_db(transaction=True)
def test_an_event_naming_another_host_is_dead_lettered(instance, amqp, hosts, orders_amqp_url):
    """evil, as itself, says host-a's VM is ready with its own URL: refused, dead-lettered with
    the reason, the customer's instance unchanged, no delete-vm to host-a."""
    _owned_by_a(instance, hosts["a"], placed=False)
    forged = _ready(instance, 5, hosts["a"])
    forged["amqp_url"] = "amqps://warren-x@mq.attacker.example/"
    _publish_as(hosts["evil_url"], forged, broker_users.host_user(hosts["evil"]))

    counts = _consume(orders_amqp_url)

    assert counts.get("rejected") == 1, counts
    fresh = Instance.objects.get(pk=instance.pk)
    assert fresh.status == Instance.Status.BOOTING and fresh.amqp_url == ""
    assert _deletes_to(instance, hosts["a"]) == 0
    dead = get_all(amqp, topology.DEAD_QUEUE) or []
    reasons = [props.headers[topology.REJECT_HEADER] for _m, props, _b in dead]
    assert any("not by host" in reason for reason in reasons) or counts.get(
        "dead_letter_recorded"
    ), reasons


@pytest.mark.django_db(transaction=True)
def test_an_event_without_user_id_is_refused(instance, amqp, hosts, orders_amqp_url):
    _owned_by_a(instance, hosts["a"], placed=False)
    _publish_as(hosts["evil_url"], _ready(instance, 5, hosts["a"]), None)

    assert _consume(orders_amqp_url).get("rejected") == 1
    assert Instance.objects.get(pk=instance.pk).status == Instance.Status.BOOTING


@pytest.mark.django_db(transaction=True)
def test_evil_under_its_own_name_cannot_take_a_vm_placed_on_host_a(
    instance, amqp, hosts, orders_amqp_url
):
    """Before: a ready from another host moved a not-yet-ready instance there and sent host-a a
    delete-vm for the real VM. Now a host that was never sent the create-vm is refused."""
    _owned_by_a(instance, hosts["a"], placed=True)
    forged = _ready(instance, 5, hosts["evil"])
    forged["amqp_url"] = "amqps://warren-x@mq.attacker.example/"
    _publish_as(hosts["evil_url"], forged, broker_users.host_user(hosts["evil"]))

    counts = _consume(orders_amqp_url)

    assert counts.get("rejected") == 1, counts
    fresh = Instance.objects.get(pk=instance.pk)
    assert (fresh.host_id, fresh.status, fresh.amqp_url) == (
        hosts["a"],
        Instance.Status.BOOTING,
        "",
    )
    assert _deletes_to(instance, hosts["a"]) == 0


@pytest.mark.django_db(transaction=True)
def test_the_owner_under_its_own_user_is_applied(instance, amqp, hosts, orders_amqp_url):
    _owned_by_a(instance, hosts["a"], placed=True)
    _publish_as(hosts["a_url"], _ready(instance, 5, hosts["a"]), broker_users.host_user(hosts["a"]))

    assert _consume(orders_amqp_url).get("applied") == 1
    fresh = Instance.objects.get(pk=instance.pk)
    assert fresh.status == Instance.Status.READY
    assert fresh.amqp_url == "amqp://warren-x@127.0.0.1:20002/"


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_for_another_host_is_refused(amqp, hosts, orders_amqp_url):
    from orders.models import Host

    body = messages.event("host.heartbeat", instance_id=None, host_id=hosts["a"], seq=1, capacity=9)
    _publish_as(hosts["evil_url"], body, broker_users.host_user(hosts["evil"]))

    assert _consume(orders_amqp_url).get("rejected") == 1
    assert not Host.objects.filter(host_id=hosts["a"]).exists()


_USERS = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from(["guest", "warren-shop", "warren-host-a", "warren-host-b", "warren-host-"]),
    st.text(max_size=20),
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    user_id=_USERS,
    host=st.sampled_from(["a", "b", "a.b", "evil"]),
    kind=st.sampled_from(["instance.ready", "instance.accepted", "host.heartbeat"]),
)
@pytest.mark.django_db
def test_no_event_applies_from_a_user_that_is_not_its_hosts(instance, user_id, host, kind):
    """Property: whatever user_id, host_id and event, the event changes nothing unless the
    user is exactly warren-host-<host_id> (and the instance then only when that host owns it)."""
    Instance.objects.filter(pk=instance.pk).update(
        host_id="a", status=Instance.Status.BOOTING, last_event_seq=1, amqp_url=""
    )
    if kind == "host.heartbeat":
        body = messages.event("host.heartbeat", instance_id=None, host_id=host, seq=1)
    elif kind == "instance.ready":
        body = _ready(instance, 5, host)
    else:
        body = _event(instance, kind, 5, host)

    rows_before = OutboxMessage.objects.count()

    result, reason = dispatch(json.dumps(body).encode(), user_id)

    rightful = user_id == f"warren-host-{host}"
    if not rightful:
        assert result == "rejected" and reason
        fresh = Instance.objects.get(pk=instance.pk)
        assert (fresh.host_id, fresh.status, fresh.last_event_seq) == (
            "a",
            Instance.Status.BOOTING,
            1,
        )
    if not rightful:
        assert OutboxMessage.objects.count() == rows_before  # no delete-vm, nothing queued
