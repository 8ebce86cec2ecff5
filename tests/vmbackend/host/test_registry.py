"""The registry's rules without a broker or QEMU: slots, the busy set, which command may run,
duplicate create-vm, the state event to re-publish, and message parsing that never raises
anything but Rejected."""

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbackend.host import config
from vmbackend.host.registry import Registry
from vmbackend.host.rules import (
    BUSY,
    CLAIMED,
    DELETE,
    DUPLICATE,
    FULL,
    NEW,
    RUN,
    UNKNOWN,
    WAIT_FOR_BOOT,
    command_plan,
    hostname_for,
    parse_create,
    parse_host,
    state_event,
)
from vmbackend.host.state import (
    ACCEPTED,
    BOOTING,
    DELETED,
    FAILED,
    LOST,
    READY,
    STOPPED,
    IllegalTransition,
    StateStore,
    VMRecord,
)
from vmbackend.protocol import messages
from vmbackend.protocol.messages import (
    CreateVM,
    ListVMs,
    Rejected,
    ResizeVM,
    SetAdminPassword,
    VMCommand,
)

HOST_KEY = "host.h1"


@pytest.fixture
def registry(tmp_path):
    cfg = config.load(
        env={"WARREN_HOST_ID": "h1", "WARREN_STATE_DIR": str(tmp_path), "WARREN_CAPACITY": "2"}
    )
    flushes = []
    reg = Registry(cfg, StateStore(tmp_path), on_event=lambda: flushes.append(1))
    reg.flushes = flushes
    return reg


def _create(vm_id="vm-1") -> CreateVM:
    cmd = messages.parse(messages.command("create-vm", {"image": "tiny", "vm-id": vm_id}))
    assert isinstance(cmd, CreateVM)
    return cmd


def _add(registry, vm_id="vm-1", status=ACCEPTED, **kw) -> VMRecord:
    record = VMRecord(
        vm_id=vm_id,
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname=hostname_for(vm_id),
        admin_username="warren-a",
        admin_password="p" * 20,
        status=status,
        **kw,
    )
    registry.records[vm_id] = record
    return record


def _types(record):
    return [e["type"] for e in record.outbox]


# -- report: status changes, events, durability
def test_report_writes_the_record_queues_the_event_and_asks_for_a_flush(registry):
    record = _add(registry)
    registry.report(record, "instance.progress", {"stage": "vm_starting"}, stage="vm_starting")
    saved = registry.store.load("vm-1")
    assert saved.stage == "vm_starting" and saved.seq == 1
    assert _types(saved) == ["instance.progress"]
    assert saved.outbox[0]["stage"] == "vm_starting" and saved.outbox[0]["host_id"] == "h1"
    assert registry.flushes == [1]


def test_an_illegal_status_change_is_refused_and_changes_nothing(registry, caplog):
    record = _add(registry, status=FAILED)
    with pytest.raises(IllegalTransition):
        registry.report(record, "instance.ready", {}, status=READY, management_url="http://x/")
    assert (record.status, record.management_url, record.outbox) == (FAILED, "", [])
    assert registry.store.load("vm-1") is None
    assert "illegal status change" in caplog.text


def test_a_vm_that_was_ready_once_can_never_be_failed(registry):
    record = _add(registry, status=BOOTING)
    registry.report(record, None, {}, status=READY)
    assert record.ever_ready
    registry.report(record, None, {}, status=STOPPED)
    registry.report(record, None, {}, status=BOOTING)
    with pytest.raises(IllegalTransition):
        registry.report(record, "instance.failed", {"reason": "x"}, status=FAILED)
    registry.report(record, "instance.lost", {"reason": "x"}, status=LOST)
    assert registry.store.load("vm-1").ever_ready


# -- slots
def test_failed_and_deleted_vms_free_their_slot(registry):
    _add(registry, "a", READY)
    assert registry.free_slots() == 1
    _add(registry, "b", FAILED)
    _add(registry, "c", DELETED)
    assert registry.free_slots() == 1
    _add(registry, "d", STOPPED)
    assert registry.free_slots() == 0
    assert registry.running() == 1


