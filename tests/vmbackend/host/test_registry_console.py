"""The registry's rules for the customer's console (no broker, no QEMU): which VM states a
console command may run in, the resize refusals (disk shrink, host memory), the host memory
budget, and the remembered request ids that make a repeated message change nothing twice."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmbackend.host import config
from vmbackend.host.registry import Registry
from vmbackend.host.rules import (
    CLAIMED,
    MAX_REQUESTS,
    REQUEST_DONE,
    REQUEST_NEW,
    REQUEST_RUNNING,
    RUN,
    command_plan,
    outcome_response,
    resize_refusal,
    state_event,
)
from vmbackend.host.state import (
    ACCEPTED,
    BOOTING,
    FAILED,
    LOST,
    READY,
    STOPPED,
    StateStore,
    VMRecord,
)
from vmbackend.protocol import capacity, messages
from vmbackend.protocol.messages import ResizeVM, SetAdminPassword, VMCommand

REQ = "5f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f"


@pytest.fixture
def registry(tmp_path):
    cfg = config.load(
        env={
            "WARREN_HOST_ID": "h1",
            "WARREN_STATE_DIR": str(tmp_path),
            "WARREN_HOST_MEMORY_MB": "2048",
        }
    )
    return Registry(cfg, StateStore(tmp_path))


def _record(vm_id="vm-1", status=READY, memory_mb=512, disk_gb=4, healing=False) -> VMRecord:
    return VMRecord(
        vm_id=vm_id,
        image="tiny",
        memory_mb=memory_mb,
        vcpus=1,
        disk_gb=disk_gb,
        hostname="vm-1",
        admin_username="warren-1",
        admin_password="old-password-123456",
        status=status,
        healing=healing,
        ever_ready=True,
    )


@pytest.mark.parametrize(
    "status,healing,reason",
    [
        (STOPPED, False, "the VM is stopped; try again when it is running"),
        (BOOTING, True, "the VM is restarting after it stopped unexpectedly; try again"),
        (BOOTING, False, "the VM is starting; try again"),
        (ACCEPTED, False, "the VM is starting; try again"),
        (LOST, False, "the VM is down; try again"),
    ],
)
def test_a_rotation_needs_a_running_vm_and_says_so(status, healing, reason):
    with pytest.raises(messages.Rejected, match=reason):
        command_plan(
            _record(status=status, healing=healing), "set-admin-password", boot_running=False
        )
    assert command_plan(_record(status=READY), "set-admin-password", boot_running=False) == RUN


def test_a_resize_runs_on_a_ready_or_stopped_vm_only():
    for status in (READY, STOPPED):
        assert command_plan(_record(status=status), "resize-vm", boot_running=False) == RUN
    for status in (BOOTING, LOST, FAILED):
        with pytest.raises(messages.Rejected, match="try again when it is running|failed"):
            command_plan(_record(status=status), "resize-vm", boot_running=False)


def _resize(memory_mb=512, vcpus=1, disk_gb=4) -> ResizeVM:
    return ResizeVM("vm-1", REQ, memory_mb, vcpus, disk_gb)


def _others(memory=(4096, 0), vcpus=(8, 0), disk=(100, 0)) -> capacity.Resources:
    """A host's (total, used by the other VMs) per resource."""
    return capacity.Resources(
        memory_total_mb=memory[0],
        memory_used_mb=memory[1],
        vcpus_total=vcpus[0],
        vcpus_used=vcpus[1],
        disk_total_gb=disk[0],
        disk_used_gb=disk[1],
    )


def test_the_disk_only_grows():
    assert resize_refusal(_record(disk_gb=10), _resize(disk_gb=4), _others()) == (
        "the disk only grows: the VM has 10 GB, 4 GB were asked"
    )
    assert resize_refusal(_record(disk_gb=10), _resize(disk_gb=10), _others()) is None
    assert resize_refusal(_record(disk_gb=10), _resize(disk_gb=20), _others()) is None


def test_what_grows_must_fit_next_to_the_other_vms():
    record = _record(memory_mb=512)
    refusal = resize_refusal(record, _resize(memory_mb=2048), _others(memory=(3000, 1024)))
    assert refusal == (
        "2048 MiB of memory does not fit this host (at most 1976 MiB of memory is free for this VM)"
    )
    assert resize_refusal(record, _resize(memory_mb=1976), _others(memory=(3000, 1024))) is None
    assert resize_refusal(record, _resize(vcpus=4), _others(vcpus=(8, 6))) == (
        "4 vCPUs does not fit this host (at most 2 vCPUs is free for this VM)"
    )
    assert resize_refusal(record, _resize(disk_gb=50), _others(disk=(60, 20))) == (
        "50 GB of disk does not fit this host (at most 40 GB of disk is free for this VM)"
    )
    # What shrinks or stays always fits, even on a host that is over its budget.
    over = _others(memory=(100, 5000), vcpus=(1, 9), disk=(1, 90))
    assert resize_refusal(record, _resize(memory_mb=256, vcpus=1, disk_gb=4), over) is None


