"""Self-healing: the restart policy (no QEMU) and, with the tiny image, a ready VM whose QEMU is
killed coming back on its own from its own folder."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vmbackend.daemon_helpers import (
    basic_auth_status,
    events_for,
    qemu_pids,
    read_state,
    vms_of,
    wait_host,
)
from vmbackend.host import config
from vmbackend.host.commands import Commands
from vmbackend.host.healing import MAX_DELAY, RestartPolicy
from vmbackend.host.registry import Registry
from vmbackend.host.state import LOST, READY, StateStore, VMRecord
from vmbackend.protocol.messages import VMCommand

POLICY = RestartPolicy(burst=3, interval=900.0, delay=5.0)


def test_the_first_restart_is_at_once():
    decision = POLICY.decide([], now=1000.0)
    assert (decision.restart, decision.attempt, decision.delay) == (True, 1, 0.0)


def test_later_attempts_in_the_window_back_off():
    second = POLICY.decide([990.0], now=1000.0)
    third = POLICY.decide([980.0, 990.0], now=1000.0)
    assert (second.attempt, second.delay) == (2, 5.0)
    assert (third.attempt, third.delay) == (3, 10.0)


def test_it_gives_up_after_the_burst_within_the_interval():
    decision = POLICY.decide([200.0, 500.0, 990.0], now=1000.0)
    assert decision.restart is False
    assert decision.attempt == 0


def test_attempts_older_than_the_interval_do_not_count():
    decision = POLICY.decide([10.0, 50.0, 99.0, 990.0], now=1000.0)  # 3 older than 900 s
    assert (decision.restart, decision.attempt) == (True, 2)
    assert decision.recent == [990.0]


def test_it_gives_up_after_the_burst_of_failed_attempts_in_a_row_however_old():
    """Each failed attempt of a VM whose boot hangs ends at the boot deadline, longer than the
    window: counted by the window alone, the VM would be started again forever."""
    decision = POLICY.decide([], now=10_000.0, failed_in_a_row=3)
    assert (decision.restart, decision.attempt) == (False, 0)
    assert POLICY.describe(3) == "3 failed restarts in a row"
    assert POLICY.decide([], now=10_000.0, failed_in_a_row=2).restart is True


def test_a_burst_of_zero_never_restarts():
    assert RestartPolicy(burst=0).decide([], now=5.0).restart is False


def test_attempts_from_the_future_do_not_count():
    """A clock stepped back (a host that rebooted with a wrong clock) must not lock a VM out."""
    decision = POLICY.decide([5000.0, 6000.0, 7000.0], now=1000.0)
    assert (decision.restart, decision.attempt) == (True, 1)


@given(
    st.lists(st.floats(min_value=0, max_value=10_000, allow_nan=False), max_size=20),
    st.floats(min_value=0, max_value=10_000, allow_nan=False),
    st.integers(min_value=0, max_value=10),
)
def test_the_decision_follows_the_count_inside_the_window(attempts, now, burst):
    policy = RestartPolicy(burst=burst, interval=900.0, delay=5.0)
    decision = policy.decide(attempts, now)
    inside = [t for t in attempts if now - 900.0 < t <= now]
    assert decision.restart == (len(inside) < burst)
    assert decision.recent == sorted(inside)
    assert 0.0 <= decision.delay <= MAX_DELAY
    if decision.restart:
        assert decision.attempt == len(inside) + 1
    # Following the decision never allows more than `burst` attempts in one window.
    if decision.restart:
        assert len(decision.recent) + 1 <= burst


# -- Commands.heal without QEMU: which VMs it touches, and the policy's end ---------------------


@pytest.fixture
def commands(tmp_path):
    cfg = config.load(
        env={
            "WARREN_HOST_ID": "h1",
            "WARREN_STATE_DIR": str(tmp_path / "state"),
            "WARREN_IMAGE_DIR": str(tmp_path / "no-images"),
            "WARREN_RESTART_BURST": "2",
            "WARREN_RESTART_DELAY": "0.01",
        }
    )
    store = StateStore(cfg.state_dir)
    return Commands(cfg, store, Registry(cfg, store))


def _ready_record(commands, vm_id="vm-1"):
    record = VMRecord(
        vm_id=vm_id,
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="h",
        admin_username="u",
        admin_password="p" * 20,
        ports={"management": 21001, "amqp": 21002},
        status=READY,
        ever_ready=True,
    )
    commands.registry.records[vm_id] = record
    return record


def _types(record):
    return [event["type"] for event in record.outbox]


def test_a_vm_a_command_holds_is_never_healed(commands):
    record = _ready_record(commands)
    commands.registry.claim(VMCommand(command="stop-vm", vm_id="vm-1"))
    assert commands.heal(record, "QEMU exited") is False
    commands.check_liveness()
    assert (record.status, _types(record)) == (READY, [])


def test_a_vm_that_is_booting_is_never_healed_twice(commands):
    record = _ready_record(commands)
    commands.registry.boots["vm-1"] = ("boot", "thread")
    assert commands.heal(record, "QEMU exited") is False
    assert _types(record) == []


def test_every_failed_attempt_is_counted_and_the_policy_ends_it_lost(commands):
    """No image on this 'host': every start fails at once, as a VM that crashes on every start."""
    record = _ready_record(commands)
    commands.check_liveness()  # no QEMU at all: it exited
    _boot, thread = commands.registry.boots["vm-1"]
    thread.join(30)
    assert _types(record) == ["instance.restarting", "instance.restarting", "instance.lost"]
    assert [e.get("attempt") for e in record.outbox[:2]] == [1, 2]
    assert "gave up after 2 restarts within 900 s" in record.outbox[2]["reason"]
    assert record.status == LOST and not record.healing
    assert (record.restart_count, len(record.restarts)) == (2, 2)
    saved = commands.store.load("vm-1")  # durable: a new daemon does not start counting afresh
    assert (saved.status, saved.restart_count, len(saved.restarts)) == (LOST, 2, 2)
    assert "vm-1" not in commands.registry.boots


def test_a_daemon_restart_keeps_the_attempts_of_the_window(commands):
    record = _ready_record(commands)
    record.restarts = [time.time() - 10, time.time() - 5]  # two crashes just before
    commands.check_liveness()
    assert _types(record) == ["instance.lost"]  # the burst (2) is used up: no third start
    assert record.status == LOST


def test_attempts_that_each_fail_slower_than_the_window_still_end_lost(commands, monkeypatch):
    """Every attempt fails after longer than the policy's window (here 1 s; a hanging boot fails
    at the 1500 s deadline against 900 s): the window never holds two attempts, and only the
    count of failures in a row ends it."""
    from vmbackend.host import self_healing

    class SlowFailingBoot(self_healing.Boot):
        def run(self) -> None:
            time.sleep(1.2)
            super().run()  # no image on this host: fails

    monkeypatch.setattr(self_healing, "Boot", SlowFailingBoot)
    commands.policy = RestartPolicy(burst=2, interval=1.0, delay=0.01)
    record = _ready_record(commands)
    commands.check_liveness()
    _boot, thread = commands.registry.boots["vm-1"]
    thread.join(30)
    assert not thread.is_alive(), "restarted again and again"
    assert _types(record) == ["instance.restarting", "instance.restarting", "instance.lost"]
    assert "gave up after 2 failed restarts in a row" in record.outbox[2]["reason"]
    assert record.status == LOST and record.restart_failures == 2
    assert commands.store.load("vm-1").restart_failures == 2  # a new daemon goes on counting


def test_a_daemon_restart_keeps_the_failures_in_a_row(commands):
    record = _ready_record(commands)
    record.restart_failures = 2  # two failed attempts, long ago, before this daemon started
    commands.check_liveness()
    assert _types(record) == ["instance.lost"]


# -- with the tiny image, through a real daemon ---------------------------------------------------

ADMIN = {"username": "warren-heal", "password": "heal-password-1234"}
READY_TIMEOUT = 240


def _ready_vm(daemons, client, vm_id, *, extra_env=None, host_id=None):
    daemon = daemons.start(host_id=host_id, extra_env=extra_env)
    wait_host(client, daemon.host_id)
    client.call("create-vm", {"image": "tiny", "vm-id": vm_id, "memory-mb": 256, "admin": ADMIN})
    ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready", ready
    # The tiny image has no disk of its own: a file in the machine folder stands for it.
    marker = daemon.state_dir / "machines" / vm_id / "customer-data"
    marker.write_bytes(b"keep me")
    return daemon, ready, marker


def _wait_events(client, vm_id, type_, count, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = events_for(client, vm_id, type_)
        if len(found) >= count:
            return found
        client.pump(0.2)
    raise AssertionError(
        f"fewer than {count} {type_} events for {vm_id}: "
        f"{[e['type'] for e in events_for(client, vm_id)]}"
    )


def _kill_qemu(state_dir):
    pids = qemu_pids(state_dir)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def _wait_answering(url, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if basic_auth_status(url, ADMIN["username"], ADMIN["password"], timeout=2) == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.mark.vm
def test_a_killed_vm_comes_back_on_its_own_from_its_own_folder(daemons, client):
    daemon, ready, marker = _ready_vm(daemons, client, "vm-heal-1")
    killed_at = time.monotonic()
    old_pid = _kill_qemu(daemon.state_dir)

    restarting = client.wait_event("vm-heal-1", ("instance.restarting",), 30)
    noticed = time.monotonic() - killed_at
    again = _wait_events(client, "vm-heal-1", "instance.ready", 2, READY_TIMEOUT)[1]
    _wait_answering(ready["management_url"], 60)
    print(
        f"\nkill -9 -> restarting event {noticed:.1f} s, -> management URL answers "
        f"{time.monotonic() - killed_at:.1f} s"
    )

    assert restarting["attempt"] == 1
    assert "exited unexpectedly" in restarting["reason"]
    assert restarting["seq"] < again["seq"]
    assert [
        e["type"]
        for e in events_for(client, "vm-heal-1")
        if e["type"]
        in ("instance.restarting", "instance.ready", "instance.lost", "instance.failed")
    ] == ["instance.ready", "instance.restarting", "instance.ready"]
    # Same VM, same folder, same URLs and credentials.
    for key in ("management_url", "amqp_url", "admin_username"):
        assert again[key] == ready[key]
    assert marker.read_bytes() == b"keep me"
    pids = qemu_pids(daemon.state_dir)
    assert len(pids) == 1 and pids[0] != old_pid
    assert vms_of(client, daemon.host_id)["vm-heal-1"]["status"] == "ready"
    state = read_state(daemon.state_dir, "vm-heal-1")
    assert (state["restart_count"], len(state["restarts"]), state["healing"]) == (1, 1, False)


@pytest.mark.vm
def test_stop_vm_is_never_mistaken_for_a_crash(daemons, client):
    daemon, _ready, _marker = _ready_vm(daemons, client, "vm-heal-stop")
    reply = client.call("stop-vm", {"vm-id": "vm-heal-stop", "kill": True}, timeout=60)
    assert reply["response"]["status"] == "stopped"
    client.pump(4.0)  # many watcher rounds (0.5 s) and heartbeats (1 s)
    assert events_for(client, "vm-heal-stop", "instance.restarting") == []
    assert qemu_pids(daemon.state_dir) == []
    assert vms_of(client, daemon.host_id)["vm-heal-stop"]["status"] == "stopped"


def _own_images_root(tmp_path, tiny_images_root):
    """An images root with a copy of `tiny`, so a test can break its own copy."""
    root = tmp_path / "images"
    (root / "tiny").mkdir(parents=True)
    for item in (tiny_images_root / "tiny").iterdir():  # copies: the manifest refuses links
        shutil.copy2(item, root / "tiny" / item.name)
    return root


@pytest.mark.vm
def test_a_vm_that_crashes_on_every_start_ends_lost_after_the_allowed_attempts(
    daemons, client, tmp_path, tiny_images_root
):
    images = _own_images_root(tmp_path, tiny_images_root)
    env = {
        "WARREN_IMAGE_DIR": str(images),
        "WARREN_RESTART_BURST": "2",
        "WARREN_RESTART_DELAY": "0.5",
    }
    daemon, _ready, marker = _ready_vm(daemons, client, "vm-heal-lost", extra_env=env)
    kernel = images / "tiny" / "vmlinuz"
    kernel.write_bytes(b"not a kernel\n" * 100)  # every start's QEMU exits at once
    _kill_qemu(daemon.state_dir)

    lost = client.wait_event("vm-heal-lost", ("instance.lost",), 120)
    restarting = events_for(client, "vm-heal-lost", "instance.restarting")
    assert [e["attempt"] for e in restarting] == [1, 2]
    assert "gave up after 2 restarts within 900 s" in lost["reason"]
    assert all(e["seq"] < lost["seq"] for e in restarting)
    assert events_for(client, "vm-heal-lost", "instance.failed") == []
    assert vms_of(client, daemon.host_id)["vm-heal-lost"]["status"] == "lost"
    assert marker.read_bytes() == b"keep me"  # lost keeps the disk
    assert qemu_pids(daemon.state_dir) == []
    assert "vm lost" in daemon.log_text()  # at error level, for the operators


@pytest.mark.vm
def test_a_daemon_restarted_while_its_vm_is_down_boots_it_again(daemons, client):
    """A host back from a reboot: the VM was ready, its QEMU is gone when the daemon starts."""
    first, ready, marker = _ready_vm(daemons, client, "vm-heal-boot", host_id="t-heal-boot")
    first.signal(signal.SIGKILL)
    first.wait(30)
    _kill_qemu(first.state_dir)

    second = daemons.start(host_id="t-heal-boot")
    restarting = client.wait_event("vm-heal-boot", ("instance.restarting",), 60)
    assert "gone when the daemon started" in restarting["reason"]
    again = _wait_events(client, "vm-heal-boot", "instance.ready", 2, READY_TIMEOUT)[1]
    assert again["management_url"] == ready["management_url"]
    _wait_answering(ready["management_url"], 60)
    assert marker.read_bytes() == b"keep me"
    assert len(qemu_pids(second.state_dir)) == 1
    assert events_for(client, "vm-heal-boot", "instance.lost") == []