# -- create-vm
def test_a_create_vm_that_does_not_fit_the_resources_left_is_refused(tmp_path):
    cfg = config.load(
        env={
            "WARREN_HOST_ID": "h1",
            "WARREN_STATE_DIR": str(tmp_path),
            "WARREN_CAPACITY": "10",
            "WARREN_HOST_MEMORY_MB": "1024",
            "WARREN_HOST_CPUS": "1",
            "WARREN_CPU_OVERCOMMIT": "3",
            "WARREN_HOST_DISK_GB": "9",
        }
    )
    registry = Registry(cfg, StateStore(tmp_path))
    _add(registry, "a", READY)  # 256 MiB, 1 vCPU, 1 GB
    _add(registry, "b", STOPPED)  # a stopped VM keeps its room: it may start again
    _add(registry, "c", FAILED)  # a failed one does not
    used = registry.resources()
    assert (used.memory_used_mb, used.vcpus_used, used.disk_used_gb) == (512, 2, 2)
    assert (used.memory_total_mb, used.vcpus_total, used.disk_total_gb) == (1024, 3, 9)

    def create(**options):
        body = {"image": "tiny", "vm-id": "new", **options}
        cmd = messages.parse(messages.command("create-vm", body))
        assert isinstance(cmd, CreateVM)
        return cmd

    assert registry.create_decision(create(**{"memory-mb": 512})) == (NEW, None)
    assert registry.create_decision(create(**{"memory-mb": 768})) == (FULL, None)
    assert "768 MiB of memory (512 free)" in registry.room_refusal(create(**{"memory-mb": 768}))
    assert "2 vCPUs (1 free)" in registry.room_refusal(create(vcpus=2))
    assert "8 GB of disk (7 free)" in registry.room_refusal(create(**{"disk-gb": 8}))


def test_a_create_vm_is_new_duplicate_or_refused_by_a_full_host(registry):
    assert registry.create_decision(_create("vm-1")) == (NEW, None)
    record, failure = registry.add_new(_create("vm-1"))
    assert failure is None and set(record.ports) == {"management", "amqp"}
    assert registry.create_decision(_create("vm-1")) == (DUPLICATE, record)
    registry.add_new(_create("vm-2"))
    assert registry.create_decision(_create("vm-3")) == (FULL, None)


def test_a_deleted_vm_id_may_be_created_again(registry):
    _add(registry, status=DELETED)
    assert registry.create_decision(_create("vm-1")) == (NEW, None)


def test_new_vms_get_distinct_ports(registry):
    first, _ = registry.add_new(_create("vm-1"))
    second, _ = registry.add_new(_create("vm-2"))
    assert not set(first.ports.values()) & set(second.ports.values())


def test_a_duplicate_after_progress_republishes_progress_not_accepted(registry):
    """Issue 9 D: the status stays `accepted` until the launch finishes, but `progress` was sent
    already; re-publishing `accepted` with a newer seq would move a listener backwards."""
    record = _add(registry)
    registry.report(record, "instance.accepted", {"image": "tiny"})
    registry.report(record, "instance.progress", {"stage": "vm_starting"}, stage="vm_starting")
    assert record.status == ACCEPTED
    registry.republish(record)
    assert _types(record) == ["instance.accepted", "instance.progress", "instance.progress"]
    assert record.outbox[-1]["stage"] == "vm_starting"
    assert record.outbox[-1]["seq"] > record.outbox[-2]["seq"]


def test_a_duplicate_of_a_ready_vm_republishes_ready_with_its_urls(registry):
    record = _add(registry, status=BOOTING)
    fields = {
        "management_url": "http://m/",
        "amqp_url": "amqp://u@m/",
        "admin_username": "u",
        "ip_addresses": ["10.0.2.15"],
        "boot": "cold",
        "seconds": 1.5,
    }
    registry.report(record, "instance.ready", fields, status=READY)
    registry.republish(record)
    last = record.outbox[-1]
    assert last["type"] == "instance.ready" and last["management_url"] == "http://m/"
    assert registry.store.load("vm-1").last_event["type"] == "instance.ready"


def test_a_record_from_before_last_event_republishes_by_status():
    base = dict(
        vm_id="v",
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="h",
        admin_username="u",
        admin_password="p" * 20,
    )
    assert state_event(VMRecord(**base))[0] == "instance.accepted"
    assert state_event(VMRecord(**base, status=BOOTING, stage="guest_up")) == (
        "instance.progress",
        {"stage": "guest_up"},
    )
    assert state_event(VMRecord(**base, status=LOST))[0] == "instance.lost"
    assert state_event(VMRecord(**base, status=FAILED, reason="r")) == (
        "instance.failed",
        {"reason": "r"},
    )


