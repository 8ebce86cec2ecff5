"""Machines running the tiny image under real QEMU (marker `vm`)."""

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.qemu_procs import qemu_pids
from vmbackend.images import manifest
from vmbackend.machine.base import MachineError, MachineGone
from vmbackend.machine.management_api import ManagementAPI
from vmbackend.machine.qemu_machine import QemuMachine

pytestmark = pytest.mark.vm

BOOT = 90  # seconds; generous for two loaded cores


def _get(base, path, user, password):
    """GET `path` on the management API at `base` as `user`: (status, body), any status."""
    answer = ManagementAPI(base, user, password).request("GET", path)
    return answer.status, answer.body


def _ready(machine):
    machine.wait_guest_agent(time.monotonic() + BOOT)
    machine.wait_management(machine.management_url(), time.monotonic() + BOOT)


def test_a_tiny_vm_boots_and_answers_as_itself(machine_factory):
    m = machine_factory(limits={"max-connections": 7, "max-queues": 9})
    assert m.launch() == "cold"
    m.wait_guest_agent(time.monotonic() + BOOT)
    addresses = m.guest_addresses()
    assert addresses == ["10.0.2.15"]  # user-mode NAT's guest address; no 127.x, no fe80::
    base = m.management_url()
    assert base == f"http://127.0.0.1:{m.spec.network.management_port}/"
    m.wait_management(base, time.monotonic() + BOOT)
    assert _get(base, "api/overview", m.spec.admin_user, m.spec.admin_password)[0] == 200
    assert _get(base, "api/overview", "guest", "guest")[0] == 401
    assert _get(base, "api/overview", m.spec.admin_user, "wrong")[0] == 401
    m.apply_limits(base)
    code, out = m.guest_exec("/bin/cat", ["/run/warren/limits"])
    assert (code, sorted(out.decode().split())) == (0, ["max-connections=7", "max-queues=9"])
    assert m.guest_exec("/bin/hostname") == (0, f"{m.spec.hostname}\n".encode())
    assert m.run_state() == "running"
    m.personalize(time.monotonic() + 5)  # cold boot: fw_cfg did it already, a no-op


def test_secrets_stay_off_the_command_line_and_in_private_files(machine_factory):
    m = machine_factory()
    m.launch()
    cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes()
    assert m.spec.admin_password.encode() not in cmdline
    assert stat.S_IMODE(m.vm_dir.stat().st_mode) == 0o700
    for key in ("hostname", "admin_user", "admin_password", "erlang_cookie"):
        assert stat.S_IMODE((m.vm_dir / "fw_cfg" / key).stat().st_mode) == 0o600
    assert (m.vm_dir / "fw_cfg" / "admin_password").read_text() == m.spec.admin_password
    assert (m.vm_dir / "qemu.log").is_file()
    m.kill()
    assert not m.is_running()
    assert qemu_pids(m.vm_dir) == []


def test_two_vms_get_their_own_hostnames(machine_factory):
    a, b = machine_factory(), machine_factory()
    a.launch()
    b.launch()
    _ready(a)
    _ready(b)
    names = {m.guest_exec("/bin/hostname")[1].strip() for m in (a, b)}
    assert names == {a.spec.hostname.encode(), b.spec.hostname.encode()}
    # each VM's credentials only work on that VM
    assert (
        _get(a.management_url(), "api/overview", b.spec.admin_user, b.spec.admin_password)[0] == 401
    )


def test_powerdown_stops_the_guest_through_acpi(machine_factory):
    m = machine_factory()
    m.launch()
    m.wait_guest_agent(time.monotonic() + BOOT)
    m.powerdown(timeout=60)
    assert not m.is_running()
    assert m._proc.returncode == 0  # the guest powered off; QEMU was not killed
    assert not (m.vm_dir / "qemu.pid").exists()
    with pytest.raises(MachineGone):
        m.wait_guest_agent(time.monotonic() + 5)


