"""Host commands against a start whose RabbitMQ never answers (issue 10): the boot deadline fails
the start with the node's own log in the reason and keeps the disk; a delete-vm meanwhile wins.

The stand-in for "RabbitMQ cannot read its index after a crash" is the tiny image with a second
initramfs archive appended (the kernel unpacks both; later files win): its management API
look-alike closes every connection without an answer, and a RabbitMQ log holds the crash line.
The guest and its agent come up as usual — exactly the hang of issue 10."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest

from tests.vmbackend.daemon_helpers import events_for, qemu_pids, read_state, vms_of, wait_host

ADMIN = {"username": "warren-hang", "password": "hang-password-1234"}
READY_TIMEOUT = 240
CRASH_LINE = "crasher: {badmatch,#{}} in rabbit_queue_index:scan_queue_segments"


def _images_root(tmp_path, tiny_images_root):
    root = tmp_path / "images"
    (root / "tiny").mkdir(parents=True)
    for item in (tiny_images_root / "tiny").iterdir():  # copies: the manifest refuses links
        shutil.copy2(item, root / "tiny" / item.name)
    return root


def _break_rabbitmq(images, tmp_path):
    """From now on the image's RabbitMQ never answers (the VM's next start hangs)."""
    stage = tmp_path / "overlay"
    api = stage / "usr/local/sbin/api.sh"
    api.parent.mkdir(parents=True)
    api.write_text("#!/bin/sh\nexit 0\n")
    api.chmod(0o755)
    log = stage / "var/log/rabbitmq/rabbit@localhost.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"2026-11-30 starting rabbit\n2026-11-30 {CRASH_LINE}\n")
    names = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=stage, check=True, capture_output=True
    ).stdout
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=stage,
        input=names,
        check=True,
        capture_output=True,
    ).stdout
    initrd = images / "tiny" / "initrd.img"
    original = initrd.read_bytes()
    initrd.write_bytes(original + gzip.compress(archive))


def _ready_then_stopped(daemons, client, vm_id, env):
    daemon = daemons.start(extra_env=env)
    wait_host(client, daemon.host_id)
    client.call("create-vm", {"image": "tiny", "vm-id": vm_id, "memory-mb": 256, "admin": ADMIN})
    ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready", ready
    stopped = client.call("stop-vm", {"vm-id": vm_id, "kill": True}, timeout=60)
    assert stopped["response"]["status"] == "stopped"
    marker = daemon.state_dir / "machines" / vm_id / "customer-data"
    marker.write_bytes(b"keep me")
    return daemon, marker


@pytest.mark.vm
def test_a_start_whose_rabbitmq_never_answers_fails_at_the_deadline_with_its_log(
    daemons, client, tmp_path, tiny_images_root
):
    images = _images_root(tmp_path, tiny_images_root)
    env = {"WARREN_IMAGE_DIR": str(images), "WARREN_BOOT_DEADLINE": "90"}
    daemon, marker = _ready_then_stopped(daemons, client, "vm-hang-1", env)
    _break_rabbitmq(images, tmp_path)

    reply = client.call("start-vm", {"vm-id": "vm-hang-1"}, timeout=300)

    assert reply["execution-info"]["status"] == "error", reply
    assert "RabbitMQ did not answer" in reply["execution-info"]["reason"]
    lost = client.wait_event("vm-hang-1", ("instance.lost",), 30)
    assert CRASH_LINE in lost["reason"]  # the node's own words, for staff
    assert ADMIN["password"] not in lost["reason"]
    assert vms_of(client, daemon.host_id)["vm-hang-1"]["status"] == "lost"
    assert marker.read_bytes() == b"keep me"  # never deleted: it was ready once
    assert qemu_pids(daemon.state_dir) == []
    assert events_for(client, "vm-hang-1", "instance.failed") == []


@pytest.mark.vm
def test_a_delete_during_a_hanging_start_wins_at_once(daemons, client, tmp_path, tiny_images_root):
    images = _images_root(tmp_path, tiny_images_root)
    env = {"WARREN_IMAGE_DIR": str(images), "WARREN_BOOT_DEADLINE": "600"}
    daemon, marker = _ready_then_stopped(daemons, client, "vm-hang-2", env)
    _break_rabbitmq(images, tmp_path)

    before = len(events_for(client, "vm-hang-2", "instance.progress"))
    start = client.send("start-vm", {"vm-id": "vm-hang-2"})
    for _ in range(1200):  # the guest is up and the host waits for RabbitMQ
        progress = events_for(client, "vm-hang-2", "instance.progress")[before:]
        if any(e["stage"] == "rabbitmq_starting" for e in progress):
            break
        client.pump(0.1)
    else:
        raise AssertionError("the start never got to waiting for RabbitMQ")
    assert qemu_pids(daemon.state_dir)

    # Far inside the 600 s deadline: before the fix this was "another command in progress".
    deleted = client.call("delete-vm", {"vm-id": "vm-hang-2"}, timeout=60)

    assert deleted["execution-info"]["status"] == "success", deleted
    assert deleted["response"]["status"] == "deleted"
    started = client.wait_reply(start, 30)
    assert started["execution-info"]["status"] == "error"
    assert "cancelled" in started["execution-info"]["reason"]
    assert qemu_pids(daemon.state_dir) == []
    assert not marker.parent.exists()  # delete means delete: the disk is gone
    client.wait_event("vm-hang-2", ("instance.deleted",), 30)
    assert read_state(daemon.state_dir, "vm-hang-2") is None or (
        read_state(daemon.state_dir, "vm-hang-2")["status"] == "deleted"
    )
