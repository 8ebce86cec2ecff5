import gzip
import json
import subprocess

import pytest

from vmbackend.images import manifest, tiny


def _ko(path, depends):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x7fELF junk\x00license=GPL\x00depends=" + depends.encode() + b"\x00name=x\x00"
    )
    return path


def test_module_depends_reads_the_modinfo_section(tmp_path):
    assert tiny.module_depends(_ko(tmp_path / "a.ko", "virtio,virtio_ring")) == [
        "virtio",
        "virtio_ring",
    ]
    assert tiny.module_depends(_ko(tmp_path / "b.ko", "")) == []


def test_module_order_puts_dependencies_first_once(tmp_path):
    _ko(tmp_path / "kernel/virtio.ko", "")
    _ko(tmp_path / "kernel/virtio_ring.ko", "")
    _ko(tmp_path / "kernel/virtio_net.ko", "virtio,virtio_ring,net_failover")
    _ko(tmp_path / "kernel/net_failover.ko", "failover")
    _ko(tmp_path / "kernel/failover.ko", "")
    _ko(tmp_path / "kernel/virtio-rng.ko", "virtio_ring,virtio")
    order = [p.stem for p in tiny.module_order(tmp_path, ("virtio_net", "virtio-rng"))]
    assert order == [
        "virtio",
        "virtio_ring",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio-rng",
    ]


def test_module_order_reports_missing_modules_and_cycles(tmp_path):
    _ko(tmp_path / "a.ko", "b")
    _ko(tmp_path / "b.ko", "a")
    with pytest.raises(tiny.TinyBuildError, match="cycle"):
        tiny.module_order(tmp_path, ("a",))
    with pytest.raises(tiny.TinyBuildError, match="not found"):
        tiny.module_order(tmp_path, ("nope",))


def test_the_recipe_hash_changes_with_the_packages():
    a = tiny.recipe_hash([("linux-image-x", "1"), ("qemu-guest-agent", "7")])
    b = tiny.recipe_hash([("linux-image-x", "2"), ("qemu-guest-agent", "7")])
    assert a.startswith("sha256:") and a != b
    assert a == tiny.recipe_hash([("linux-image-x", "1"), ("qemu-guest-agent", "7")])


@pytest.mark.vm
def test_the_built_image_has_a_valid_manifest_and_the_real_agent(tiny_images_root):
    m = manifest.load(tiny_images_root, "tiny")
    assert m.guest.kind == "tiny" and m.disk is None
    listing = (
        subprocess.run(
            ["cpio", "-it", "--quiet"],
            input=gzip.decompress(m.initrd.read_bytes()),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split()
    )
    for path in (
        "init",
        "bin/busybox",
        "usr/sbin/qemu-ga",
        "lib/modules/qemu_fw_cfg.ko",
        "lib/modules/virtio_console.ko",
        "usr/local/sbin/api.sh",
        "usr/local/sbin/warren-restore-settings",
    ):
        assert path in listing
    assert any(p.startswith("lib/x86_64-linux-gnu/libglib-2.0.so") for p in listing)


@pytest.mark.vm
def test_a_second_build_reuses_the_cached_image(tiny_images_root):
    before = json.loads((tiny_images_root / "tiny" / "image.json").read_text())
    messages = []
    tiny.build(tiny_images_root, messages.append)
    after = json.loads((tiny_images_root / "tiny" / "image.json").read_text())
    assert after["built_at"] == before["built_at"]
    assert any("up to date" in m for m in messages)


@pytest.mark.vm
def test_a_build_into_a_fresh_root_leaves_no_temporary_folders(tmp_path, tiny_images_root):
    # Reuses the downloaded .debs by pointing the fresh root's cache at the shared one.
    (tmp_path / ".downloads").symlink_to(tiny_images_root / ".downloads")
    folder = tiny.build(tmp_path, lambda m: None)
    assert folder == tmp_path / "tiny"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".tiny.lock")) == [
        ".downloads",
        "tiny",
    ]
    assert manifest.load(tmp_path, "tiny").recipe_hash.startswith("sha256:")
