"""Fixtures that run the whole system as real processes (see harness.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import drop_vhost, make_vhost, vhost_url
from tests.e2e.harness import System
from vmbackend.images import manifest, tiny
from vmbackend.protocol import versions
from warren.run import dev_tls_environment


@pytest.fixture(scope="session")
def images_root() -> Path:
    """The images root with the tiny image built (the rabbitmq image is built by `make images`)."""
    root = manifest.default_images_root()
    tiny.build(root, progress=lambda message: None)
    return root


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """Each system its own vhost: a stopped daemon's last heartbeats, left in a shared vhost's
    event queue, made the next test's shop place its order on that gone host."""
    vhost = make_vhost("warren-e2e")
    yield vhost_url(vhost)
    drop_vhost(vhost)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path: QEMU's unix sockets live under the daemon's state folder (108-byte limit).
    path = Path(tempfile.mkdtemp(prefix="we2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _system(
    workdir: Path,
    amqp_url: str,
    images_root: Path,
    image: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[System]:
    system = System(workdir, amqp_url, images_root, image=image, extra_env=extra_env)
    system.prepare()
    try:
        yield system
    finally:
        system.stop_all()
        system.drop_broker_users()
        # VMs outlive a stopped daemon by design; the test's VMs must not outlive the test.
        for pid in system.qemu_pids():
            system.kill_pid(pid)


@pytest.fixture
def tiny_system(workdir: Path, amqp_url: str, images_root: Path) -> Iterator[System]:
    """Web, relay, event worker and a host daemon selling the tiny image (not started yet)."""
    yield from _system(workdir, amqp_url, images_root, "tiny")


@pytest.fixture
def rabbitmq_system(workdir: Path, amqp_url: str, images_root: Path) -> Iterator[System]:
    """The same selling the real RabbitMQ image of the plans' version (no image override: the
    create-vm request names the plan's image), with TLS set up as `make run` does (a local root
    and this host's intermediate, warren/run.py); skipped when `make images` has not built it."""
    try:
        manifest.load(images_root, versions.image_for(versions.DEFAULT_VERSION))
    except Exception as exc:  # noqa: BLE001 - any reason the image is unusable
        if os.environ.get("CI"):
            raise  # CI builds the image first (`make test` -> `make images`): missing is a failure
        pytest.skip(f"the rabbitmq image is not built ({exc}); run `make images`")
    tls = dev_tls_environment({"WARREN_HOST_ID": "e2e-tls"}, base=workdir / "tls")
    # The daemon keeps the system's own host id: its broker user is made for that id (harness).
    tls.pop("WARREN_HOST_ID", None)
    yield from _system(workdir, amqp_url, images_root, "", extra_env=tls)