@given(
    old=st.tuples(st.integers(256, 16384), st.integers(1, 8), st.integers(1, 200)),
    new=st.tuples(st.integers(256, 16384), st.integers(1, 8), st.integers(1, 200)),
    totals=st.tuples(st.integers(0, 70000), st.integers(0, 64), st.integers(0, 2000)),
    used=st.tuples(st.integers(0, 70000), st.integers(0, 64), st.integers(0, 2000)),
)
def test_a_resize_is_refused_exactly_when_the_disk_shrinks_or_what_grows_does_not_fit(
    old, new, totals, used
):
    record = _record(memory_mb=old[0], disk_gb=old[2])
    record.vcpus = old[1]
    others = _others(*zip(totals, used, strict=True))
    refusal = resize_refusal(record, _resize(*new), others)
    expected = new[2] < old[2] or any(
        n > o and u + n > t for n, o, t, u in zip(new, old, totals, used, strict=True)
    )
    assert (refusal is not None) == expected


def test_the_resources_of_the_others_leave_out_the_vm_and_what_holds_no_slot(registry):
    registry.records = {
        "a": _record("a", READY, memory_mb=512, disk_gb=4),
        "b": _record("b", STOPPED, memory_mb=1024, disk_gb=10),
        "c": _record("c", FAILED, memory_mb=4096, disk_gb=50),
    }
    others = registry.resources_without("a")
    assert (others.memory_used_mb, others.vcpus_used, others.disk_used_gb) == (1024, 1, 10)
    assert others.memory_total_mb == 2048  # WARREN_HOST_MEMORY_MB
    everyone = registry.resources_without("z")
    assert (everyone.memory_used_mb, everyone.disk_used_gb) == (1536, 14)


def test_the_host_memory_budget_defaults_to_meminfo_minus_a_reserve():
    meminfo = "MemTotal:        8000000 kB\nMemFree:  100 kB\n"
    assert config.default_host_memory_mb(meminfo) == 8000000 // 1024 - 1024
    assert config.default_host_memory_mb("garbage") == 0
    assert config.default_host_memory_mb("MemTotal: 512000 kB\n") == 0
    assert config.load(env={"WARREN_HOST_MEMORY_MB": "3000"}).host_memory_mb == 3000
    with pytest.raises(config.ConfigError, match="host_memory_mb"):
        config.load(env={"WARREN_HOST_MEMORY_MB": "lots"})


def test_a_done_request_is_remembered_and_republished_without_becoming_the_state(
    registry, tmp_path
):
    record = _record()
    registry.records[record.vm_id] = record
    registry.report(record, "instance.ready", {"management_url": "http://x/"})
    assert registry.request_state("vm-1", REQ) == (REQUEST_NEW, None)

    registry.finish_request(
        record,
        "resize-vm",
        REQ,
        "instance.command_done",
        {"memory_mb": 1024, "vcpus": 2, "disk_gb": 8},
    )

    state, done = registry.request_state("vm-1", REQ)
    assert state == REQUEST_DONE
    assert done["type"] == "instance.command_done"
    assert done["fields"] == {
        "command": "resize-vm",
        "request_id": REQ,
        "memory_mb": 1024,
        "vcpus": 2,
        "disk_gb": 8,
    }
    # An outcome is not where the VM is: a duplicate create-vm still re-publishes the ready.
    assert state_event(record)[0] == "instance.ready"
    on_disk = json.loads((tmp_path / "vms" / "vm-1.json").read_text())
    assert on_disk["requests"][0]["request_id"] == REQ

    registry.republish_outcome(record, done)
    first, again = record.outbox[-2], record.outbox[-1]
    assert again["type"] == first["type"] == "instance.command_done"
    assert again["seq"] == first["seq"] + 1
    assert {k: again[k] for k in done["fields"]} == done["fields"]


def test_only_the_last_requests_are_remembered(registry):
    record = _record()
    registry.records[record.vm_id] = record
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(MAX_REQUESTS + 5)]
    for request_id in ids:
        registry.finish_request(record, "restart-vm", request_id, "instance.command_done", {})
    assert [r["request_id"] for r in record.requests] == ids[-MAX_REQUESTS:]
    assert registry.request_state("vm-1", ids[0]) == (REQUEST_NEW, None)
    assert registry.request_state("vm-1", ids[-1])[0] == REQUEST_DONE


def test_a_request_is_running_while_its_command_holds_the_vm(registry):
    record = _record()
    registry.records[record.vm_id] = record
    cmd = SetAdminPassword("vm-1", REQ, "warren-1", "new-password-123456")
    assert registry.claim(cmd)[0] == CLAIMED
    assert registry.request_state("vm-1", REQ) == (REQUEST_RUNNING, None)
    registry.release("vm-1", cmd.command, REQ)
    assert registry.request_state("vm-1", REQ) == (REQUEST_NEW, None)
    assert registry.claim(VMCommand("restart-vm", "vm-1"))[0] == CLAIMED


def test_the_reply_of_an_outcome_matches_it():
    record = _record()
    done = outcome_response(
        record, "instance.command_done", {"command": "resize-vm", "memory_mb": 1024}
    )
    assert json.loads(done) == {
        "execution-info": {"status": "success"},
        "response": {"vm-id": "vm-1", "status": READY, "memory-mb": 1024},
    }
    failed = outcome_response(record, "instance.command_failed", {"reason": "the VM is stopped"})
    assert json.loads(failed)["execution-info"] == {
        "status": "error",
        "reason": "the VM is stopped",
    }
