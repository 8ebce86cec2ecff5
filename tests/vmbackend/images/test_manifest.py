import json
import os
import stat

import pytest

from vmbackend import files
from vmbackend.images import manifest
from vmbackend.images.manifest import ImageError


def _image(root, name="tiny", **over):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"k")
    (folder / "initrd.img").write_bytes(b"i")
    data = {
        "format": 1,
        "name": name,
        "distro": "debian",
        "recipe_hash": "sha256:abc",
        "built_at": "2026-11-24T22:40:01+00:00",
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "disk": None,
        "append": "console=ttyS0",
        "guest": {"kind": "tiny", "management_port": 15672},
        "saved_state": None,
    }
    data.update(over)
    (folder / "image.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "..", ".", "", "A", "-x", "a/b", "a" * 65, "x\x00", None, 3, ".hidden"],
)
def test_it_rejects_bad_image_names(name):
    with pytest.raises(ImageError):
        manifest.validate_name(name)


@pytest.mark.parametrize("name", ["rabbitmq", "tiny", "debian-12.1_x", "a" * 64])
def test_it_accepts_good_image_names(name):
    assert manifest.validate_name(name) == name


def test_it_loads_a_valid_manifest(tmp_path):
    folder = _image(tmp_path)
    m = manifest.load(tmp_path, "tiny")
    assert m.kernel == (folder / "vmlinuz").resolve()
    assert m.disk is None
    assert m.guest.kind == "tiny"
    assert m.guest.amqp_port is None
    assert manifest.available(tmp_path) == ["tiny"]


def test_it_refuses_a_path_traversal_name_before_touching_the_disk(tmp_path):
    with pytest.raises(ImageError, match="image name"):
        manifest.load(tmp_path, "../../etc/passwd")


@pytest.mark.parametrize("kernel", ["../outside", "/etc/passwd", "a/../../x"])
def test_it_refuses_files_outside_the_image_folder(tmp_path, kernel):
    _image(tmp_path, kernel=kernel)
    with pytest.raises(ImageError, match="bad file name|leaves"):
        manifest.load(tmp_path, "tiny")


def test_it_refuses_a_symlink_that_leaves_the_folder(tmp_path):
    folder = _image(tmp_path, kernel="link")
    os.symlink("/etc/hostname", folder / "link")
    with pytest.raises(ImageError, match="leaves"):
        manifest.load(tmp_path, "tiny")


def test_it_reports_a_missing_image_and_missing_files(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        manifest.load(tmp_path, "nope")
    folder = _image(tmp_path)
    (folder / "initrd.img").unlink()
    with pytest.raises(ImageError, match="missing file initrd.img"):
        manifest.load(tmp_path, "tiny")


@pytest.mark.parametrize(
    "over",
    [
        {"format": 2},
        {"name": "other"},
        {"guest": {"kind": "windows"}},
        {"append": 5},
        {"guest": {"kind": "tiny", "management_port": 70000}},
        {"recipe_hash": None},
    ],
)
def test_it_rejects_invalid_manifests(tmp_path, over):
    _image(tmp_path, **over)
    with pytest.raises(ImageError):
        manifest.load(tmp_path, "tiny")


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WARREN_IMAGE_DIR", str(tmp_path))
    assert manifest.default_images_root() == tmp_path
    monkeypatch.delenv("WARREN_IMAGE_DIR")
    assert manifest.default_images_root().parts[-3:] == (".cache", "warren", "images")


def test_write_manifest_is_atomic_and_validated(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    data = {
        "name": "tiny",
        "recipe_hash": "sha256:x",
        "kernel": "vmlinuz",
        "append": "",
        "guest": {"kind": "tiny"},
    }
    manifest.write_manifest(folder, data)
    assert json.loads((folder / "image.json").read_text())["format"] == 1
    assert [p.name for p in folder.iterdir()] == ["image.json"]
    with pytest.raises(ImageError):
        manifest.write_manifest(folder, {**data, "guest": {"kind": "bad"}})


def test_write_json_atomic_is_the_shared_one_and_sets_the_mode(tmp_path):
    assert manifest.write_json_atomic is files.write_json_atomic
    manifest.write_json_atomic(tmp_path / "s.json", {"a": 1}, mode=0o600)
    assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o600


def test_an_image_says_whether_it_bakes_its_tls_listeners_in(tmp_path):
    _image(tmp_path, name="baked", guest={"kind": "rabbitmq", "tls": "baked"})
    _image(tmp_path, name="older", guest={"kind": "rabbitmq"})
    _image(tmp_path, name="odd", guest={"kind": "rabbitmq", "tls": "yes"})
    assert manifest.load(tmp_path, "baked").guest.tls_baked
    assert not manifest.load(tmp_path, "older").guest.tls_baked
    with pytest.raises(ImageError, match="guest.tls"):
        manifest.load(tmp_path, "odd")
