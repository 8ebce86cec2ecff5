"""The registry's rules for the customer's console (no broker, no QEMU): which VM states a
console command may run in, the resize refusals (disk shrink, host memory), the host memory
budget, and the remembered request ids that make a repeated message change nothing twice."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmbackend import config, messages
from vmbackend.messages import ResizeVM, SetAdminPassword, VMCommand
from vmbackend.registry import (
    CLAIMED,
    MAX_REQUESTS,
    REQUEST_DONE,
    REQUEST_NEW,
    REQUEST_RUNNING,
    RUN,
    Registry,
    command_plan,
    outcome_response,
    resize_refusal,
    state_event,
)
from vmbackend.state import ACCEPTED, BOOTING, FAILED, LOST, READY, STOPPED, StateStore, VMRecord

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


def test_the_disk_only_grows():
    assert resize_refusal(_record(disk_gb=10), _resize(disk_gb=4), budget_mb=4096, others_mb=0) == (
        "the disk only grows: the VM has 10 GB, 4 GB were asked"
    )
    assert (
        resize_refusal(_record(disk_gb=10), _resize(disk_gb=10), budget_mb=4096, others_mb=0)
        is None
    )
    assert (
        resize_refusal(_record(disk_gb=10), _resize(disk_gb=20), budget_mb=4096, others_mb=0)
        is None
    )


def test_memory_must_fit_next_to_the_other_vms():
    record = _record(memory_mb=512)
    refusal = resize_refusal(record, _resize(memory_mb=2048), budget_mb=3000, others_mb=1024)
    assert (
        refusal
        == "2048 MiB of memory does not fit this host (at most 1976 MiB is free for this VM)"
    )
    assert resize_refusal(record, _resize(memory_mb=1976), budget_mb=3000, others_mb=1024) is None
    # Shrinking memory always fits, even on a host that is over its budget.
    assert resize_refusal(record, _resize(memory_mb=256), budget_mb=100, others_mb=5000) is None


@given(
    old_disk=st.integers(1, 200),
    new_disk=st.integers(1, 200),
    old_mem=st.integers(256, 16384),
    new_mem=st.integers(256, 16384),
    budget=st.integers(0, 70000),
    others=st.integers(0, 70000),
)
def test_a_resize_is_refused_exactly_when_the_disk_shrinks_or_more_memory_does_not_fit(
    old_disk, new_disk, old_mem, new_mem, budget, others
):
    refusal = resize_refusal(
        _record(memory_mb=old_mem, disk_gb=old_disk),
        _resize(memory_mb=new_mem, disk_gb=new_disk),
        budget_mb=budget,
        others_mb=others,
    )
    expected = new_disk < old_disk or (new_mem > old_mem and others + new_mem > budget)
    assert (refusal is not None) == expected


def test_the_memory_of_the_other_vms_counts_every_vm_holding_a_slot(registry):
    registry.records = {
        "a": _record("a", READY, memory_mb=512),
        "b": _record("b", STOPPED, memory_mb=1024),
        "c": _record("c", FAILED, memory_mb=4096),
    }
    assert registry.memory_of_others("a") == 1024
    assert registry.memory_of_others("z") == 1536


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
