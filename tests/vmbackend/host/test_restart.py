"""Restart safety: SIGKILL mid-boot, SIGTERM, and VMs that died while the daemon was away."""

import os
import signal

import pytest

from tests.vmbackend.daemon_helpers import (
    basic_auth_status,
    events_for,
    qemu_pids,
    read_state,
    vms_of,
    wait_host,
)

ADMIN = {"username": "warren-restart", "password": "restart-password-123"}
READY_TIMEOUT = 240


@pytest.mark.vm
def test_sigkill_mid_boot_then_restart_ends_ready_once_with_one_qemu(daemons, client):
    first = daemons.start(host_id="t-kill-boot")
    wait_host(client, first.host_id)
    client.call(
        "create-vm", {"image": "tiny", "vm-id": "vm-kill-1", "memory-mb": 256, "admin": ADMIN}
    )
    client.wait_event("vm-kill-1", ("instance.progress",), 60)
    for _ in range(100):  # wait until QEMU runs, then kill the daemon before readiness
        if qemu_pids(first.state_dir):
            break
        client.pump(0.1)
    first.signal(signal.SIGKILL)
    first.wait(30)
    pids = qemu_pids(first.state_dir)
    assert len(pids) == 1  # QEMU outlived the daemon
    assert read_state(first.state_dir, "vm-kill-1")["status"] in ("accepted", "booting")

    second = daemons.start(host_id="t-kill-boot")
    ready = client.wait_event("vm-kill-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready", ready
    assert basic_auth_status(ready["management_url"], ADMIN["username"], ADMIN["password"]) == 200
    client.pump(3.0)
    assert len(events_for(client, "vm-kill-1", "instance.ready")) == 1
    assert qemu_pids(second.state_dir) == pids
    assert vms_of(client, second.host_id)["vm-kill-1"]["status"] == "ready"


@pytest.mark.vm
def test_sigterm_then_restart_adopts_the_running_vm(daemons, client):
    first = daemons.start(host_id="t-term")
    wait_host(client, first.host_id)
    client.call(
        "create-vm", {"image": "tiny", "vm-id": "vm-adopt-1", "memory-mb": 256, "admin": ADMIN}
    )
    ready = client.wait_event("vm-adopt-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready"
    pids = qemu_pids(first.state_dir)
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0
    assert "daemon stopping" in first.log_text()

    second = daemons.start(host_id="t-term")
    assert vms_of(client, second.host_id)["vm-adopt-1"]["status"] == "ready"
    assert qemu_pids(second.state_dir) == pids
    # The adopted VM is really managed: stop through the new daemon.
    reply = client.call("stop-vm", {"vm-id": "vm-adopt-1", "kill": True}, timeout=60)
    assert reply["response"]["status"] == "stopped"
    assert qemu_pids(second.state_dir) == []


NO_HEALING = {"WARREN_RESTART_BURST": "0"}  # test_healing.py covers the restarts


@pytest.mark.vm
def test_a_vm_that_died_while_the_daemon_was_away_is_reported_lost(daemons, client):
    first = daemons.start(host_id="t-lost", extra_env=NO_HEALING)
    wait_host(client, first.host_id)
    client.call("create-vm", {"image": "tiny", "vm-id": "vm-lost-1", "memory-mb": 256})
    ready = client.wait_event("vm-lost-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready"
    first.signal(signal.SIGKILL)
    first.wait(30)
    for pid in qemu_pids(first.state_dir):
        os.kill(pid, signal.SIGKILL)

    second = daemons.start(host_id="t-lost", extra_env=NO_HEALING)
    lost = client.wait_event("vm-lost-1", ("instance.lost",), 60)
    assert "gone" in lost["reason"] and "self-healing is off" in lost["reason"]
    assert vms_of(client, second.host_id)["vm-lost-1"]["status"] == "lost"


@pytest.mark.vm
def test_a_vm_whose_qemu_dies_under_a_running_daemon_is_reported_lost(daemons, client):
    daemon = daemons.start(extra_env=NO_HEALING)
    wait_host(client, daemon.host_id)
    client.call("create-vm", {"image": "tiny", "vm-id": "vm-lost-2", "memory-mb": 256})
    ready = client.wait_event("vm-lost-2", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready"
    for pid in qemu_pids(daemon.state_dir):
        os.kill(pid, signal.SIGKILL)
    lost = client.wait_event("vm-lost-2", ("instance.lost",), 60)
    assert lost["reason"].startswith("QEMU process exited unexpectedly")
    assert events_for(client, "vm-lost-2", "instance.restarting") == []


@pytest.mark.vm
def test_sigterm_hands_an_in_flight_command_back_and_the_next_daemon_finishes_it(daemons, client):
    first = daemons.start(host_id="t-inflight")
    wait_host(client, first.host_id)
    client.call(
        "create-vm", {"image": "tiny", "vm-id": "vm-flight-1", "memory-mb": 256, "admin": ADMIN}
    )
    ready = client.wait_event("vm-flight-1", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready"
    stopped = client.call("stop-vm", {"vm-id": "vm-flight-1", "kill": True}, timeout=60)
    assert stopped["response"]["status"] == "stopped"

    pending = client.send("start-vm", {"vm-id": "vm-flight-1"})
    for _ in range(300):
        if "command=start-vm" in first.log_text():
            break
        client.pump(0.1)
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0
    assert not client.replies.get(pending)  # not answered: handed back unacked

    second = daemons.start(host_id="t-inflight")
    reply = client.wait_reply(pending, READY_TIMEOUT)
    assert reply["execution-info"]["status"] == "success", reply
    assert reply["response"]["status"] == "ready"
    assert len(qemu_pids(second.state_dir)) == 1
    assert basic_auth_status(ready["management_url"], ADMIN["username"], ADMIN["password"]) == 200


@pytest.mark.vm
def test_a_boot_whose_qemu_died_while_the_daemon_was_away_fails_cleanly(daemons, client):
    first = daemons.start(host_id="t-dead-boot")
    wait_host(client, first.host_id)
    client.call("create-vm", {"image": "tiny", "vm-id": "vm-dead-1", "memory-mb": 256})
    for _ in range(300):
        state = read_state(first.state_dir, "vm-dead-1")
        if state and state["status"] == "booting":
            break
        client.pump(0.1)
    first.signal(signal.SIGKILL)
    first.wait(30)
    state = read_state(first.state_dir, "vm-dead-1")
    assert state["status"] == "booting"
    for pid in qemu_pids(first.state_dir):
        os.kill(pid, signal.SIGKILL)

    second = daemons.start(host_id="t-dead-boot")
    failed = client.wait_event("vm-dead-1", ("instance.failed", "instance.ready"), 60)
    assert failed["type"] == "instance.failed"
    assert "QEMU exited while the daemon was not running" in failed["reason"]
    state = read_state(second.state_dir, "vm-dead-1")
    assert (state["status"], state["ports"]) == ("failed", {})
    assert not (second.state_dir / "machines" / "vm-dead-1").exists()


def _ready_then_stopped(daemons, client, host_id, vm_id):
    """A daemon with one VM that was ready and is now stopped; a file stands for the customer's
    data in its machine folder (the tiny image boots without a disk of its own)."""
    daemon = daemons.start(host_id=host_id)
    wait_host(client, daemon.host_id)
    client.call("create-vm", {"image": "tiny", "vm-id": vm_id, "memory-mb": 256, "admin": ADMIN})
    ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready", ready
    stopped = client.call("stop-vm", {"vm-id": vm_id, "kill": True}, timeout=60)
    assert stopped["response"]["status"] == "stopped"
    data = daemon.state_dir / "machines" / vm_id / "customer-data"
    data.write_bytes(b"keep me")
    return daemon, data


def _wait_start_running(client, daemon, vm_id):
    for _ in range(600):
        state = read_state(daemon.state_dir, vm_id)
        if state["status"] == "booting" and qemu_pids(daemon.state_dir):
            return
        client.pump(0.1)
    raise AssertionError("the start never got QEMU running")


@pytest.mark.vm
def test_a_start_cut_off_by_a_crash_keeps_the_disk_and_the_vm_starts_again(daemons, client):
    """Issue 9 B: QEMU and the daemon die during a start-vm. The next daemon must not fail the
    VM and delete its folder (it was ready once): it is lost, and the redelivered start-vm
    boots it again from the same folder."""
    first, data = _ready_then_stopped(daemons, client, "t-start-crash", "vm-keep-1")
    pending = client.send("start-vm", {"vm-id": "vm-keep-1"})
    _wait_start_running(client, first, "vm-keep-1")
    first.signal(signal.SIGKILL)
    first.wait(30)
    for pid in qemu_pids(first.state_dir):
        os.kill(pid, signal.SIGKILL)
    assert read_state(first.state_dir, "vm-keep-1")["status"] == "booting"

    second = daemons.start(host_id="t-start-crash")
    lost = client.wait_event("vm-keep-1", ("instance.lost", "instance.failed"), 60)
    assert lost["type"] == "instance.lost", lost
    assert "QEMU exited while the daemon was not running" in lost["reason"]
    reply = client.wait_reply(pending, READY_TIMEOUT)  # handed back unacked, now served
    assert reply["execution-info"]["status"] == "success", reply
    assert reply["response"]["status"] == "ready"
    assert data.read_bytes() == b"keep me"
    assert events_for(client, "vm-keep-1", "instance.failed") == []
    assert len(qemu_pids(second.state_dir)) == 1
    assert read_state(second.state_dir, "vm-keep-1")["ever_ready"] is True


@pytest.mark.vm
def test_a_start_whose_qemu_dies_is_answered_and_the_vm_can_start_again(daemons, client):
    """The live side of issue 9 B and issue 8 item 2: a failed start-vm ends lost with the
    reason (not `booting` with every later start refused); the next start-vm works."""
    daemon, data = _ready_then_stopped(daemons, client, "t-start-dies", "vm-keep-2")
    pending = client.send("start-vm", {"vm-id": "vm-keep-2"})
    _wait_start_running(client, daemon, "vm-keep-2")
    for pid in qemu_pids(daemon.state_dir):
        os.kill(pid, signal.SIGKILL)
    reply = client.wait_reply(pending, 120)
    assert reply["execution-info"]["status"] == "error", reply
    assert "start-vm failed" in reply["execution-info"]["reason"]
    assert vms_of(client, daemon.host_id)["vm-keep-2"]["status"] == "lost"
    assert data.read_bytes() == b"keep me"

    again = client.call("start-vm", {"vm-id": "vm-keep-2"}, timeout=READY_TIMEOUT)
    assert again["response"]["status"] == "ready", again
    assert data.read_bytes() == b"keep me"
    assert events_for(client, "vm-keep-2", "instance.failed") == []
