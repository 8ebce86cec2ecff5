"""Saved state and restore: the tiny image in the fast tier (`vm`), the RabbitMQ image in `slow`."""

import dataclasses
import json
import shutil
import stat
import time
from pathlib import Path

import pytest

from vmbackend.images import manifest
from vmbackend.machine import qemu, saved_state, snapshot
from vmbackend.machine.management_api import ManagementAPI

BOOT = 90


@pytest.fixture(scope="module")
def saved_root(tiny_images_root, tmp_path_factory):
    """A private images root with a copy of `tiny` and its saved state (256 MiB, 1 vCPU), so
    other tests keep booting the shared tiny image cold."""
    root = tmp_path_factory.mktemp("images")
    shutil.copytree(
        tiny_images_root / "tiny", root / "tiny", ignore=shutil.ignore_patterns("saved")
    )
    snapshot.create(root, "tiny", lambda m: None, memory_mb=256, vcpus=1)
    return root


def _get(base, path, user, password):
    """GET `path` on the management API at `base` as `user`: (status, body), any status."""
    answer = ManagementAPI(base, user, password).request("GET", path)
    return answer.status, answer.body


def _ready(m):
    m.wait_guest_agent(time.monotonic() + BOOT)
    m.personalize(time.monotonic() + BOOT)
    m.wait_management(m.management_url(), time.monotonic() + BOOT)


def test_device_signature_ignores_names_ports_and_command_line():
    image = manifest.Manifest(
        name="t",
        folder=Path("/i/t"),
        distro="",
        recipe_hash="x",
        built_at="",
        kernel=Path("/i/t/k"),
        initrd=None,
        disk=None,
        append="quiet",
        guest=manifest.Guest("tiny"),
    )
    a = qemu.VMSpec(
        vm_id="a",
        image="t",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="a",
        admin_user="a",
        admin_password="a",
        network=qemu.UserNet("127.0.0.1", 1, 2),
    )
    b = dataclasses.replace(a, vm_id="b", hostname="b", network=qemu.UserNet("127.0.0.1", 3, 4))
    assert saved_state.signature(image, a, "tcg") == saved_state.signature(image, b, "tcg")
    assert saved_state.signature(image, a, "tcg") != saved_state.signature(
        image, dataclasses.replace(a, memory_mb=512), "tcg"
    )
    assert saved_state.signature(image, a, "tcg") != saved_state.signature(image, a, "kvm")


@pytest.mark.vm
def test_saved_state_files_and_meta(saved_root):
    saved = saved_root / "tiny" / "saved"
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["memory_mb"] == 256 and meta["vcpus"] == 1
    assert meta["machine"] == qemu.MACHINE and meta["qemu_version"] == qemu.qemu_version()
    assert meta["template_admin"] == snapshot.TEMPLATE_ADMIN
    assert (saved / meta["state"]).stat().st_size > 0
    assert meta["disk"] is None  # tiny has no disk
    assert stat.S_IMODE((saved / meta["template_secret"]).stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.stat().st_mode) == 0o700
    messages = []
    snapshot.create(saved_root, "tiny", messages.append, memory_mb=256, vcpus=1)
    assert messages == ["tiny: saved state up to date"]  # running VMs' backing files stay put
    assert json.loads((saved / "meta.json").read_text())["created_at"] == meta["created_at"]


@pytest.mark.vm
def test_a_new_saved_state_keeps_the_files_earlier_vms_use(saved_root, machine_factory):
    m = machine_factory(images_root=saved_root, memory_mb=256)
    assert m.launch() == "restore"
    before = json.loads((saved_root / "tiny" / "saved" / "meta.json").read_text())
    snapshot.create(saved_root, "tiny", lambda msg: None, memory_mb=256, vcpus=1, force=True)
    after = json.loads((saved_root / "tiny" / "saved" / "meta.json").read_text())
    assert after["state"] != before["state"]
    assert (saved_root / "tiny" / "saved" / before["state"]).is_file()
    _ready(m)  # the VM restored earlier personalizes with its own template password
    assert m.guest_exec("/bin/hostname") == (0, f"{m.spec.hostname}\n".encode())


@pytest.mark.vm
def test_a_vm_restores_and_becomes_itself(saved_root, machine_factory):
    m = machine_factory(images_root=saved_root, memory_mb=256)
    assert m.launch() == "restore"
    _ready(m)
    base = m.management_url()
    assert m.guest_exec("/bin/hostname") == (0, f"{m.spec.hostname}\n".encode())
    assert _get(base, "api/overview", m.spec.admin_user, m.spec.admin_password)[0] == 200
    template_pw = saved_state.template_password(saved_root, "tiny")
    assert _get(base, "api/overview", snapshot.TEMPLATE_ADMIN, template_pw)[0] == 401
    assert _get(base, "api/overview", "guest", "guest")[0] == 401
    m.personalize(time.monotonic() + 10)  # a second call changes nothing
    assert _get(base, "api/overview", m.spec.admin_user, m.spec.admin_password)[0] == 200


