"""Fixtures for the VM layer: the tiny test image and Machines that clean up after themselves."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.net import free_port
from tests.qemu_procs import qemu_pids
from vmbackend.images import manifest, tiny


@pytest.fixture(scope="session")
def tiny_images_root() -> Path:
    """The images root holding a built `tiny` image (built once, then reused from the cache)."""
    root = manifest.default_images_root()
    tiny.build(root, progress=lambda message: None)
    return root


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp folder (pytest's tmp_path can be long; sockets live in VM folders). Any QEMU
    still running in it at the end is killed: a test that failed half-way (e.g. before it
    reached its own cleanup, while its boot thread went on) must not leave a VM behind."""
    path = Path(tempfile.mkdtemp(prefix="wvm-"))
    yield path
    for pid in qemu_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine_factory(tiny_images_root: Path, short_tmp: Path) -> Iterator[Callable[..., object]]:
    """make(image="tiny", **spec_overrides) -> an unlaunched QemuMachine with free loopback ports,
    in its own folder; every QemuMachine made is destroyed at teardown."""
    from vmbackend.machine.qemu import UserNet, VMSpec
    from vmbackend.machine.qemu_machine import QemuMachine

    made: list[QemuMachine] = []

    def make(
        image: str = "tiny", images_root: Path | None = None, accel: str = "auto", **over: object
    ) -> QemuMachine:
        vm_id = over.pop("vm_id", None) or uuid.uuid4().hex[:12]
        fields: dict[str, object] = dict(
            vm_id=vm_id,
            image=image,
            memory_mb=256,
            vcpus=1,
            disk_gb=1,
            hostname=f"vm-{vm_id[:8]}",
            admin_user=f"warren-{vm_id[:6]}",
            admin_password=uuid.uuid4().hex,
            network=UserNet("127.0.0.1", free_port(), free_port()),
        )
        fields.update(over)
        machine = QemuMachine(
            VMSpec(**fields), short_tmp / vm_id, images_root or tiny_images_root, accel=accel
        )
        made.append(machine)
        return machine

    yield make
    for machine in made:
        machine.destroy()


@pytest.fixture
def daemons(tmp_path: Path, amqp_url: str, tiny_images_root: Path) -> Iterator[object]:
    """A pool of real `python -m vmbackend daemon` processes on the session's vhost, with
    the shared queues purged before and everything they started cleaned up after."""
    from tests.vmbackend.daemon_helpers import Daemons, clean_broker

    clean_broker(amqp_url)
    pool = Daemons(tmp_path, amqp_url, tiny_images_root)
    yield pool
    pool.cleanup()


@pytest.fixture
def client(amqp_url: str) -> Iterator[object]:
    """A request/response client that also watches every event."""
    from vmbackend.client import Client

    with Client(amqp_url) as c:
        c.watch_events("#")
        yield c
