"""The simulated machine driver: VMs without QEMU moving through the real states, for load
tests (bench/fleet.py). Unit parts, then a real daemon on the real broker."""

import threading
import time

import pytest

from tests.vmbackend.daemon_helpers import events_for, wait_host
from vmbackend.client import Client
from vmbackend.host import config
from vmbackend.machine.base import MachineError, MachineGone
from vmbackend.machine.drivers import QemuDriver, SimulatedDriver, driver_for
from vmbackend.machine.qemu import VMSpec
from vmbackend.machine.simulated import SimulatedMachine, parse_boot_seconds

SPEC = VMSpec("vm-1", "tiny", 256, 1, 1, "vm-1", "admin", "x" * 16)
SIM = {
    "WARREN_DRIVER": "simulated",
    "WARREN_SIM_BOOT_SECONDS": "0.2-0.6",
    "WARREN_HOST_MEMORY_MB": "1024",
    "WARREN_METRICS_INTERVAL": "0",
}


def test_boot_seconds_are_one_number_or_a_range():
    assert parse_boot_seconds("2") == (2.0, 2.0)
    assert parse_boot_seconds(" 0.5 - 3 ") == (0.5, 3.0)
    for bad in ("", "3-1", "a", "1-2-3", "-1", "5000"):
        with pytest.raises(ValueError):
            parse_boot_seconds(bad)


def test_the_driver_is_chosen_by_configuration():
    cfg = config.load(env={"WARREN_HOST_ID": "h", **SIM, "WARREN_SIM_FAILURE_RATE": "0.25"})
    assert (cfg.driver, cfg.sim_boot_seconds, cfg.sim_failure_rate) == (
        "simulated",
        (0.2, 0.6),
        0.25,
    )
    assert config.load(env={"WARREN_HOST_ID": "h"}).driver == "qemu"
    for var, value in (("WARREN_DRIVER", "docker"), ("WARREN_SIM_FAILURE_RATE", "2")):
        with pytest.raises(config.ConfigError):
            config.load(env={"WARREN_HOST_ID": "h", var: value})


def test_the_configured_driver_makes_the_machines_and_answers_for_them(tmp_path):
    cfg = config.load(env={"WARREN_HOST_ID": "h", **SIM, "WARREN_SIM_FAILURE_RATE": "0.25"})
    driver = cfg.machines()
    assert isinstance(driver, SimulatedDriver)
    assert (driver.boot_seconds, driver.failure_rate) == ((0.2, 0.6), 0.25)
    assert not (driver.needs_image or driver.outlives_daemon or driver.needs_tap)
    machine = driver.new(SPEC, tmp_path, tmp_path)
    assert isinstance(machine, SimulatedMachine) and machine.spec == SPEC
    with pytest.raises(MachineGone):  # recovery finds no simulated VM after a restart
        driver.adopt(SPEC, tmp_path, tmp_path)
    qemu = config.load(env={"WARREN_HOST_ID": "h", "WARREN_ACCEL": "tcg"}).machines()
    assert isinstance(qemu, QemuDriver) and qemu.accel == "tcg"
    assert qemu.needs_image and qemu.outlives_daemon and qemu.needs_tap
    with pytest.raises(MachineGone):  # no QEMU of this VM runs here
        qemu.adopt(SPEC, tmp_path, tmp_path)
    with pytest.raises(ValueError):
        driver_for("docker")


def test_a_simulated_machine_hands_over_its_admin_and_refuses_guest_work():
    machine = SimulatedMachine(SPEC, (0.0, 0.0), 0.0)
    machine.hand_over("order-admin", "y" * 16, {"max-queues": 5})
    machine.set_admin_password("z" * 16)
    assert (machine.spec.admin_user, machine.spec.admin_password, machine.spec.limits) == (
        "order-admin",
        "z" * 16,
        {"max-queues": 5},
    )
    assert not machine.has_disk()
    for call in (machine.management_url, lambda: machine.grow_running_disk(8)):
        with pytest.raises(MachineError, match="simulated"):
            call()


def test_a_simulated_machine_fails_at_its_rate_and_a_kill_ends_its_wait():
    failing = SimulatedMachine(SPEC, (0.0, 0.0), 1.0)
    failing.launch()
    assert failing.is_running()
    with pytest.raises(MachineError, match="simulated boot failure"):
        failing.wait_management("http://127.0.0.1:1/", 0)
    slow = SimulatedMachine(SPEC, (60.0, 60.0), 0.0)
    threading.Timer(0.2, slow.kill).start()
    started = time.monotonic()
    with pytest.raises(MachineError, match="killed"):
        slow.launch()
    assert time.monotonic() - started < 30  # the kill ended it, not the 12 s launch share


def test_a_simulated_vm_goes_through_the_real_states_and_is_deleted(daemons, amqp_url):
    host = daemons.start(extra_env=SIM)
    with Client(amqp_url) as client:
        client.watch_events("#")
        wait_host(client, host.host_id)
        vm_id = "31111111-2222-4333-8444-555555555555"
        client.send("create-vm", {"image": "anything", "vm-id": vm_id, "memory-mb": 512})
        ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), 30)
        assert ready["type"] == "instance.ready", ready
        assert ready["management_url"].startswith("http://127.0.0.1:")
        stages = [e.get("stage") for e in events_for(client, vm_id, "instance.progress")]
        assert stages == ["vm_starting", "guest_up", "rabbitmq_starting"]
        (vm,) = wait_host(client, host.host_id)
        assert (vm["vm-id"], vm["status"], vm["memory-mb"]) == (vm_id, "ready", 512)
        reply = client.call("delete-vm", {"vm-id": vm_id}, timeout=30)
        assert reply["execution-info"]["status"] == "success"
        client.wait_event(vm_id, ("instance.deleted",), 30)
        assert wait_host(client, host.host_id) == []
    assert "qemu" not in host.log_text().lower().replace("qemu_exited", "")


def test_a_failed_simulated_boot_frees_its_room(daemons, amqp_url):
    host = daemons.start(extra_env={**SIM, "WARREN_SIM_FAILURE_RATE": "1"})
    with Client(amqp_url) as client:
        client.watch_events("#")
        wait_host(client, host.host_id)
        vm_id = "41111111-2222-4333-8444-555555555555"
        client.send("create-vm", {"image": "x", "vm-id": vm_id, "memory-mb": 1024})
        failed = client.wait_event(vm_id, ("instance.ready", "instance.failed"), 30)
        assert failed["type"] == "instance.failed"
        assert "simulated boot failure" in failed["reason"]
        client.pump(2.5)  # heartbeats every second
        beat = [
            e
            for e in client.events
            if e["type"] == "host.heartbeat" and e["host_id"] == host.host_id
        ][-1]
        assert (beat["memory_used_mb"], beat["memory_free_mb"]) == (0, 1024)
