"""A host's failure reason never shows the customer internal addresses, host ids or paths
(orders/lib/reasons.py): staff read it whole in the admin, the order page and its timeline show
it only when it is plain words, else a generic text."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.console import commands as console
from orders.lib.reasons import for_customer
from orders.models import Activity, ConsoleCommand, Host, Instance, Order
from tests.orders.console_support import HOST, make_ready, outcome
from vmbackend.protocol import messages

GENERIC = "generic text"

host_ids = st.from_regex(r"\A[a-z][a-z0-9]{3,10}(-[a-z0-9]{1,8}){0,2}\Z")
addresses_and_paths = st.one_of(
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(v=4), st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.from_regex(r"\A(/[a-z0-9._-]{1,12}){1,5}\Z"),
    st.from_regex(r"\A[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){1,3}\Z"),  # host names
)
secrets_ = st.one_of(addresses_and_paths, host_ids)
words = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


def _leaks(shown: str, secret: str) -> bool:
    return secret.casefold() in shown.casefold()


@settings(max_examples=400)
@given(before=words, secret=addresses_and_paths, after=words, host_id=host_ids)
def test_no_reason_shows_an_address_a_host_id_or_a_path(
    before: str, secret: str, after: str, host_id: str
) -> None:
    # The host id, a known one, is somewhere in the reason too, or not at all.
    reason = f"{before}{secret}{after}"
    for text in (reason, f"{before}{host_id}{after}", f"{host_id} {reason}"):
        shown = for_customer(text, private=[host_id], generic=GENERIC)

        assert shown == GENERIC or not _leaks(shown, secret), (text, shown)
        assert shown == GENERIC or not _leaks(shown, host_id), (text, shown)


def test_plain_words_are_shown_as_the_host_wrote_them() -> None:
    shown = for_customer("not enough memory on the host.", private=["host-a"], generic=GENERIC)
    assert shown == "not enough memory on the host"
    assert for_customer("host-a is full", private=["host-a"], generic=GENERIC) == GENERIC
    assert for_customer("disk at /var/lib/x", private=[], generic=GENERIC) == GENERIC
    shown = for_customer("did not start within 10 minutes", private=[], generic=GENERIC)
    assert shown == "did not start within 10 minutes"
    assert for_customer("broker on port 5672 refused", private=[], generic=GENERIC) == GENERIC
    assert for_customer("vm12 failed", private=[], generic=GENERIC) == GENERIC


def _page(client: Client, order: Order) -> str:
    return client.get(reverse("orders:detail", args=[order.public_id])).content.decode()


@pytest.mark.django_db
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=secrets_, host_id=host_ids)
def test_a_failed_set_up_never_shows_the_hosts_internals(
    instance: Instance, client: Client, secret: str, host_id: str
) -> None:
    Host.objects.get_or_create(host_id=host_id, defaults={"last_heartbeat_at": timezone.now()})
    reason = f"host {host_id} refused the create-vm: boot failed at {secret}"
    Order.objects.filter(pk=instance.order.pk).update(status=Order.Status.FAILED)
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.FAILED, failure_reason=reason, host_id=host_id
    )
    client.force_login(instance.order.user)

    html = _page(client, instance.order)

    notice = re.search(r"We could not set up your server\.(.*?)</div>", html, re.S)
    assert notice is not None
    assert "What went wrong: a problem on our hosts" in notice.group(1)
    assert secret not in notice.group(1) and host_id not in notice.group(1)
    assert f"boot failed at {secret}" not in html


@pytest.mark.django_db
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=secrets_)
def test_a_failed_command_never_shows_the_hosts_internals(
    ready: Instance, client: Client, secret: str
) -> None:
    rid = uuid.uuid4()
    console.request_restart(order=ready.order, request_id=rid)
    outcome(ready, rid, messages.RESTART_VM, failed=f"qemu on {HOST} at {secret} said no")
    client.force_login(ready.order.user)

    html = _page(client, ready.order)

    assert ConsoleCommand.objects.get(request_id=rid).reason.endswith("said no")  # staff's
    notice = re.search(r'<p class="notice bad" id="console-failure">(.*?)</p>', html, re.S)
    assert notice is not None
    timeline = " ".join(
        Activity.objects.filter(order=ready.order).values_list("message", flat=True)
    )
    for shown in (notice.group(1), timeline):
        assert "Restart failed: its host could not do it." in shown
        assert secret not in shown and HOST not in shown


@pytest.fixture
def ready(instance: Instance) -> Any:
    return make_ready(instance)