def test_a_vm_survives_its_launcher_and_can_be_adopted(machine_factory):
    m = machine_factory()
    # Launch from another Python process that then dies without cleaning up, like a killed daemon.
    launcher = textwrap.dedent(f"""
        import os, pickle, sys
        from pathlib import Path
        from vmbackend.machine.qemu_machine import QemuMachine
        spec = pickle.loads(bytes.fromhex(sys.argv[1]))
        QemuMachine(spec, Path({str(m.vm_dir)!r}), Path({str(m.images_root)!r})).launch()
        os._exit(0)
    """)
    import pickle

    subprocess.run(
        [sys.executable, "-c", launcher, pickle.dumps(m.spec).hex()],
        check=True,
        timeout=120,
        cwd=Path(__file__).parents[3],
    )
    adopted = QemuMachine.adopt(m.spec, m.vm_dir, m.images_root)
    assert adopted.is_running()
    assert qemu_pids(m.vm_dir) == [adopted.pid]
    adopted.wait_guest_agent(time.monotonic() + BOOT)
    assert adopted.run_state() == "running"
    adopted.kill()
    assert qemu_pids(m.vm_dir) == []
    with pytest.raises(MachineGone):
        QemuMachine.adopt(m.spec, m.vm_dir, m.images_root)


def test_adopt_refuses_a_pidfile_that_names_another_process(machine_factory):
    m = machine_factory()
    m.vm_dir.mkdir(parents=True)
    (m.vm_dir / "qemu.pid").write_text(f"{os.getpid()}\n")  # alive, but not this VM's QEMU
    with pytest.raises(MachineGone):
        QemuMachine.adopt(m.spec, m.vm_dir, m.images_root)
    m.destroy()  # must not kill the pytest process named in the pidfile
    assert not m.vm_dir.exists()


def test_a_second_launch_of_a_running_vm_is_refused(machine_factory):
    m = machine_factory()
    m.launch()
    with pytest.raises(MachineError, match="already running"):
        m.launch()


def test_start_boots_a_stopped_vm_again(machine_factory):
    m = machine_factory()
    m.launch()
    m.kill()
    assert m.start() == "cold"
    _ready(m)


def test_an_unknown_image_fails_before_starting_anything(machine_factory):
    m = machine_factory(image="nope")
    with pytest.raises(MachineError, match="not found"):
        m.launch()
    assert m.pid is None


def _broken_image(root, tiny_root, *, kernel=None, initrd=None):
    folder = root / "broken"
    folder.mkdir(parents=True)
    src = tiny_root / "tiny"
    (folder / "vmlinuz").write_bytes(
        kernel if kernel is not None else (src / "vmlinuz").read_bytes()
    )
    (folder / "initrd.img").write_bytes(
        initrd if initrd is not None else (src / "initrd.img").read_bytes()
    )
    data = manifest.load(tiny_root, "tiny").raw | {"name": "broken"}
    manifest.write_manifest(folder, {k: v for k, v in data.items() if k != "format"})
    return root


def test_a_bad_kernel_fails_at_launch_with_qemus_reason(
    machine_factory, tmp_path, tiny_images_root
):
    root = _broken_image(tmp_path, tiny_images_root, kernel=b"not a kernel\n")
    m = machine_factory(image="broken", images_root=root)
    with pytest.raises(MachineGone, match="exit code 1.*kernel"):
        m.launch()
    assert not m.is_running()
    assert qemu_pids(m.vm_dir) == []


def test_a_guest_without_an_agent_fails_by_the_deadline_and_leaves_nothing(
    machine_factory, tmp_path, tiny_images_root
):
    root = _broken_image(tmp_path, tiny_images_root, initrd=b"")  # kernel panics: no init
    m = machine_factory(image="broken", images_root=root)
    m.launch()
    deadline = time.monotonic() + 15
    with pytest.raises(MachineError, match="guest agent did not answer") as err:
        m.wait_guest_agent(deadline)
    assert time.monotonic() < deadline + 5
    assert "console:" in str(err.value)
    m.destroy()
    assert qemu_pids(m.vm_dir) == []
    assert not m.vm_dir.exists()


def test_destroy_removes_the_vm_and_its_folder(machine_factory):
    m = machine_factory()
    m.launch()
    assert qemu_pids(m.vm_dir) == [m.pid]
    m.destroy()
    assert qemu_pids(m.vm_dir) == []
    assert not m.vm_dir.exists()
    m.destroy()  # twice is fine