# -- events flushed
def test_a_confirmed_event_leaves_the_outbox_and_a_deleted_vm_is_forgotten(registry):
    record = _add(registry, status=READY)
    registry.report(record, "instance.deleted", {}, status=DELETED)
    [(vm_id, events)] = registry.pending_events()
    assert registry.confirmed(vm_id, events[0]["message_id"])
    assert registry.records == {} and registry.store.load("vm-1") is None
    assert not registry.confirmed(vm_id, events[0]["message_id"])


# -- host commands
def test_one_command_at_a_time_per_vm(registry):
    _add(registry, status=READY)
    stop = VMCommand(command="stop-vm", vm_id="vm-1")
    assert registry.claim(stop)[0] == CLAIMED
    assert registry.claim(stop)[0] == BUSY
    assert registry.unattended_ready() == []  # the liveness check leaves a busy VM alone
    registry.release("vm-1")
    assert registry.claim(stop)[0] == CLAIMED


def test_a_delete_wins_over_a_start_whose_boot_still_runs(registry):
    """Issue 10: a start-vm whose RabbitMQ never answers must not make the customer's cancel
    wait for the boot deadline. Issue 20: nor may a start whose boot is not registered yet (or
    any other command) refuse it. The delete joins the busy vm-id; a second delete, or any
    other command, is still refused, and no boot may start while the delete holds it."""
    _add(registry, status=BOOTING)
    start = VMCommand(command="start-vm", vm_id="vm-1")
    delete = VMCommand(command="delete-vm", vm_id="vm-1")
    assert registry.claim(start)[0] == CLAIMED
    assert registry.claim(delete)[0] == CLAIMED  # no boot registered yet: the delete still wins
    assert registry.claim(delete)[0] == BUSY
    assert registry.claim(VMCommand(command="stop-vm", vm_id="vm-1"))[0] == BUSY
    thread = threading.Thread(target=lambda: None)
    with pytest.raises(Rejected, match="being deleted"):
        registry.start_job("vm-1", object(), thread)
    assert "vm-1" not in registry.boots and thread.ident is None  # never started
    registry.release("vm-1", "start-vm")  # the start ends first: the delete still holds it
    assert registry.busy == {"vm-1": ["delete-vm"]}
    registry.release("vm-1", "delete-vm")
    assert registry.busy == {}


def test_a_registered_job_s_thread_is_always_started(registry):
    """Whoever finds a job in `boots` may join its thread at once (issue 20: "cannot join
    thread before it is started")."""
    _add(registry, status=BOOTING)
    gate = threading.Event()
    thread = threading.Thread(target=gate.wait, daemon=True)
    registry.start_job("vm-1", object(), thread)
    _job, found = registry.boots["vm-1"]
    found.join(timeout=0.01)  # raised RuntimeError when the thread was not started yet
    gate.set()
    found.join()
    registry.end_job("vm-1")
    assert registry.boots == {}


def test_commands_for_unknown_or_deleted_vms_are_unknown(registry):
    _add(registry, "gone", DELETED)
    assert registry.claim(VMCommand(command="start-vm", vm_id="nope"))[0] == UNKNOWN
    assert registry.claim(VMCommand(command="start-vm", vm_id="gone"))[0] == UNKNOWN


@pytest.mark.parametrize(
    ("status", "command", "boot_running", "plan"),
    [
        (BOOTING, "delete-vm", True, DELETE),
        (FAILED, "delete-vm", False, DELETE),
        (BOOTING, "start-vm", True, WAIT_FOR_BOOT),
        (READY, "stop-vm", False, RUN),
        (STOPPED, "start-vm", False, RUN),
        (LOST, "start-vm", False, RUN),
        (READY, "restart-vm", False, RUN),
    ],
)
def test_which_command_runs_on_which_vm(status, command, boot_running, plan):
    record = VMRecord(
        vm_id="v",
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="h",
        admin_username="u",
        admin_password="p" * 20,
        status=status,
    )
    assert command_plan(record, command, boot_running=boot_running) == plan


@pytest.mark.parametrize(
    ("status", "command", "boot_running", "reason"),
    [
        (BOOTING, "stop-vm", True, "still booting"),
        (ACCEPTED, "start-vm", False, "still booting"),  # no boot thread: nothing to wait for
        (FAILED, "start-vm", False, "only delete-vm"),
    ],
)
def test_commands_that_may_not_run_are_rejected_with_a_reason(
    status, command, boot_running, reason
):
    record = VMRecord(
        vm_id="v",
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="h",
        admin_username="u",
        admin_password="p" * 20,
        status=status,
    )
    with pytest.raises(Rejected, match=reason):
        command_plan(record, command, boot_running=boot_running)


