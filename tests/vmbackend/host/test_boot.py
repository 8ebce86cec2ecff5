"""Booting one VM: the pure parts (URLs, the VMSpec, failure reasons) and real-QEMU failure paths."""

import pytest

from vmbackend.host import config
from vmbackend.host.boot import MAX_REASON, safe_reason, spec_for, urls_for
from vmbackend.host.state import VMRecord
from vmbackend.machine.base import MachineError
from vmbackend.machine.qemu import TapNet, UserNet
from vmbackend.protocol import messages


def _cfg(**env):
    return config.load(env={"WARREN_HOST_ID": "h1", **env})


def _record(**kw):
    base = dict(
        vm_id="vm-1",
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="vm-vm-1",
        admin_username="warren-ab12",
        admin_password="pw-0123456789abcdef",
        ports={"management": 21001, "amqp": 21002},
    )
    base.update(kw)
    return VMRecord(**base)


def test_user_mode_urls_use_the_advertised_host_and_the_forwarded_ports():
    cfg = _cfg(WARREN_ADVERTISED_HOST="vm.example.test")
    management, amqp, probe = urls_for(cfg, _record(), ["10.0.2.15"])
    assert management == "http://vm.example.test:21001/"
    assert amqp == "amqp://warren-ab12@vm.example.test:21002/"
    assert probe == "http://127.0.0.1:21001/"


def test_urls_never_carry_the_password():
    for url in urls_for(_cfg(), _record(), ["10.0.2.15"]):
        assert "pw-0123456789abcdef" not in url


def test_ipv6_hosts_are_bracketed():
    cfg = _cfg(WARREN_BIND_ADDRESS="::1")
    management, amqp, probe = urls_for(cfg, _record(), [])
    assert management == "http://[::1]:21001/" and probe == "http://[::1]:21001/"
    assert amqp == "amqp://warren-ab12@[::1]:21002/"


def test_bridge_mode_urls_use_the_guest_address():
    record = _record(network="bridge", ports={}, tap="wt0123456789ab", mac="52:54:00:aa:bb:cc")
    management, amqp, probe = urls_for(_cfg(), record, ["127.0.0.1", "fe80::1", "192.168.77.20"])
    assert management == probe == "http://192.168.77.20:15672/"
    assert amqp == "amqp://warren-ab12@192.168.77.20:5672/"


def test_bridge_mode_without_a_guest_address_is_a_failure():
    record = _record(network="bridge", ports={}, tap="wt0123456789ab", mac="52:54:00:aa:bb:cc")
    with pytest.raises(MachineError, match="no usable address"):
        urls_for(_cfg(), record, ["127.0.0.1", "fe80::1"])


def test_the_spec_matches_the_record():
    spec = spec_for(_cfg(), _record(limits={"max-queues": 5}))
    assert (spec.vm_id, spec.image, spec.memory_mb, spec.admin_user) == (
        "vm-1",
        "tiny",
        256,
        "warren-ab12",
    )
    assert spec.network == UserNet("127.0.0.1", 21001, 21002)
    assert spec.limits == {"max-queues": 5}
    bridged = spec_for(
        _cfg(), _record(network="bridge", tap="wt0123456789ab", mac="52:54:00:aa:bb:cc")
    )
    assert bridged.network == TapNet("wt0123456789ab", "52:54:00:aa:bb:cc")


def test_a_failure_reason_never_contains_the_password_and_is_bounded():
    record = _record()
    reason = safe_reason(MachineError("login pw-0123456789abcdef refused " + "x" * 5000), record)
    assert "pw-0123456789abcdef" not in reason and "***" in reason
    assert len(reason) <= MAX_REASON < messages.MAX_REASON  # the event keeps it whole
    assert safe_reason(TimeoutError(), record) == "TimeoutError"


