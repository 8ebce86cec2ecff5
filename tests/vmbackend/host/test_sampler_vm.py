"""instance.metrics end to end: a real daemon subprocess, the real broker, a real tiny-image VM whose
management stand-in (vmbackend/images/tiny/api.sh) answers the overview and node shapes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.tcp_proxy import TcpProxy
from tests.vmbackend.daemon_helpers import vms_of, wait_host, with_port
from vmbackend.machine import qmp
from vmbackend.machine.management_api import ManagementAPI
from vmbackend.protocol import messages
from vmbackend.protocol.messages import Metrics

ADMIN = {"username": "warren-metrics", "password": "metrics-horse-battery-1"}
READY_TIMEOUT = 240
SAMPLE_TIMEOUT = 60  # a few intervals, under TCG on a shared machine


def _samples(client, vm_id: str) -> list[tuple[dict[str, Any], Metrics]]:
    found = []
    for body in client.events:
        if body.get("type") == "instance.metrics" and body.get("instance_id") == vm_id:
            event = messages.parse_event(messages.encode_event(body))  # the shop's parser
            assert event.metrics is not None
            found.append((body, event.metrics))
    return found


def _wait_sample(
    client, vm_id: str, want: Callable[[Metrics], bool], *, after: int = 0
) -> tuple[int, Metrics]:
    """The first sample (index, metrics) after the first `after` samples that `want` accepts."""
    end = time.monotonic() + SAMPLE_TIMEOUT
    while time.monotonic() < end:
        for index, (_body, metrics) in enumerate(_samples(client, vm_id)):
            if index >= after and want(metrics):
                return index, metrics
        client.pump(0.5)
    seen = [m for _b, m in _samples(client, vm_id)][after:]
    raise AssertionError(f"no matching instance.metrics within {SAMPLE_TIMEOUT} s; saw {seen}")


def _heartbeats(client, host_id: str) -> list[dict[str, Any]]:
    return [
        e for e in client.events if e.get("type") == "host.heartbeat" and e["host_id"] == host_id
    ]


@pytest.mark.vm
def test_a_ready_tiny_vm_reports_metrics_that_move_and_unreachable_while_paused(daemons, client):
    daemon = daemons.start(
        extra_env={"WARREN_METRICS_INTERVAL": "1", "WARREN_METRICS_TIMEOUT": "3"}
    )
    wait_host(client, daemon.host_id)
    vm_id = str(uuid.uuid4())
    reply = client.call(
        "create-vm", {"image": "tiny", "vm-id": vm_id, "memory-mb": 256, "admin": ADMIN}
    )
    assert reply["execution-info"]["status"] == "success", reply
    ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready", ready

    # 1. A reachable sample with the guest's own moving numbers and QEMU's from the host.
    first_index, first = _wait_sample(client, vm_id, lambda m: m.reachable)
    assert first.mem_used > 0 and first.mem_limit > first.mem_used and first.mem_alarm is False
    assert first.disk_free > 0 and first.disk_alarm is False and first.uptime_s >= 0
    assert first.rss_bytes > 50 * 1024 * 1024  # QEMU with a 256 MiB guest
    assert first.cpu_percent is not None and first.cpu_percent >= 0
    body = _samples(client, vm_id)[first_index][0]
    assert "seq" not in body and body["host_id"] == daemon.host_id
    _index, later = _wait_sample(
        client, vm_id, lambda m: m.reachable and m.uptime_s > first.uptime_s, after=first_index
    )

    # 2. The queue depth goes up, then down, as the test sets it in the VM's stand-in.
    api = ManagementAPI(ready["management_url"], ADMIN["username"], ADMIN["password"])
    api.put("api/warren-test/messages_ready", {"value": 250})
    api.put("api/warren-test/publish_rate", {"value": 12.5})
    api.put("api/warren-test/mem_alarm", {"value": True})
    up_index, up = _wait_sample(client, vm_id, lambda m: m.messages_ready == 250)
    assert up.publish_rate == 12.5 and up.mem_alarm is True
    api.put("api/warren-test/messages_ready", {"value": 0})
    api.delete("api/warren-test/mem_alarm")
    _down_index, down = _wait_sample(
        client, vm_id, lambda m: m.messages_ready == 0, after=up_index + 1
    )
    assert down.mem_alarm is False
    # The test hook is the stand-in's alone and takes only known names, numbers and booleans.
    assert api.request("PUT", "api/warren-test/users", {"value": 1}).status == 404
    assert api.request("PUT", "api/warren-test/queues", {"value": "lots"}).status == 400
    guest = ManagementAPI(ready["management_url"], "guest", "guest")
    assert guest.request("PUT", "api/warren-test/queues", {"value": 9}).status == 401

    # 3. A paused guest does not answer: reachable false (with QEMU's numbers), heartbeats go on.
    qmp_sock = daemon.state_dir / "machines" / vm_id / "qmp.sock"
    qmp.command(qmp_sock, "stop")
    try:
        beats_before = len(_heartbeats(client, daemon.host_id))
        count_before = len(_samples(client, vm_id))
        _index, gone = _wait_sample(client, vm_id, lambda m: not m.reachable, after=count_before)
        assert gone.messages_ready is None and gone.mem_used is None
        assert gone.rss_bytes > 0
        assert len(_heartbeats(client, daemon.host_id)) > beats_before
        assert vms_of(client, daemon.host_id)[vm_id]["status"] == "ready"  # commands answered
    finally:
        qmp.command(qmp_sock, "cont")
    count_after = len(_samples(client, vm_id))
    _wait_sample(client, vm_id, lambda m: m.reachable, after=count_after)
    assert "broker connection lost" not in daemon.log_text()
    assert ADMIN["password"] not in daemon.log_text()
    log = daemon.log_text()
    assert f"metrics unreachable host_id={daemon.host_id} vm_id={vm_id}" in log
    assert f"metrics reachable again host_id={daemon.host_id} vm_id={vm_id}" in log
    assert later.uptime_s > first.uptime_s


@pytest.mark.vm
def test_samples_taken_while_the_broker_is_unreachable_are_dropped_not_replayed(
    daemons, client, amqp_url
):
    proxy = TcpProxy("127.0.0.1", 5672).up()
    try:
        daemon = daemons.start(
            amqp_url=with_port(amqp_url, proxy.port),
            extra_env={"WARREN_METRICS_INTERVAL": "1", "WARREN_METRICS_TIMEOUT": "3"},
        )
        wait_host(client, daemon.host_id)
        vm_id = str(uuid.uuid4())
        client.call("create-vm", {"image": "tiny", "vm-id": vm_id, "memory-mb": 256})
        ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
        assert ready["type"] == "instance.ready", ready
        _wait_sample(client, vm_id, lambda m: m.reachable)

        proxy.down()
        down_at = datetime.now(UTC)
        client.pump(8.0)  # eight intervals' samples are taken while the daemon is cut off
        up_at = datetime.now(UTC)
        proxy.up()
        after = len(_samples(client, vm_id))
        _wait_sample(client, vm_id, lambda m: m.reachable, after=after)  # flowing again

        taken = [
            datetime.fromisoformat(body["occurred_at"]) for body, _m in _samples(client, vm_id)
        ]
        middle = [
            t for t in taken if down_at + timedelta(seconds=2) < t < up_at - timedelta(seconds=2)
        ]
        assert middle == []  # none of the outage's samples arrived late
        assert f"metrics dropped host_id={daemon.host_id}" in daemon.log_text()
        assert daemon.proc.poll() is None
    finally:
        proxy.down()
