"""The warm pool's claim race on two hosts (issue 13): two real daemons on the real broker, each
keeping one ready tiny pool VM, and two create-vm published at once to the shared create-vm queue
both hosts consume. Whichever host takes which order, each order is served exactly once by one
host, no pool VM is handed out twice, and both orders end ready."""

from __future__ import annotations

import pytest

from tests.vmbackend.daemon_helpers import (
    basic_auth_status,
    events_for,
    qemu_pids,
    read_state,
    vms_of,
    wait_host,
)
from tests.vmbackend.host.test_pool import (
    POOL,
    READY_TIMEOUT,
    _admin,
    pool_records,
    wait_pool_ready,
)

ORDERS = {"vm-2h-race-1": 1, "vm-2h-race-2": 2}


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_two_create_vm_racing_on_the_shared_queue_of_two_pool_hosts(daemons, client):
    hosts = [daemons.start(capacity=3, extra_env=POOL) for _ in range(2)]
    for host in hosts:
        wait_host(client, host.host_id)
    pool_vms = {}
    for host in hosts:
        (pool_vm,) = wait_pool_ready(client, host.state_dir)
        pool_vms[pool_vm["vm_id"]] = (host, pool_vm)
    pool_urls = {p["management_url"] for _h, p in pool_vms.values()}
    assert len(pool_urls) == 2

    # Both on the shared queue at once (routing key "create-vm"): either host may take either.
    sent = {
        vm_id: client.send(
            "create-vm", {"image": "tiny", "vm-id": vm_id, "memory-mb": 256, "admin": _admin(n)}
        )
        for vm_id, n in ORDERS.items()
    }
    for correlation in sent.values():
        assert client.wait_reply(correlation, 60)["execution-info"]["status"] == "success"
    ready = {
        vm_id: client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
        for vm_id in ORDERS
    }
    assert all(e["type"] == "instance.ready" for e in ready.values()), ready
    client.pump(3.0)  # a second host answering late would show up here

    host_ids = {h.host_id for h in hosts}
    served_by = {}
    for vm_id in ORDERS:
        # Served exactly once, by one host: one accepted, one ready, all from the same host.
        assert len(events_for(client, vm_id, "instance.accepted")) == 1
        assert len(events_for(client, vm_id, "instance.ready")) == 1
        (served_by[vm_id],) = {e["host_id"] for e in events_for(client, vm_id)}
        assert served_by[vm_id] in host_ids
        holders = [h.host_id for h in hosts if vm_id in vms_of(client, h.host_id)]
        assert holders == [served_by[vm_id]]
        assert vms_of(client, served_by[vm_id])[vm_id]["status"] == "ready"

    # No pool VM handed out twice: distinct machines, distinct management URLs, and a claim
    # names a pool VM of the host that served it.
    urls = [ready[v]["management_url"] for v in ORDERS]
    assert len(set(urls)) == 2
    machines = []
    for vm_id in ORDERS:
        host = next(h for h in hosts if h.host_id == served_by[vm_id])
        state = read_state(host.state_dir, vm_id)
        assert state is not None
        if ready[vm_id]["boot"] == "pool":
            owner, pool_vm = pool_vms[state["machine_id"]]
            assert owner is host
            assert ready[vm_id]["management_url"] == pool_vm["management_url"]
            machines.append(state["machine_id"])
        else:
            assert state["machine_id"] == ""
            assert ready[vm_id]["management_url"] not in pool_urls
    assert len(machines) == len(set(machines)) >= 1  # at least one hit, never the same twice
    for vm_id, n in ORDERS.items():
        admin = _admin(n)
        url = ready[vm_id]["management_url"]
        assert basic_auth_status(url, admin["username"], admin["password"]) == 200
    for _host, pool_vm in pool_vms.values():
        if pool_vm["vm_id"] in machines:  # a claimed pool VM's own admin is gone
            url = pool_vm["management_url"]
            assert (
                basic_auth_status(url, pool_vm["admin_username"], pool_vm["admin_password"]) == 401
            )
    # Neither host still lists a claimed pool VM as a pool VM.
    for host in hosts:
        left = {r["vm_id"] for r in pool_records(host.state_dir)}
        assert not left & set(machines)
        assert len(qemu_pids(host.state_dir)) >= 1
