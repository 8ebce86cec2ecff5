"""The warm pool through real daemons, the tiny image and the real broker (vmbackend/host/pool.py):
a claim, a miss, two create-vm racing for one pool VM, a SIGKILL mid-claim, a crashed pool VM,
the pool giving way to a paying order."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.vmbackend.daemon_helpers import (
    basic_auth_status,
    events_for,
    qemu_pids,
    read_state,
    vms_of,
    wait_host,
)
from vmbackend.protocol import messages

READY_TIMEOUT = 300
POOL = {"WARREN_POOL": "tiny:256:1", "WARREN_HEARTBEAT_INTERVAL": "1"}


def _admin(n: int) -> dict[str, str]:
    return {"username": f"order-admin-{n}", "password": f"order-password-{n}-0123456789"}


def pool_records(state_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((state_dir / "vms").glob("pool-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except FileNotFoundError:  # the daemon dropped it (crashed, claimed) after the glob
            continue
    return records


def wait_pool_ready(
    client, state_dir: Path, count: int = 1, timeout: float = READY_TIMEOUT, not_: str = ""
):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready = [
            r for r in pool_records(state_dir) if r["status"] == "ready" and r["vm_id"] != not_
        ]
        if len(ready) >= count:
            return ready
        client.pump(0.5)
    raise AssertionError(f"no ready pool VM: {pool_records(state_dir)}")


def _create(client, vm_id: str, n: int, **options: Any) -> dict[str, Any]:
    body = {"image": "tiny", "vm-id": vm_id, "memory-mb": 256, "admin": _admin(n), **options}
    return client.call("create-vm", body, timeout=60)


@pytest.mark.vm
def test_a_create_vm_claims_the_ready_pool_vm_and_a_replacement_starts(daemons, client):
    host = daemons.start(capacity=2, extra_env=POOL)
    wait_host(client, host.host_id)
    (pool_vm,) = wait_pool_ready(client, host.state_dir)
    assert vms_of(client, host.host_id) == {}  # never shown before it is claimed
    assert not [e for e in client.events if e.get("instance_id") == pool_vm["vm_id"]]
    pool_url = pool_vm["management_url"]
    pids = qemu_pids(host.state_dir)
    assert len(pids) == 1
    # Its own admin, not guest.
    assert basic_auth_status(pool_url, pool_vm["admin_username"], pool_vm["admin_password"]) == 200
    assert basic_auth_status(pool_url, "guest", "guest") == 401
    # Staff see it: the heartbeat carries the pool.
    client.pump(1.5)
    beats = [
        e
        for e in client.events
        if e.get("type") == "host.heartbeat" and e.get("host_id") == host.host_id
    ]
    assert messages.pool_summary(beats[-1]["pool"]) == "tiny 256 MiB: 1/1 ready, 0 starting"
    assert beats[-1]["free_slots"] == 2  # the pool gives way to customers

    reply = _create(client, "vm-pool-hit", 1, limits={"max-connections": 7})
    assert reply["response"]["vm-id"] == "vm-pool-hit"
    ready = client.wait_event("vm-pool-hit", ("instance.ready", "instance.failed"), 120)
    assert ready["type"] == "instance.ready", ready
    assert ready["boot"] == "pool"
    # The shop's side of the contract takes it (its parser once knew only cold and restore).
    as_shop = {**ready, "instance_id": str(uuid.uuid4())}  # the shop's vm-ids are UUIDs
    assert messages.parse_event(json.dumps(as_shop).encode()).type == "instance.ready"
    assert ready["management_url"] == pool_url  # the same VM, the same QEMU
    admin = _admin(1)
    assert basic_auth_status(pool_url, admin["username"], admin["password"]) == 200
    assert basic_auth_status(pool_url, pool_vm["admin_username"], pool_vm["admin_password"]) == 401
    assert pids[0] in qemu_pids(host.state_dir)
    state = read_state(host.state_dir, "vm-pool-hit")
    assert state["machine_id"] == pool_vm["vm_id"] and state["claimed_from"] == {}
    assert read_state(host.state_dir, pool_vm["vm_id"]) is None
    assert vms_of(client, host.host_id)["vm-pool-hit"]["status"] == "ready"
    types = [e["type"] for e in events_for(client, "vm-pool-hit")]
    assert types[0] == "instance.accepted" and types[-1] == "instance.ready"

    # A replacement pool VM starts in the background, as a new VM of its own.
    (replacement,) = wait_pool_ready(client, host.state_dir, not_=pool_vm["vm_id"])
    assert replacement["admin_password"] != pool_vm["admin_password"]
    assert replacement["hostname"] != pool_vm["hostname"]
    assert len(qemu_pids(host.state_dir)) == 2
    assert set(vms_of(client, host.host_id)) == {"vm-pool-hit"}

    # The claimed VM is an ordinary VM now: delete-vm removes it, the pool VM stays.
    client.call("delete-vm", {"vm-id": "vm-pool-hit"}, timeout=120)
    client.wait_event("vm-pool-hit", ("instance.deleted",), 60)
    assert len(qemu_pids(host.state_dir)) == 1
    assert [r["vm_id"] for r in pool_records(host.state_dir)] == [replacement["vm_id"]]


@pytest.mark.vm
def test_two_create_vm_racing_for_one_pool_vm_one_hits_one_misses(daemons, client):
    host = daemons.start(capacity=3, extra_env=POOL)
    wait_host(client, host.host_id)
    (pool_vm,) = wait_pool_ready(client, host.state_dir)
    # Both on the queue at once: the host takes them one after the other.
    first = client.send(
        "create-vm", {"image": "tiny", "vm-id": "vm-race-1", "memory-mb": 256, "admin": _admin(1)}
    )
    second = client.send(
        "create-vm", {"image": "tiny", "vm-id": "vm-race-2", "memory-mb": 256, "admin": _admin(2)}
    )
    for correlation in (first, second):
        assert client.wait_reply(correlation, 60)["execution-info"]["status"] == "success"
    ready = {
        vm_id: client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
        for vm_id in ("vm-race-1", "vm-race-2")
    }
    assert sorted(e["boot"] for e in ready.values()) == ["cold", "pool"], ready
    hit = next(vm_id for vm_id, e in ready.items() if e["boot"] == "pool")
    miss = next(vm_id for vm_id, e in ready.items() if e["boot"] != "pool")
    assert ready[hit]["management_url"] == pool_vm["management_url"]
    assert ready[miss]["management_url"] != pool_vm["management_url"]
    for vm_id, n in (("vm-race-1", 1), ("vm-race-2", 2)):
        admin = _admin(n)
        assert (
            basic_auth_status(ready[vm_id]["management_url"], admin["username"], admin["password"])
            == 200
        )
    machines = {read_state(host.state_dir, v)["machine_id"] for v in ("vm-race-1", "vm-race-2")}
    assert machines == {pool_vm["vm_id"], ""}


@pytest.mark.vm
def test_a_miss_boots_the_ordinary_way_and_leaves_the_pool_alone(daemons, client):
    host = daemons.start(capacity=2, extra_env=POOL)
    wait_host(client, host.host_id)
    (pool_vm,) = wait_pool_ready(client, host.state_dir)
    _create(client, "vm-miss", 3, **{"memory-mb": 320})  # no pool VM of that size
    ready = client.wait_event("vm-miss", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready" and ready["boot"] == "cold"
    assert [r["vm_id"] for r in pool_records(host.state_dir)] == [pool_vm["vm_id"]]
    assert len(qemu_pids(host.state_dir)) == 2


@pytest.mark.vm
def test_the_pool_gives_its_slot_to_a_paying_order_and_refills_after(daemons, client):
    host = daemons.start(capacity=1, extra_env=POOL)
    wait_host(client, host.host_id)
    (pool_vm,) = wait_pool_ready(client, host.state_dir)
    # The only slot is the pool VM's; the host still takes a create-vm that misses the pool.
    _create(client, "vm-pressure", 4, **{"memory-mb": 320})
    ready = client.wait_event("vm-pressure", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready" and ready["boot"] == "cold"
    assert pool_records(host.state_dir) == []  # retired for the order
    assert len(qemu_pids(host.state_dir)) == 1
    client.pump(3.0)
    assert pool_records(host.state_dir) == []  # no idle slot: no new pool VM
    client.call("delete-vm", {"vm-id": "vm-pressure"}, timeout=120)
    client.wait_event("vm-pressure", ("instance.deleted",), 60)
    (refilled,) = wait_pool_ready(client, host.state_dir)
    assert refilled["vm_id"] != pool_vm["vm_id"]


@pytest.mark.vm
def test_a_crashed_pool_vm_is_replaced_not_healed_and_never_told(daemons, client):
    host = daemons.start(capacity=2, extra_env=POOL)
    wait_host(client, host.host_id)
    (pool_vm,) = wait_pool_ready(client, host.state_dir)
    (pid,) = qemu_pids(host.state_dir)
    os.kill(pid, signal.SIGKILL)
    (replacement,) = wait_pool_ready(client, host.state_dir, not_=pool_vm["vm_id"])
    assert replacement["vm_id"] != pool_vm["vm_id"]
    assert pid not in qemu_pids(host.state_dir)
    assert len(qemu_pids(host.state_dir)) == 1
    assert not [e for e in client.events if str(e.get("instance_id", "")).startswith("pool-")]
    assert "pool vm retired" in host.log_text()


@pytest.mark.vm
def test_a_sigkill_mid_claim_finishes_the_claim_once_and_never_hands_the_vm_out_twice(
    daemons, client
):
    first = daemons.start(host_id="t-pool-kill", capacity=3, extra_env=POOL)
    wait_host(client, first.host_id)
    (pool_vm,) = wait_pool_ready(client, first.state_dir)
    pool_file = first.state_dir / "vms" / f"{pool_vm['vm_id']}.json"
    pool_bytes = pool_file.read_bytes()
    (pid,) = qemu_pids(first.state_dir)

    client.send(
        "create-vm",
        {"image": "tiny", "vm-id": "vm-kill-claim", "memory-mb": 256, "admin": _admin(5)},
    )
    client.wait_event("vm-kill-claim", ("instance.accepted",), 60)
    first.signal(signal.SIGKILL)  # the claim's admin swap is under way (or just done)
    first.wait(30)
    assert read_state(first.state_dir, "vm-kill-claim")["machine_id"] == pool_vm["vm_id"]
    # The worst moment: killed between the claim's two writes, the pool VM's record still there.
    pool_file.write_bytes(pool_bytes)

    second = daemons.start(host_id="t-pool-kill", capacity=3, extra_env=POOL)
    ready = client.wait_event("vm-kill-claim", ("instance.ready", "instance.failed"), 120)
    assert ready["type"] == "instance.ready", ready
    assert ready["management_url"] == pool_vm["management_url"]
    admin = _admin(5)
    assert basic_auth_status(ready["management_url"], admin["username"], admin["password"]) == 200
    assert pid in qemu_pids(second.state_dir)  # the pool VM's QEMU, adopted, never restarted
    client.pump(2.0)
    assert len(events_for(client, "vm-kill-claim", "instance.ready")) == 1
    assert not pool_file.exists()
    assert "pool claim completed" in second.log_text()

    # The next create-vm gets a new pool VM (or a boot), never the claimed one again.
    (replacement,) = wait_pool_ready(client, second.state_dir, not_=pool_vm["vm_id"])
    _create(client, "vm-after-kill", 6)
    again = client.wait_event("vm-after-kill", ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert again["type"] == "instance.ready"
    assert again["management_url"] == replacement["management_url"] != pool_vm["management_url"]
    assert set(vms_of(client, second.host_id)) == {"vm-kill-claim", "vm-after-kill"}
