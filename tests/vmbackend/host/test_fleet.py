"""Two daemons with one slot each share the create-vm queue: a full host takes nothing."""

import pika
import pytest

from tests.vmbackend.daemon_helpers import events_for, qemu_pids, wait_host
from vmbackend.client import Client
from vmbackend.protocol import topology

READY_TIMEOUT = 300


def _queued(amqp_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ok = conn.channel().queue_declare(topology.CREATE_QUEUE, passive=True)
        return ok.method.message_count
    finally:
        conn.close()


@pytest.mark.vm
def test_two_hosts_with_one_slot_each_run_two_and_the_third_waits(daemons, amqp_url):
    a = daemons.start(capacity=1)
    b = daemons.start(capacity=1)
    with Client(amqp_url) as client:
        client.watch_events("#")
        wait_host(client, a.host_id)
        wait_host(client, b.host_id)
        ids = ["vm-fleet-1", "vm-fleet-2", "vm-fleet-3"]
        cids = {
            vm: client.send("create-vm", {"image": "tiny", "vm-id": vm, "memory-mb": 256})
            for vm in ids
        }
        accepted = {}
        for _ in range(2):
            event = None
            for _ in range(60):
                client.pump(1.0)
                got = [
                    e
                    for e in client.events
                    if e["type"] == "instance.accepted" and e["instance_id"] not in accepted
                ]
                if got:
                    event = got[0]
                    break
            assert event is not None, "expected two hosts to accept"
            accepted[event["instance_id"]] = event["host_id"]
        assert sorted(accepted.values()) == sorted([a.host_id, b.host_id])
        for vm in accepted:
            ready = client.wait_event(vm, ("instance.ready", "instance.failed"), READY_TIMEOUT)
            assert ready["type"] == "instance.ready", ready
        (waiting,) = [vm for vm in ids if vm not in accepted]
        # Both hosts are full: nobody took the third request, it is still in the queue.
        client.pump(3.0)
        assert events_for(client, waiting) == []
        assert not client.replies.get(cids[waiting])
        assert _queued(amqp_url) == 1
        heartbeat = [
            e for e in client.events if e["type"] == "host.heartbeat" and e["host_id"] == a.host_id
        ][-1]
        assert (heartbeat["capacity"], heartbeat["free_slots"]) == (1, 0)

        # Deleting a VM frees its host's slot; that host takes the waiting request.
        first = next(iter(accepted))
        freed_host = accepted[first]
        reply = client.call("delete-vm", {"vm-id": first}, timeout=60)
        assert reply["execution-info"]["status"] == "success"
        ready = client.wait_event(waiting, ("instance.ready", "instance.failed"), READY_TIMEOUT)
        assert ready["type"] == "instance.ready"
        assert ready["host_id"] == freed_host
        reply = client.wait_reply(cids[waiting], 30)
        assert reply["response"]["host-id"] == freed_host
        assert _queued(amqp_url) == 0
        assert len(qemu_pids(a.state_dir)) == 1 and len(qemu_pids(b.state_dir)) == 1