@pytest.mark.vm
def test_a_cancel_that_arrives_while_qemu_starts_leaves_no_vm_running(
    tiny_images_root, short_tmp, monkeypatch
):
    """delete-vm racing the launch: the cancel lands after QEMU was spawned, before the boot
    goes on. The boot must kill its own QEMU rather than leave an orphan."""
    from tests.net import free_port
    from vmbackend.host.boot import Boot
    from vmbackend.host.state import StateStore
    from vmbackend.machine.qemu_machine import QemuMachine

    cfg = _cfg(WARREN_IMAGE_DIR=str(tiny_images_root), WARREN_STATE_DIR=str(short_tmp))
    store = StateStore(short_tmp)
    record = _record(vm_id="vm-race-1", ports={"management": free_port(), "amqp": free_port()})
    reports = []
    boot = Boot(cfg, store, record, lambda *a, **k: reports.append(a))
    real_launch = QemuMachine.launch
    launched = []

    def launch_then_cancel(machine, **kwargs):
        how = real_launch(machine, **kwargs)
        launched.append(machine.pid)
        boot.cancel.set()  # the delete arrives right now
        return how

    monkeypatch.setattr(QemuMachine, "launch", launch_then_cancel)
    boot.run()

    assert launched and launched[0] is not None, "QEMU really started"
    assert not boot.machine.is_running(), "the cancelled boot killed its QEMU"
    assert not any(a and a[1] == "instance.failed" for a in reports), "a cancel is not a failure"


def _start_setup(tiny_images_root, short_tmp, **record_kw):
    import socket

    from vmbackend.host.state import StateStore

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    cfg = _cfg(WARREN_IMAGE_DIR=str(tiny_images_root), WARREN_STATE_DIR=str(short_tmp))
    store = StateStore(short_tmp)
    record = _record(ports={"management": port(), "amqp": port()}, **record_kw)
    reports = []

    def report(rec, event_type, fields, **updates):
        from vmbackend.host.state import move

        if "status" in updates:
            move(rec, updates.pop("status"))
        for key, value in updates.items():
            setattr(rec, key, value)
        reports.append((event_type, fields))

    return cfg, store, record, reports, report


@pytest.mark.vm
def test_a_start_whose_qemu_dies_leaves_the_vm_lost_with_its_folder(tiny_images_root, short_tmp):
    """QEMU dies during a start-vm: the VM ends lost with the reason (not `booting` forever,
    not failed with its folder and disk deleted) and can be started again."""
    import os
    import signal
    import threading
    import time

    from vmbackend.host.boot import Boot
    from vmbackend.host.state import LOST, READY, STOPPED

    cfg, store, record, reports, report = _start_setup(
        tiny_images_root, short_tmp, vm_id="vm-nostart-1", status=STOPPED, ever_ready=True
    )
    data = store.vm_dir(record.vm_id) / "customer-data"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"keep me")
    boot = Boot(cfg, store, record, report, existing_disk=True)
    thread = threading.Thread(target=boot.run)  # never raises
    thread.start()
    # Under load the launch can take a while before QEMU is spawned. If it never is, the boot is
    # cancelled (and short_tmp kills whatever it started): a stray vm-nostart-1 QEMU had leaked
    # when this wait ran out and the boot thread went on to start the VM.
    end = time.monotonic() + 120
    while (boot.machine is None or not boot.machine.pid) and time.monotonic() < end:
        time.sleep(0.05)
    if boot.machine is None or not boot.machine.pid:
        boot.cancel.set()
        thread.join(120)
        pytest.fail("QEMU was not spawned within 120 s")
    os.kill(boot.machine.pid, signal.SIGKILL)
    thread.join(120)

    assert record.status == LOST and record.reason
    assert reports[-1] == ("instance.lost", {"reason": record.reason})
    assert data.read_bytes() == b"keep me"
    assert not boot.machine.is_running()
    again = Boot(cfg, store, record, report, existing_disk=True)
    again.run()
    try:
        assert record.status == READY, record.reason
        assert data.read_bytes() == b"keep me"
    finally:
        again.machine.destroy()


@pytest.mark.vm
def test_a_new_vm_whose_first_launch_fails_is_failed_and_cleaned_up(
    tiny_images_root, short_tmp, monkeypatch
):
    from vmbackend.host.boot import Boot
    from vmbackend.host.state import FAILED

    cfg, store, record, reports, report = _start_setup(
        tiny_images_root, short_tmp, vm_id="vm-nolaunch-1"
    )
    cfg = _cfg(WARREN_IMAGE_DIR=str(short_tmp / "no-images"), WARREN_STATE_DIR=str(short_tmp))
    boot = Boot(cfg, store, record, report)
    boot.run()
    assert record.status == FAILED and reports[-1][0] == "instance.failed"
    assert not store.vm_dir(record.vm_id).exists()
