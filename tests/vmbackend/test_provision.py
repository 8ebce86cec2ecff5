"""The create flow's pure parts: URLs, the VMSpec, failure reasons."""

import pytest

from vmbackend import config
from vmbackend.machine import MachineError, TapNet, UserNet
from vmbackend.provision import safe_reason, spec_for, urls_for
from vmbackend.state import VMRecord


def _cfg(**env):
    return config.load(env={"WARREN_HOST_ID": "h1", **env})


def _record(**kw):
    base = dict(vm_id="vm-1", image="tiny", memory_mb=256, vcpus=1, disk_gb=1, hostname="vm-vm-1",
                admin_username="warren-ab12", admin_password="pw-0123456789abcdef",
                ports={"management": 21001, "amqp": 21002})
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
    assert (spec.vm_id, spec.image, spec.memory_mb, spec.admin_user) == ("vm-1", "tiny", 256, "warren-ab12")
    assert spec.network == UserNet("127.0.0.1", 21001, 21002)
    assert spec.limits == {"max-queues": 5}
    bridged = spec_for(_cfg(), _record(network="bridge", tap="wt0123456789ab", mac="52:54:00:aa:bb:cc"))
    assert bridged.network == TapNet("wt0123456789ab", "52:54:00:aa:bb:cc")


def test_a_failure_reason_never_contains_the_password_and_is_bounded():
    record = _record()
    reason = safe_reason(MachineError("login pw-0123456789abcdef refused " + "x" * 2000), record)
    assert "pw-0123456789abcdef" not in reason and "***" in reason
    assert len(reason) <= 600
    assert safe_reason(TimeoutError(), record) == "TimeoutError"


@pytest.mark.vm
def test_a_cancel_that_arrives_while_qemu_starts_leaves_no_vm_running(
        tiny_images_root, short_tmp, monkeypatch):
    """delete-vm racing the launch: the cancel lands after QEMU was spawned, before the boot
    goes on. The boot must kill its own QEMU rather than leave an orphan."""
    from tests.net import free_port
    from vmbackend.machine import Machine
    from vmbackend.provision import Provision
    from vmbackend.state import StateStore

    cfg = _cfg(WARREN_IMAGE_DIR=str(tiny_images_root), WARREN_STATE_DIR=str(short_tmp))
    store = StateStore(short_tmp)
    record = _record(vm_id="vm-race-1", ports={"management": free_port(), "amqp": free_port()})
    reports = []
    provision = Provision(cfg, store, record, lambda *a, **k: reports.append(a))
    real_launch = Machine.launch
    launched = []

    def launch_then_cancel(machine, **kwargs):
        boot = real_launch(machine, **kwargs)
        launched.append(machine.pid)
        provision.cancel.set()  # the delete arrives right now
        return boot

    monkeypatch.setattr(Machine, "launch", launch_then_cancel)
    provision.run()

    assert launched and launched[0] is not None, "QEMU really started"
    assert not provision.machine.is_running(), "the cancelled boot killed its QEMU"
    assert not any(a and a[1] == "instance.failed" for a in reports), "a cancel is not a failure"