# -- parsing one delivery
def test_a_deeply_nested_body_is_rejected_not_a_crash():
    with pytest.raises(Rejected, match="nests deeper"):
        parse_create(b"[" * 50_000)
    with pytest.raises(Rejected):
        parse_host(
            b'{"command": "list-vms", "x": ' + b"[" * 50_000,
            routing_key=HOST_KEY,
            host_key=HOST_KEY,
        )


def test_a_number_too_long_for_int_is_rejected_not_a_crash():
    body = b'{"command": "create-vm", "options": {"image": "tiny", "memory-mb": ' + b"9" * 5000
    with pytest.raises(Rejected):
        parse_create(body + b"}}")


def test_the_queue_and_routing_key_must_fit_the_command():
    with pytest.raises(Rejected, match="routing key create-vm"):
        parse_create(messages.command("list-vms"))
    # A create-vm comes on the shared queue or placed on this host's own key, never broadcast.
    placed = parse_host(
        messages.command("create-vm", {"image": "tiny"}), routing_key=HOST_KEY, host_key=HOST_KEY
    )
    assert isinstance(placed, CreateVM)
    with pytest.raises(Rejected, match="host.<host_id>"):
        parse_host(
            messages.command("create-vm", {"image": "tiny"}),
            routing_key="list-vms",
            host_key=HOST_KEY,
        )
    with pytest.raises(Rejected, match="does not match"):
        parse_host(
            messages.command("delete-vm", {"vm-id": "a"}), routing_key="stop-vm", host_key=HOST_KEY
        )
    assert isinstance(
        parse_host(messages.command("list-vms"), routing_key="list-vms", host_key=HOST_KEY), ListVMs
    )


@given(
    suffix=st.from_regex(r"[A-Za-z0-9_-]{0,59}", fullmatch=True),
    command=st.sampled_from(["create-vm", "start-vm", "stop-vm", "restart-vm", "delete-vm"]),
)
def test_a_pool_vm_id_is_refused_on_every_queue_and_key(suffix, command):
    """Pool VMs are the host's own: a create-vm placed on the host's own key with one was taken
    (issue 20) while the shared queue refused it."""
    options = {"vm-id": "pool-" + suffix, **({"image": "tiny"} if command == "create-vm" else {})}
    body = messages.command(command, options)
    parsers = [lambda: parse_host(body, routing_key=HOST_KEY, host_key=HOST_KEY)]
    if command == "create-vm":
        parsers.append(lambda: parse_create(body))
    else:
        parsers.append(lambda: parse_host(body, routing_key=command, host_key=HOST_KEY))
    for parse in parsers:
        with pytest.raises(Rejected, match="reserved for the host"):
            parse()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    ["image", "vm-id", "memory-mb", "vcpus", "disk-gb", "admin", "limits", "kill", "x"]
)
COMMANDS = st.sampled_from([*messages.COMMANDS, "rm -rf /", ""])
BODIES = (
    st.binary(max_size=300)
    | st.integers(1, 60_000).map(lambda n: b"[" * n)  # RecursionError in json when deep
    | st.integers(1, 6000).map(  # int() refuses more than 4300 digits
        lambda n: (
            b'{"command": "create-vm", "options": {"image": "tiny", "memory-mb": '
            + b"9" * n
            + b"}}"
        )
    )
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda c, o: json.dumps({"command": c, "options": o}).encode(),
        COMMANDS,
        st.dictionaries(KEYS, JSON, max_size=6),
    )
)


@settings(max_examples=300, deadline=None)
@given(body=BODIES, key=st.sampled_from([HOST_KEY, "stop-vm", "list-vms", "create-vm"]))
def test_any_body_becomes_a_command_or_rejected_never_another_exception(body, key):
    for parse in (parse_create, lambda b: parse_host(b, routing_key=key, host_key=HOST_KEY)):
        try:
            cmd = parse(body)
        except Rejected as exc:
            assert exc.reason and isinstance(exc.reason, str)
        else:
            assert isinstance(cmd, CreateVM | ListVMs | VMCommand | SetAdminPassword | ResizeVM)