@pytest.mark.vm
def test_two_restored_vms_differ(saved_root, machine_factory):
    a = machine_factory(images_root=saved_root, memory_mb=256)
    b = machine_factory(images_root=saved_root, memory_mb=256)
    assert (a.launch(), b.launch()) == ("restore", "restore")
    _ready(a)
    _ready(b)
    assert a.guest_exec("/bin/hostname")[1] != b.guest_exec("/bin/hostname")[1]
    assert (
        _get(a.management_url(), "api/overview", b.spec.admin_user, b.spec.admin_password)[0] == 401
    )
    assert _cookie(a) != _cookie(b)


def _cookie(m):
    """The fresh cookie personalize() sent (the rotation runs in the background)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, out = m.guest_exec("/bin/cat", ["/run/warren/erlang_cookie"])
        if code == 0 and len(out) == 32:
            return out
        time.sleep(0.5)
    raise AssertionError("no cookie was written")


@pytest.mark.vm
def test_a_vm_that_does_not_match_the_saved_state_boots_cold(saved_root, machine_factory):
    m = machine_factory(images_root=saved_root, memory_mb=320)
    assert m.launch() == "cold"
    _ready(m)
    assert m.guest_exec("/bin/hostname") == (0, f"{m.spec.hostname}\n".encode())


@pytest.mark.vm
def test_a_cold_boot_can_be_asked_for_even_with_a_matching_saved_state(saved_root, machine_factory):
    m = machine_factory(images_root=saved_root, memory_mb=256)
    assert m.launch(allow_restore=False) == "cold"


@pytest.mark.vm
def test_a_restored_vm_restarted_with_start_boots_cold(saved_root, machine_factory):
    m = machine_factory(images_root=saved_root, memory_mb=256)
    assert m.launch() == "restore"
    m.kill()
    assert m.start() == "cold"
    _ready(m)


@pytest.mark.vm
def test_a_tampered_meta_is_not_restored_from(saved_root, machine_factory, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(saved_root / "tiny", root / "tiny")
    meta_path = root / "tiny" / "saved" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["qemu_version"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    image = manifest.load(root, "tiny")
    spec = machine_factory(images_root=root, memory_mb=256).spec
    assert saved_state.matching(image, spec, "tcg") is None


IMAGE = "rabbitmq-4.0"  # the image new orders get (versions.DEFAULT_VERSION)


@pytest.mark.slow
def test_the_rabbitmq_image_restores_with_its_own_admin(machine_factory, tiny_images_root):
    root = manifest.default_images_root()
    if IMAGE not in manifest.available(root):
        pytest.skip(
            f"no {IMAGE} image under {root}: run `python -m vmbackend image build rabbitmq-4.0`"
        )
    image = manifest.load(root, IMAGE)
    if saved_state.load_meta(image) is None:
        pytest.skip(
            f"the {IMAGE} image has no saved state: run `python -m vmbackend image snapshot rabbitmq-4.0`"
        )
    meta = saved_state.load_meta(image)
    a = machine_factory(
        image=IMAGE,
        images_root=root,
        memory_mb=meta["memory_mb"],
        vcpus=meta["vcpus"],
        disk_gb=4,
        limits={"max-connections": 5},
    )
    b = machine_factory(
        image=IMAGE, images_root=root, memory_mb=meta["memory_mb"], vcpus=meta["vcpus"], disk_gb=4
    )
    assert a.launch() == "restore"
    assert b.launch() == "restore"
    for m in (a, b):
        m.wait_guest_agent(time.monotonic() + 120)
        m.personalize(time.monotonic() + 120)
        m.wait_management(m.management_url(), time.monotonic() + 120)
    a.apply_limits(a.management_url())
    for m in (a, b):
        base = m.management_url()
        assert _get(base, "api/overview", m.spec.admin_user, m.spec.admin_password)[0] == 200
        assert _get(base, "api/overview", "guest", "guest")[0] == 401
        assert (
            _get(
                base,
                "api/overview",
                snapshot.TEMPLATE_ADMIN,
                saved_state.template_password(root, IMAGE),
            )[0]
            == 401
        )
    assert a.guest_exec("/bin/hostname")[1] != b.guest_exec("/bin/hostname")[1]
    status, body = _get(
        a.management_url(), "api/vhost-limits/%2F", a.spec.admin_user, a.spec.admin_password
    )
    assert status == 200 and b"max-connections" in body
    # The plan's disk size, not the template's: the restored guest was told of the resize and
    # grew its root file system (the template's disk is 2 GiB).
    assert (
        a.guest_exec("/bin/cat", ["/sys/block/vda/size"])[1].strip()
        == str(4 * 1024**3 // 512).encode()
    )
    deadline = time.monotonic() + 60
    while True:
        df = a.guest_exec("/bin/df", ["-B1M", "--output=size", "/"])[1].split()
        if int(df[-1]) > 3500 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert int(df[-1]) > 3500, f"root file system did not grow: {df}"
