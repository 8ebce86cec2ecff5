"""The Debian RabbitMQ image new orders get (rabbitmq-4.0), built (or reused from the cache) and
booted cold under QEMU.

Slow tier: two real cold boots at once (~100 s each on an idle 2-core host, minutes on a busy
one), shared by every test in this module. A `kill -9` of QEMU and the cold start from the VM's
own disk (every confirmed message back, issue 10) is checked on the customer's path instead, by
the host daemon's self-healing in test_healing_slow.py: one restart for both. The restore path
(saved state) is test_snapshot.py's; here
warren-restore-settings is exercised on a running VM, as QemuMachine.personalize() uses it. The 3.10
recipe (rabbitmq-3.10) shares all of this code; its recipe is checked in test_debian_recipe.py.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from tests.net import free_port
from vmbackend.images import build, manifest
from vmbackend.images.debian import DebianRecipe
from vmbackend.machine import qmp
from vmbackend.machine.qemu import UserNet, VMSpec
from vmbackend.machine.qemu_machine import QemuMachine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

IMAGE = "rabbitmq-4.0"
BOOT_SECONDS = 1500.0  # cold boot to the management API, generous for a loaded CI host
COOKIE_FILE = "/var/lib/rabbitmq/.erlang.cookie"


def status_of(machine: QemuMachine, user: str, password: str, path: str = "api/overview") -> int:
    net = machine.spec.network
    assert isinstance(net, UserNet)
    conn = http.client.HTTPConnection(net.bind_address, net.management_port, timeout=10)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        conn.request("GET", f"/{path}", headers={"Authorization": f"Basic {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def run_in(
    machine: QemuMachine, script: str, *, stdin: bytes | None = None, timeout: float = 120
) -> tuple[int, str]:
    code, out = machine.guest_exec("/bin/sh", ["-c", script], input_data=stdin, timeout=timeout)
    return code, out.decode()


@pytest.fixture(scope="module")
def images_root() -> Path:
    """The default images root with the Debian image built from the current recipe (a cache hit
    when `make images` already built it)."""
    root = manifest.default_images_root()
    build.build(root, DebianRecipe(IMAGE), progress=print)
    return root


@pytest.fixture(scope="module")
def vms(images_root: Path) -> Iterator[list[QemuMachine]]:
    """Two VMs of the image, booted cold at the same time."""
    folder = Path(tempfile.mkdtemp(prefix="wdeb-"))
    machines = []
    for i in range(2):
        vm_id = f"deb{i}{uuid.uuid4().hex[:8]}"
        spec = VMSpec(
            vm_id=vm_id, image=IMAGE, memory_mb=512, vcpus=1, disk_gb=3,
            hostname=f"vm-{vm_id}", admin_user=f"warren-{uuid.uuid4().hex[:6]}",
            admin_password=uuid.uuid4().hex,
            network=UserNet("127.0.0.1", free_port(), free_port()),
        )  # fmt: skip
        machines.append(QemuMachine(spec, folder / vm_id, images_root))
    try:
        for m in machines:
            assert m.launch(allow_restore=False) == "cold"
        deadline = time.monotonic() + BOOT_SECONDS
        for m in machines:
            m.wait_guest_agent(deadline)
        for m in machines:
            m.wait_management(m.management_url(), deadline)
        yield machines
    finally:
        for m in machines:
            m.destroy()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_image_is_complete_and_compressed(images_root: Path):
    image = manifest.load(images_root, IMAGE)
    assert image.distro == "debian"
    assert image.guest.kind == "rabbitmq"
    assert image.recipe_hash == build.recipe_hash(DebianRecipe(IMAGE))
    assert image.disk is not None and image.disk.name.startswith("disk-")
    assert image.initrd is not None and image.initrd.stat().st_size < 20e6  # MODULES=list
    assert image.raw["debian"]["suite"] == "trixie"
    assert image.raw["debian"]["rabbitmq_version"].startswith("4.0.")


def test_own_credentials_work_and_guest_is_refused(vms: list[QemuMachine]):
    for m in vms:
        assert status_of(m, m.spec.admin_user, m.spec.admin_password) == 200
        assert status_of(m, m.spec.admin_user, m.spec.admin_password, "api/whoami") == 200
        assert status_of(m, "guest", "guest") == 401
        assert status_of(m, m.spec.admin_user, "wrong-password") == 401


def test_the_two_vms_have_their_own_credentials_hostnames_and_cookies(vms: list[QemuMachine]):
    a, b = vms
    assert status_of(a, b.spec.admin_user, b.spec.admin_password) == 401
    assert status_of(b, a.spec.admin_user, a.spec.admin_password) == 401
    seen = []
    for m in vms:
        code, out = run_in(m, f"hostname; stat -c '%a %U' {COOKIE_FILE}; cat {COOKIE_FILE}")
        assert code == 0, out
        hostname, cookie_stat, cookie = out.split("\n")[:3]
        assert hostname == m.spec.hostname
        assert cookie_stat == "400 rabbitmq"
        assert len(cookie) >= 16
        seen.append((hostname, cookie))
    assert seen[0][0] != seen[1][0]
    assert seen[0][1] != seen[1][1]


def amqp(
    m: QemuMachine, user: str | None = None, password: str | None = None, attempts: int = 3
) -> pika.BlockingConnection:
    net = m.spec.network
    assert isinstance(net, UserNet)
    params = pika.ConnectionParameters(
        host=net.bind_address, port=net.amqp_port,
        credentials=pika.PlainCredentials(user or m.spec.admin_user, password or m.spec.admin_password),
        socket_timeout=10, blocked_connection_timeout=30, connection_attempts=attempts, retry_delay=2,
    )  # fmt: skip
    return pika.BlockingConnection(params)


def test_amqp_answers_with_the_own_credentials(vms: list[QemuMachine]):
    m = vms[0]
    net = m.spec.network
    assert isinstance(net, UserNet)
    conn = amqp(m)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"hello")
        _, _, body = ch.basic_get(queue, auto_ack=True)
        assert body == b"hello"
    finally:
        conn.close()
    bad = pika.ConnectionParameters(
        host=net.bind_address, port=net.amqp_port, credentials=pika.PlainCredentials("guest", "guest"),
        socket_timeout=10, connection_attempts=1,
    )  # fmt: skip
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(bad)


def root_fs_bytes(m: QemuMachine) -> int:
    code, out = run_in(m, "findmnt -bn -o SIZE /")
    assert code == 0, out
    return int(out.strip())


def test_first_boot_grows_the_file_system_to_the_disk(vms: list[QemuMachine]):
    for m in vms:  # the image's file system is 2 GiB; the VMs' overlays are 3 GiB
        assert root_fs_bytes(m) > 2.5 * 2**30  # (findmnt's SIZE is net of ext4's overhead)


def test_first_boot_leaves_no_credentials_and_no_login(vms: list[QemuMachine]):
    m = vms[0]
    script = (
        "ls /etc/rabbitmq/conf.d | grep -vx 80-warren-tls.conf; "  # the image's TLS listeners
        f"grep -rlF -- {m.spec.admin_password} /etc /var/lib/warren /root 2>/dev/null; "
        "echo ---; passwd -S root | cut -d' ' -f2; systemctl is-enabled getty.target || true; "
        "systemctl is-active warren-firstboot.service rabbitmq-server.service"
    )
    code, out = run_in(m, script)
    before, _, after = out.partition("---\n")
    assert before == ""  # no admin file left in conf.d, the password nowhere under /etc
    assert after.split() == ["L", "masked", "active", "active"]


def test_rabbitmq_data_is_written_synchronously(vms: list[QemuMachine]):
    # CQv2 classic queues and streams confirm once a message is in the page cache: the flag
    # (inherited by everything RabbitMQ creates) makes it reach the virtual disk first.
    code, out = run_in(
        vms[0],
        "lsattr -d /var/lib/rabbitmq/mnesia /var/lib/rabbitmq/mnesia/rabbit@localhost "
        "| cut -d' ' -f1",
    )
    assert code == 0, out
    assert all("S" in flags for flags in out.split()), out


def test_restore_settings_rotates_the_cookie_of_the_running_node(vms: list[QemuMachine]):
    m = vms[1]
    cookie = "ROTATED" + uuid.uuid4().hex.upper()
    request = f'{{"hostname": "renamed-{m.spec.vm_id}", "erlang_cookie": "{cookie}"}}'.encode()
    code, out = m.guest_exec(
        "/usr/local/sbin/warren-restore-settings", input_data=request, timeout=60
    )
    assert code == 0, out
    deadline = time.monotonic() + 300
    state = ""
    while time.monotonic() < deadline:
        state = run_in(m, "cat /run/warren/cookie-rotation")[1].strip()
        if state != "rotating":
            break
        time.sleep(1)
    assert state == "done"
    # A bare Erlang node authenticates with the new cookie file (what rabbitmqctl does, in a
    # fraction of its time): it gets an answer only if the running node switched too.
    ask = (
        "cd /var/lib/rabbitmq && runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq erl -sname check-$$ "
        "-hidden -noshell -noinput -eval "
        "'io:format(\"~p~n\", [rpc:call(rabbit@localhost, erlang, get_cookie, [], 30000)]), halt().'"
    )
    code, out = run_in(m, f"hostname; cat {COOKIE_FILE}; echo; {ask}", timeout=300)
    assert code == 0, out
    assert out.split("\n")[:3] == [f"renamed-{m.spec.vm_id}", cookie, f"'{cookie}'"]
    assert status_of(m, m.spec.admin_user, m.spec.admin_password) == 200


def test_restore_settings_refuses_bad_input(vms: list[QemuMachine]):
    m = vms[0]
    before = run_in(m, f"hostname; cat {COOKIE_FILE}")[1]
    for request in (
        b"not json",
        b'{"hostname": "bad name; reboot"}',
        b'{"erlang_cookie": "short"}',
        b"{}",
    ):
        code, _ = m.guest_exec(
            "/usr/local/sbin/warren-restore-settings", input_data=request, timeout=60
        )
        assert code == 2, request
    assert run_in(m, f"hostname; cat {COOKIE_FILE}")[1] == before


def test_restore_settings_grows_the_file_system_after_a_disk_resize(vms: list[QemuMachine]):
    m = vms[0]
    before = root_fs_bytes(m)
    qmp.command(m.paths.qmp, "block_resize", device="disk0", size=4 * 2**30)
    request = f'{{"hostname": "{m.spec.hostname}"}}'.encode()
    code, out = m.guest_exec(
        "/usr/local/sbin/warren-restore-settings", input_data=request, timeout=60
    )
    assert code == 0, out
    deadline = time.monotonic() + 120
    while root_fs_bytes(m) < before + 0.9 * 2**30:  # 3 GiB -> 4 GiB
        assert time.monotonic() < deadline, "the root file system did not grow"
        time.sleep(1)
