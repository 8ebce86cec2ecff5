"""The QEMU command line as data: no QEMU is started here (except qemu-img for overlays)."""

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from vmbackend.images.manifest import Guest, Manifest
from vmbackend.machine import qemu

CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 2445.404\nflags\t: tsc\n"


def _manifest(disk=True, append="console=ttyS0 root=/dev/vda rw quiet"):
    folder = Path("/images/rabbitmq")
    return Manifest(
        name="rabbitmq",
        folder=folder,
        distro="debian",
        recipe_hash="sha256:x",
        built_at="",
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd.img",
        disk=folder / "disk.qcow2" if disk else None,
        append=append,
        guest=Guest("rabbitmq", 15672, 5672),
    )


def _spec(**over):
    base = dict(
        vm_id="0b6c",
        image="rabbitmq",
        hostname="rmq-0b6c",
        admin_user="warren-1",
        admin_password="s3cret-pass",
        memory_mb=768,
        vcpus=2,
        disk_gb=4,
        network=qemu.UserNet("127.0.0.1", 20001, 20002),
    )
    base.update(over)
    return qemu.VMSpec(**base)


def _args(accel="tcg", **kw):
    return qemu.build_args(
        _manifest(), _spec(), qemu.VMPaths(Path("/vms/0b6c")), accel, tsc_khz=2445404, **kw
    )


def _after(args, flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_it_builds_a_microvm_without_default_devices():
    args = _args()
    assert args[0] == "qemu-system-x86_64"
    assert _after(args, "-M") == ["microvm,acpi=on,pcie=off,rtc=on"]
    assert "-nodefaults" in args
    assert _after(args, "-display") == ["none"]
    assert _after(args, "-m") == ["768M"]
    assert _after(args, "-smp") == ["2"]


def test_tcg_bounds_the_translation_cache_and_passes_the_tsc_rate():
    args = _args("tcg")
    assert _after(args, "-accel") == ["tcg,tb-size=256"]
    assert _after(args, "-append") == ["console=ttyS0 root=/dev/vda rw quiet tsc_early_khz=2445404"]


def test_kvm_uses_the_host_cpu_and_no_tsc_hint():
    args = _args("kvm")
    assert _after(args, "-accel") == ["kvm"]
    assert _after(args, "-cpu") == ["host"]
    assert "tsc_early_khz" not in _after(args, "-append")[0]


def test_it_refuses_an_unknown_accelerator():
    with pytest.raises(ValueError):
        _args("hvf")


def test_tcg_without_a_tsc_rate_is_an_error():
    with pytest.raises(ValueError):
        qemu.kernel_cmdline("console=ttyS0", "tcg", None)


def test_an_existing_tsc_hint_is_replaced_not_doubled():
    line = qemu.kernel_cmdline("quiet tsc_early_khz=1", "tcg", 2000000)
    assert line == "quiet tsc_early_khz=2000000"


def test_disk_is_the_vms_own_overlay_on_virtio_blk():
    args = _args()
    assert _after(args, "-drive") == [
        "id=disk0,file=disk.qcow2,format=qcow2,if=none,cache=writeback,discard=unmap"
    ]
    assert "virtio-blk-device,drive=disk0" in _after(args, "-device")


def test_an_image_without_a_disk_gets_no_drive():
    args = qemu.build_args(
        _manifest(disk=False), _spec(), qemu.VMPaths(Path("/v")), "tcg", tsc_khz=1
    )
    assert "-drive" not in args
    assert not any(d.startswith("virtio-blk") for d in _after(args, "-device"))


def test_user_networking_forwards_ports_on_the_bind_address_only():
    args = _args()
    assert _after(args, "-netdev") == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:20001-:15672,hostfwd=tcp:127.0.0.1:20002-:5672"
    ]
    assert "virtio-net-device,netdev=net0" in _after(args, "-device")


def test_tap_networking_uses_the_given_device_and_mac():
    spec = _spec(network=qemu.TapNet(tap="wtap0", mac="52:54:00:aa:bb:cc"))
    args = qemu.build_args(_manifest(), spec, qemu.VMPaths(Path("/v")), "kvm")
    assert _after(args, "-netdev") == ["tap,id=net0,ifname=wtap0,script=no,downscript=no"]
    assert "virtio-net-device,netdev=net0,mac=52:54:00:aa:bb:cc" in _after(args, "-device")


def test_an_image_without_amqp_gets_only_the_management_forward():
    m = dataclasses.replace(_manifest(), guest=Guest("tiny", 15672, None))
    args = qemu.build_args(m, _spec(), qemu.VMPaths(Path("/v")), "tcg", tsc_khz=1)
    assert _after(args, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:20001-:15672"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: qemu.TapNet(tap="x;rm -rf /", mac="52:54:00:aa:bb:cc"),
        lambda: qemu.TapNet(tap="tap0", mac="nope"),
        lambda: qemu.UserNet("0.0.0.0; x", 1, 2),
        lambda: qemu.UserNet("127.0.0.1", 70000, 2),
        lambda: qemu.UserNet("127.0.0.1", 1, 0),
    ],
)
def test_it_rejects_bad_network_settings(make):
    with pytest.raises(ValueError):
        make()


