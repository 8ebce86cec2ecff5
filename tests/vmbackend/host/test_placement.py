"""A create-vm placed on one host (routing key host.<id>, docs/fleet.md) against a real daemon
and the real broker: what fits is taken, what does not is declined with an event and never
booted; the heartbeat reports the host's resources; the shared queue's request that fits no
host stays queued. None of these boot QEMU (the refusals happen before any VM exists)."""

import pika

from tests.vmbackend.daemon_helpers import events_for, wait_host
from vmbackend.client import Client
from vmbackend.protocol import topology

SMALL_HOST = {
    "WARREN_HOST_MEMORY_MB": "512",
    "WARREN_HOST_CPUS": "1",
    "WARREN_CPU_OVERCOMMIT": "2",
    "WARREN_HOST_DISK_GB": "10",
    "WARREN_FALLBACK_PAUSE": "1",
}


def _queued(amqp_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ok = conn.channel().queue_declare(topology.CREATE_QUEUE, passive=True)
        return ok.method.message_count
    finally:
        conn.close()


def _heartbeat(client, host_id):
    client.pump(1.5)
    return [e for e in client.events if e["type"] == "host.heartbeat" and e["host_id"] == host_id][
        -1
    ]


def test_the_heartbeat_reports_total_used_and_free_resources_beside_the_slots(daemons, amqp_url):
    host = daemons.start(extra_env=SMALL_HOST)
    with Client(amqp_url) as client:
        client.watch_events("host.*")
        wait_host(client, host.host_id)
        beat = _heartbeat(client, host.host_id)
    assert (beat["capacity"], beat["free_slots"]) == (2, 2)  # the old fields stay
    assert (beat["memory_total_mb"], beat["memory_used_mb"], beat["memory_free_mb"]) == (
        512,
        0,
        512,
    )
    assert (beat["vcpus_total"], beat["vcpus_free"]) == (2, 2)
    assert (beat["disk_total_gb"], beat["disk_free_gb"]) == (10, 10)


def test_a_placed_create_vm_that_does_not_fit_is_declined_and_never_started(daemons, amqp_url):
    host = daemons.start(extra_env=SMALL_HOST)
    with Client(amqp_url) as client:
        client.watch_events("#")
        wait_host(client, host.host_id)
        vm_id = "11111111-2222-4333-8444-555555555555"
        cid = client.send(
            "create-vm",
            {"image": "tiny", "vm-id": vm_id, "memory-mb": 1024},
            routing_key=topology.host_key(host.host_id),
        )
        reply = client.wait_reply(cid, 30)
        declined = client.wait_event(vm_id, ("instance.declined",), 30)
        assert reply["execution-info"]["status"] == "error"
        assert "1024 MiB of memory (512 free)" in reply["execution-info"]["reason"]
        assert declined["host_id"] == host.host_id
        assert declined["memory_mb"] == 1024 and declined["seq"] == 0
        assert "512 free" in declined["reason"]
        client.pump(1.0)
        assert [e["type"] for e in events_for(client, vm_id)] == ["instance.declined"]
        assert wait_host(client, host.host_id) == []  # nothing recorded


def test_a_create_vm_on_the_shared_queue_that_fits_no_host_stays_queued(daemons, amqp_url):
    host = daemons.start(extra_env=SMALL_HOST)
    with Client(amqp_url) as client:
        client.watch_events("#")
        wait_host(client, host.host_id)
        vm_id = "21111111-2222-4333-8444-555555555555"
        cid = client.send("create-vm", {"image": "tiny", "vm-id": vm_id, "vcpus": 3})
        client.pump(4.0)  # the host put it back (and paused) several times meanwhile
        assert events_for(client, vm_id) == []
        assert not client.replies.get(cid)
        assert _queued(amqp_url) == 1
        assert "vm accepted" not in host.log_text()
