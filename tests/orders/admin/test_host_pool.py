"""A host's warm pool as staff see it: the heartbeat's `pool` (built by the daemon's
Registry.pool_census, checked by the contract's parser) stored per host and listed in the admin."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from orders.messaging.host_events import handle_message
from orders.models import Host
from vmbackend.protocol import messages
from vmbackend.protocol.messages import MalformedEvent

CENSUS = [
    {"image": "rabbitmq-4.0", "memory_mb": 512, "target": 2, "ready": 1, "starting": 1},
    {"image": "tiny", "memory_mb": 256, "target": 1, "ready": 0, "starting": 0},
]


def _beat(**fields) -> bytes:
    body = messages.event(
        messages.HEARTBEAT,
        instance_id=None,
        host_id="host-p",
        seq=1,
        capacity=4,
        running=1,
        free_slots=3,
        daemon_version="0.3",
        **fields,
    )
    return json.dumps(body).encode()


@pytest.mark.django_db
def test_the_pool_of_each_host_is_stored_and_shown_to_staff(admin_client):
    assert handle_message(_beat(pool=CENSUS)) == "applied"
    host = Host.objects.get(host_id="host-p")
    assert host.pool == (
        "rabbitmq-4.0 512 MiB: 1/2 ready, 1 starting; tiny 256 MiB: 0/1 ready, 0 starting"
    )
    page = admin_client.get(reverse("admin:orders_host_changelist")).content.decode()
    assert "rabbitmq-4.0 512 MiB: 1/2 ready, 1 starting" in page

    assert handle_message(_beat()) == "applied"  # a host without a pool (WARREN_POOL empty)
    assert Host.objects.get(host_id="host-p").pool == ""


@pytest.mark.parametrize(
    "pool",
    [
        "tiny",
        [1],
        [{"image": "../x", "memory_mb": 1, "target": 1, "ready": 1, "starting": 0}],
        [{"image": "tiny", "memory_mb": -1, "target": 1, "ready": 1, "starting": 0}],
        [{"image": "tiny", "memory_mb": 256, "target": 1, "ready": True, "starting": 0}],
        [{"image": "tiny", "memory_mb": 256}],
        [CENSUS[0]] * 17,
    ],
)
def test_a_malformed_pool_is_refused(pool):
    with pytest.raises(MalformedEvent):
        messages.pool_summary(pool)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=10), c),
        max_leaves=20,
    )
)
def test_any_pool_value_is_summarised_or_refused(value):
    try:
        summary = messages.pool_summary(value)
    except MalformedEvent:
        return
    assert len(summary) <= 2000


@pytest.mark.django_db
def test_a_vm_claimed_from_the_pool_is_ready_for_the_shop(instance):
    from orders.models import Instance
    from tests.orders.console_support import apply, ready_fields

    assert apply(instance, messages.INSTANCE_ACCEPTED, image="tiny") == "applied"
    fields = {**ready_fields(instance), "boot": "pool", "seconds": 0.9}
    assert apply(instance, messages.INSTANCE_READY, **fields) == "applied"
    assert Instance.objects.get(pk=instance.pk).status == Instance.Status.READY