def test_guest_agent_and_qmp_are_unix_sockets_in_the_vm_folder():
    args = _args()
    assert "socket,id=qga0,path=qga.sock,server=on,wait=off" in _after(args, "-chardev")
    assert "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0" in _after(args, "-device")
    assert _after(args, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]
    assert _after(args, "-serial") == ["file:console.log"]
    assert "virtio-rng-device,rng=rng0" in _after(args, "-device")


def test_secrets_go_through_fw_cfg_files_never_the_command_line():
    args = _args()
    assert _after(args, "-fw_cfg") == [
        f"name=opt/warren/{k},file=fw_cfg/{k}"
        for k in ("hostname", "admin_user", "admin_password", "erlang_cookie")
    ]
    assert "s3cret-pass" not in " ".join(args)
    assert "s3cret-pass" not in repr(_spec())


def test_incoming_is_added_only_for_a_restore():
    assert "-incoming" not in _args()
    state = Path("/images/rabbitmq/saved/state.zst")
    args = _args(incoming=qemu.incoming_from(state))
    assert _after(args, "-incoming") == ["exec:zstd -dc /images/rabbitmq/saved/state.zst"]


def test_migration_uris_quote_paths():
    assert qemu.outgoing_to(Path("/a b/s.zst")) == "exec:zstd -1 -q -f -o '/a b/s.zst'"


def test_host_tsc_khz_reads_cpuinfo():
    assert qemu.host_tsc_khz(CPUINFO) == 2445404
    with pytest.raises(RuntimeError):
        qemu.host_tsc_khz("processor: 0\n")
    assert qemu.host_tsc_khz() > 100_000  # this host


def test_overlay_commands_use_an_absolute_backing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmds = qemu.overlay_args(Path("base.qcow2"), Path("/v/disk.qcow2"), 4)
    assert cmds[0] == [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        str(tmp_path / "base.qcow2"),
        "-F",
        "qcow2",
        "/v/disk.qcow2",
    ]
    assert cmds[1] == ["qemu-img", "resize", "-q", "/v/disk.qcow2", "4G"]


def test_create_overlay_makes_a_backed_qcow2_of_the_asked_size(tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    overlay = tmp_path / "vm" / "disk.qcow2"
    overlay.parent.mkdir()
    qemu.create_overlay(base, overlay, 3)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(overlay)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["backing-filename"] == str(base)
    assert info["virtual-size"] == 3 * 1024**3
    qemu.create_overlay(base, tmp_path / "small.qcow2", 0)  # never shrinks below the base
    assert qemu.base_virtual_size(tmp_path / "small.qcow2") == 1024**3


# -- resize-vm: the command line follows the spec, the disk only grows ------------------------------


def test_a_resized_spec_is_a_new_command_line_and_nothing_else():
    paths = qemu.VMPaths(Path("/vms/0b6c"))
    small = qemu.build_args(_manifest(), _spec(), paths, "tcg", tsc_khz=2445404)
    big = qemu.build_args(
        _manifest(), _spec(memory_mb=2048, vcpus=4, disk_gb=20), paths, "tcg", tsc_khz=2445404
    )
    assert (_after(big, "-m"), _after(big, "-smp")) == (["2048M"], ["4"])
    changed = [(a, b) for a, b in zip(small, big, strict=True) if a != b]
    assert changed == [("768M", "2048M"), ("2", "4")]  # the disk's size lives in the file


def test_grow_disk_grows_a_qcow2_and_never_shrinks_it(tmp_path):
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        [qemu.QEMU_IMG, "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True, timeout=60
    )
    assert qemu.grow_args(disk, 3) == ["qemu-img", "resize", "-q", str(disk), "3G"]

    assert qemu.grow_disk(disk, 3) is True
    assert qemu.base_virtual_size(disk) == 3 * 1024**3
    assert qemu.grow_disk(disk, 2) is False  # smaller: left as it is
    assert qemu.grow_disk(disk, 3) is False  # same: nothing to do
    assert qemu.base_virtual_size(disk) == 3 * 1024**3


def test_tls_ports_are_on_the_command_line_unless_the_host_opens_them_later():
    net = qemu.UserNet("127.0.0.1", 20001, 20002, amqps_port=20003, https_port=20004)
    args = qemu.build_args(_manifest(), _spec(network=net), qemu.VMPaths(Path("/v")), "kvm")
    assert _after(args, "-netdev") == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:20001-:15672,hostfwd=tcp:127.0.0.1:20002-:5672"
        ",hostfwd=tcp:127.0.0.1:20003-:5671,hostfwd=tcp:127.0.0.1:20004-:15671"
    ]
    # An image with baked TLS: the throw-away certificate listens until the VM's own is in
    # place, so QEMU starts with no way in; tls_ports.open_tls_ports adds the forwards.
    gated = dataclasses.replace(net, tls_gated=True, plain_ports=False)
    args = qemu.build_args(_manifest(), _spec(network=gated), qemu.VMPaths(Path("/v")), "kvm")
    assert _after(args, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:20001-:15672"]
    assert not any("5671" in a for a in args)
