"""The daemon end to end: a real daemon subprocess, the real broker, real QEMU with the tiny image."""

import json
import signal
import socket

import pika
import pytest

from tests.tcp_proxy import TcpProxy
from tests.vmbackend.daemon_helpers import (
    Daemons,
    basic_auth_status,
    clean_broker,
    events_for,
    qemu_pids,
    read_state,
    vms_of,
    wait_host,
    with_port,
)
from vmbackend.client import Client
from vmbackend.host import ports
from vmbackend.protocol import topology

ADMIN = {"username": "warren-test1", "password": "correct-horse-battery-1"}
READY_TIMEOUT = 240


def _ok(reply):
    assert reply["execution-info"]["status"] == "success", reply
    return reply["response"]


@pytest.mark.vm
def test_a_vm_goes_from_create_to_ready_through_stop_start_and_delete(daemons, client):
    daemon = daemons.start()
    wait_host(client, daemon.host_id)
    created = _ok(
        client.call(
            "create-vm", {"image": "tiny", "vm-id": "vm-life-1", "memory-mb": 256, "admin": ADMIN}
        )
    )
    assert created == {
        "vm-id": "vm-life-1",
        "host-id": daemon.host_id,
        "admin-username": ADMIN["username"],
    }  # no password: the caller chose it
    ready = client.wait_event("vm-life-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready", ready
    assert ADMIN["password"] not in json.dumps(ready)
    url = ready["management_url"]
    assert url.startswith("http://127.0.0.1:")
    assert ready["amqp_url"].startswith(f"amqp://{ADMIN['username']}@127.0.0.1:")
    assert basic_auth_status(url, ADMIN["username"], ADMIN["password"]) == 200
    assert basic_auth_status(url, "guest", "guest") == 401

    kinds = [(e["type"], e.get("stage")) for e in events_for(client, "vm-life-1")]
    assert kinds == [
        ("instance.accepted", None),
        ("instance.progress", "vm_starting"),
        ("instance.progress", "guest_up"),
        ("instance.progress", "rabbitmq_starting"),
        ("instance.ready", None),
    ]
    seqs = [e["seq"] for e in events_for(client, "vm-life-1")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    listed = vms_of(client, daemon.host_id)["vm-life-1"]
    assert listed["status"] == "ready" and listed["management-url"] == url

    assert _ok(client.call("stop-vm", {"vm-id": "vm-life-1"}, timeout=60))["status"] == "stopped"
    assert qemu_pids(daemon.state_dir) == []
    assert vms_of(client, daemon.host_id)["vm-life-1"]["status"] == "stopped"

    assert (
        _ok(client.call("start-vm", {"vm-id": "vm-life-1"}, timeout=READY_TIMEOUT))["status"]
        == "ready"
    )
    assert basic_auth_status(url, ADMIN["username"], ADMIN["password"]) == 200
    assert len(events_for(client, "vm-life-1", "instance.ready")) == 2
    assert len(qemu_pids(daemon.state_dir)) == 1

    state = read_state(daemon.state_dir, "vm-life-1")
    held = list(state["ports"].values())
    assert _ok(client.call("delete-vm", {"vm-id": "vm-life-1"}, timeout=60))["status"] == "deleted"
    client.wait_event("vm-life-1", ("instance.deleted",), 30)
    assert qemu_pids(daemon.state_dir) == []
    assert not (daemon.state_dir / "machines" / "vm-life-1").exists()
    client.pump(1.0)
    assert read_state(daemon.state_dir, "vm-life-1") is None
    assert all(ports.is_free("127.0.0.1", p) for p in held)
    assert "vm-life-1" not in vms_of(client, daemon.host_id)
    assert ADMIN["password"] not in daemon.log_text()


@pytest.mark.vm
def test_a_generated_password_goes_only_to_the_requester(daemons, client):
    daemon = daemons.start()
    wait_host(client, daemon.host_id)
    created = _ok(client.call("create-vm", {"image": "tiny", "memory-mb": 256}))
    password = created["admin-password"]
    ready = client.wait_event(
        created["vm-id"], ("instance.ready", "instance.failed"), READY_TIMEOUT
    )
    assert ready["type"] == "instance.ready", ready
    assert basic_auth_status(ready["management_url"], created["admin-username"], password) == 200
    assert all(password not in json.dumps(e) for e in client.events)
    assert password not in daemon.log_text()


@pytest.mark.vm
def test_a_duplicate_create_vm_makes_one_vm_and_the_same_reply(daemons, client):
    daemon = daemons.start()
    wait_host(client, daemon.host_id)
    options = {"image": "tiny", "vm-id": "vm-dup-1", "memory-mb": 256, "admin": ADMIN}
    first = _ok(client.call("create-vm", options))
    ready = client.wait_event("vm-dup-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready"
    second = _ok(client.call("create-vm", options))
    assert second == first
    client.pump(2.0)
    readies = events_for(client, "vm-dup-1", "instance.ready")
    assert len(readies) == 2  # the current state, re-published for the repeated request
    assert readies[1]["management_url"] == readies[0]["management_url"]
    assert readies[1]["seq"] > readies[0]["seq"]
    assert len(qemu_pids(daemon.state_dir)) == 1
    assert list(vms_of(client, daemon.host_id)) == ["vm-dup-1"]


@pytest.mark.vm
def test_delete_during_boot_cancels_the_boot(daemons, client):
    daemon = daemons.start()
    wait_host(client, daemon.host_id)
    _ok(client.call("create-vm", {"image": "tiny", "vm-id": "vm-cancel-1", "memory-mb": 256}))
    client.wait_event("vm-cancel-1", ("instance.accepted",), 30)
    assert (
        _ok(client.call("delete-vm", {"vm-id": "vm-cancel-1"}, timeout=90))["status"] == "deleted"
    )
    client.wait_event("vm-cancel-1", ("instance.deleted",), 30)
    client.pump(2.0)
    assert events_for(client, "vm-cancel-1", "instance.failed") == []
    assert qemu_pids(daemon.state_dir) == []
    assert vms_of(client, daemon.host_id) == {}


@pytest.mark.vm
def test_it_reconnects_after_the_broker_connection_drops_and_loses_no_event(
    daemons, client, amqp_url
):
    proxy = TcpProxy("127.0.0.1", 5672).up()
    try:
        daemon = daemons.start(amqp_url=with_port(amqp_url, proxy.port))
        wait_host(client, daemon.host_id)
        _ok(client.call("create-vm", {"image": "tiny", "vm-id": "vm-outage-1", "memory-mb": 256}))
        client.wait_event("vm-outage-1", ("instance.accepted",), 30)
        proxy.down()  # the boot goes on while the daemon cannot reach the broker
        state = None
        for _ in range(READY_TIMEOUT):
            client.pump(1.0)
            state = read_state(daemon.state_dir, "vm-outage-1")
            if state["status"] in ("ready", "failed"):
                break
        assert state["status"] == "ready"
        assert any(e["type"] == "instance.ready" for e in state["outbox"])  # kept, not lost
        proxy.up()
        ready = client.wait_event("vm-outage-1", ("instance.ready",), 120)
        assert ready["management_url"]
        wait_host(client, daemon.host_id)
        assert "broker connection lost" in daemon.log_text()
        assert daemon.proc.poll() is None
        assert proxy.connections >= 2
    finally:
        proxy.down()


@pytest.mark.vm
def test_sigterm_exits_zero_and_leaves_the_vm_running(daemons, client):
    daemon = daemons.start()
    wait_host(client, daemon.host_id)
    _ok(
        client.call(
            "create-vm", {"image": "tiny", "vm-id": "vm-term-1", "memory-mb": 256, "admin": ADMIN}
        )
    )
    ready = client.wait_event("vm-term-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready"
    pids = qemu_pids(daemon.state_dir)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert qemu_pids(daemon.state_dir) == pids
    assert basic_auth_status(ready["management_url"], ADMIN["username"], ADMIN["password"]) == 200


def test_the_create_queue_is_declared_with_the_shared_arguments(amqp_url):
    """The shop declares the same queue; a mismatch would be PRECONDITION_FAILED."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        topology.declare_host(conn.channel(), "args-check")
        channel = conn.channel()
        channel.queue_declare(
            topology.CREATE_QUEUE,
            durable=True,
            arguments={
                "x-dead-letter-exchange": "computing.dlx",
                "x-queue-type": "quorum",  # the local broker is 3.8+
                "x-delivery-limit": topology.DELIVERY_LIMIT,
            },
        )
        channel.queue_delete(topology.host_queue("args-check"))
    finally:
        conn.close()


@pytest.mark.vm
def test_heartbeats_keep_flowing_while_a_vm_boots(daemons, client, amqp_url):
    """AMQP heartbeat of 1 s: if a boot blocked pika's I/O thread, the broker would drop the
    connection (and host.heartbeat events would pause) during the boot."""
    daemon = daemons.start(amqp_url=amqp_url + "?heartbeat=1")
    wait_host(client, daemon.host_id)
    _ok(client.call("create-vm", {"image": "tiny", "vm-id": "vm-hb-1", "memory-mb": 256}))
    ready = client.wait_event("vm-hb-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready"
    accepted = events_for(client, "vm-hb-1", "instance.accepted")[0]
    during = [
        e
        for e in client.events
        if e["type"] == "host.heartbeat"
        and e["host_id"] == daemon.host_id
        and accepted["occurred_at"] < e["occurred_at"] < ready["occurred_at"]
    ]
    assert during, "no host.heartbeat published while the VM booted"
    assert "broker connection lost" not in daemon.log_text()
    assert daemon.proc.poll() is None


@pytest.mark.vm
def test_a_boot_past_its_deadline_fails_with_a_reason_and_is_cleaned_up(daemons, client):
    daemon = daemons.start(capacity=1, extra_env={"WARREN_BOOT_DEADLINE": "1"})
    wait_host(client, daemon.host_id)
    _ok(client.call("create-vm", {"image": "tiny", "vm-id": "vm-late-1", "memory-mb": 256}))
    failed = client.wait_event("vm-late-1", ("instance.failed", "instance.ready"), 120)
    assert failed["type"] == "instance.failed"
    assert "did not answer" in failed["reason"] or "not ready" in failed["reason"], failed
    assert qemu_pids(daemon.state_dir) == []
    assert not (daemon.state_dir / "machines" / "vm-late-1").exists()
    state = read_state(daemon.state_dir, "vm-late-1")
    assert (state["status"], state["ports"]) == ("failed", {})
    assert vms_of(client, daemon.host_id)["vm-late-1"]["status"] == "failed"
    # The failed VM freed the only slot: the host takes the next request.
    _ok(client.call("create-vm", {"image": "tiny", "vm-id": "vm-late-2", "memory-mb": 256}))
    # A repeated create-vm for the failed id re-publishes the failure, it does not retry.
    _ok(client.call("create-vm", {"image": "tiny", "vm-id": "vm-late-1", "memory-mb": 256}))
    client.pump(1.0)
    assert len(events_for(client, "vm-late-1", "instance.failed")) == 2
    assert len(events_for(client, "vm-late-1", "instance.accepted")) == 1


def test_a_host_out_of_ports_fails_the_vm_with_a_reason(tmp_path, amqp_url, tiny_images_root):
    clean_broker(amqp_url)
    pool = Daemons(tmp_path, amqp_url, tiny_images_root)
    blockers = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            blockers.append(sock)
        taken = sorted(s.getsockname()[1] for s in blockers)
        if taken[1] != taken[0] + 1:  # need a two-port range that is fully taken
            blockers.append(socket.socket())
            blockers[-1].bind(("127.0.0.1", taken[0] + 1))
            blockers[-1].listen()
        daemon = pool.start(extra_env={"WARREN_PORT_RANGE": f"{taken[0]}-{taken[0] + 1}"})
        with Client(amqp_url) as client:
            client.watch_events("#")
            wait_host(client, daemon.host_id)
            _ok(client.call("create-vm", {"image": "tiny", "vm-id": "vm-noport-1"}))
            failed = client.wait_event("vm-noport-1", ("instance.failed",), 30)
            assert "no 2 free ports" in failed["reason"]
            assert qemu_pids(daemon.state_dir) == []
            assert vms_of(client, daemon.host_id)["vm-noport-1"]["status"] == "failed"
    finally:
        for sock in blockers:
            sock.close()
        pool.cleanup()
