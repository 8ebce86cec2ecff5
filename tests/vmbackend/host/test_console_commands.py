"""The customer's console on the host (issue 11), through a real daemon, the real broker and the
tiny image under QEMU: password rotation, resize, restart with a request id, their refusals, the
request ids that make a repeat change nothing, the runtime in instance.ready, and hostile bodies
of the new commands dead-lettered.

The shop sends these commands without reply_to (it learns the outcome from events), so most
steps here publish that way too and wait for instance.command_done / instance.command_failed.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vmbackend.daemon_helpers import (
    DaemonProcess,
    basic_auth_status,
    clean_broker,
    events_for,
    qemu_pids,
    read_state,
    unique_host_id,
    vms_of,
    wait_host,
)
from vmbackend.client import Client
from vmbackend.machine import qemu, qmp
from vmbackend.protocol import messages, topology

ADMIN = {"username": "warren-console", "password": "console-password-1234"}
READY_TIMEOUT = 240
COMMAND_TIMEOUT = 300
OUTCOMES = ("instance.command_done", "instance.command_failed")


def _ready_vm(daemons, client, vm_id, *, extra_env=None):
    daemon = daemons.start(extra_env=extra_env)
    wait_host(client, daemon.host_id)
    client.call("create-vm", {"image": "tiny", "vm-id": vm_id, "memory-mb": 256, "admin": ADMIN})
    ready = client.wait_event(vm_id, ("instance.ready", "instance.failed"), READY_TIMEOUT)
    assert ready["type"] == "instance.ready", ready
    return daemon, ready


def _publish(client, daemon, body: dict) -> None:
    """As the shop's relay does: to the VM's host only, persistent, no reply_to."""
    client.channel.basic_publish(
        topology.COMMANDS_EXCHANGE,
        topology.host_key(daemon.host_id),
        messages.encode(body),
        pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=str(uuid.uuid4()),
            user_id="guest",  # the daemons under test obey guest (WARREN_COMMAND_SENDERS)
        ),
    )


def _outcomes(client, vm_id, request_id):
    return [
        e
        for e in client.events
        if e.get("instance_id") == vm_id
        and e.get("type") in OUTCOMES
        and e.get("request_id") == request_id
    ]


def _outcome(client, vm_id, request_id, count=1, timeout=COMMAND_TIMEOUT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = _outcomes(client, vm_id, request_id)
        if len(found) >= count:
            return found[count - 1]
        client.pump(0.2)
    raise AssertionError(
        f"no outcome #{count} for {request_id}: {[e['type'] for e in events_for(client, vm_id)]}"
    )


def _secrets_absent(daemon, client, *secrets):
    text = daemon.log_text() + json.dumps(client.events)
    for secret in secrets:
        assert secret not in text


@pytest.mark.vm
def test_a_rotation_sets_the_new_password_refuses_the_old_and_is_done_once(daemons, client):
    daemon, ready = _ready_vm(daemons, client, "vm-rotate")
    url = ready["management_url"]
    # What runs, read from the management API right after the VM became ready.
    assert ready["runtime"] == {
        "rabbitmq_version": "0.0.0-tiny",
        "erlang_version": "none",
        "node": f"rabbit@{read_state(daemon.state_dir, 'vm-rotate')['hostname']}",
    }
    new_password = "rotated-" + uuid.uuid4().hex
    request_id = str(uuid.uuid4())
    rotation = messages.set_admin_password_body(
        vm_id="vm-rotate", request_id=request_id, username=ADMIN["username"], password=new_password
    )

    _publish(client, daemon, rotation)
    done = _outcome(client, "vm-rotate", request_id)

    assert done["type"] == "instance.command_done", done
    assert done["command"] == "set-admin-password"
    assert basic_auth_status(url, ADMIN["username"], ADMIN["password"]) == 401
    assert basic_auth_status(url, ADMIN["username"], new_password) == 200
    state = read_state(daemon.state_dir, "vm-rotate")
    assert state["admin_password"] == new_password
    secret = daemon.state_dir / "machines" / "vm-rotate" / "fw_cfg" / "admin_password"
    assert secret.read_text() == new_password

    # The same message again (a redelivery, a repeated click): the same outcome, nothing done.
    _publish(client, daemon, rotation)
    again = _outcome(client, "vm-rotate", request_id, count=2)
    assert {k: again[k] for k in ("type", "command", "request_id")} == {
        k: done[k] for k in ("type", "command", "request_id")
    }
    assert again["seq"] > done["seq"]
    assert daemon.log_text().count("admin password set ") == 1
    assert "repeated request" in daemon.log_text()

    # A restart with a request id: the VM comes back with the NEW password (the host kept it).
    restart_id = str(uuid.uuid4())
    _publish(client, daemon, messages.restart_vm_body(vm_id="vm-rotate", request_id=restart_id))
    restarted = _outcome(client, "vm-rotate", restart_id)
    assert restarted["type"] == "instance.command_done", restarted
    assert restarted["command"] == "restart-vm"
    types = [e["type"] for e in events_for(client, "vm-rotate")]
    assert types[types.index("instance.stopped") :][-1] == "instance.command_done"
    assert "instance.started" in types and types.count("instance.ready") == 2
    assert basic_auth_status(url, ADMIN["username"], new_password) == 200
    assert basic_auth_status(url, ADMIN["username"], ADMIN["password"]) == 401

    # A VM that is down: refused with a reason the shop can show, nothing changed.
    client.call("stop-vm", {"vm-id": "vm-rotate"}, timeout=60)
    down_id = str(uuid.uuid4())
    third = "third-password-" + uuid.uuid4().hex
    _publish(
        client,
        daemon,
        messages.set_admin_password_body(
            vm_id="vm-rotate", request_id=down_id, username=ADMIN["username"], password=third
        ),
    )
    failed = _outcome(client, "vm-rotate", down_id)
    assert failed["type"] == "instance.command_failed"
    assert failed["reason"] == "the VM is stopped; try again when it is running"
    assert read_state(daemon.state_dir, "vm-rotate")["admin_password"] == new_password
    assert daemon.proc.poll() is None
    _secrets_absent(daemon, client, ADMIN["password"], new_password, third)


@pytest.mark.vm
def test_a_resize_restarts_with_the_new_sizes_and_refuses_what_cannot_be(daemons, client):
    daemon, _ready = _ready_vm(
        daemons, client, "vm-resize", extra_env={"WARREN_HOST_MEMORY_MB": "1024"}
    )
    before = qemu_pids(daemon.state_dir)
    # The tiny image boots without a disk; a qcow2 where the VM's disk lives stands for it (the
    # debian image's overlay), so the host's grow step runs on a real file.
    disk = daemon.state_dir / "machines" / "vm-resize" / "disk.qcow2"
    subprocess.run(
        [qemu.QEMU_IMG, "create", "-q", "-f", "qcow2", str(disk), "4G"], check=True, timeout=60
    )
    request_id = str(uuid.uuid4())
    resize = messages.resize_vm_body(
        vm_id="vm-resize", request_id=request_id, memory_mb=512, vcpus=2, disk_gb=5
    )

    _publish(client, daemon, resize)
    done = _outcome(client, "vm-resize", request_id)

    assert done["type"] == "instance.command_done", done
    assert (done["memory_mb"], done["vcpus"], done["disk_gb"]) == (512, 2, 5)
    types = [e["type"] for e in events_for(client, "vm-resize")]
    after_ready = types[types.index("instance.ready") + 1 :]
    assert after_ready[0] == "instance.stopped" and after_ready[1] == "instance.started"
    assert after_ready[-2:] == ["instance.ready", "instance.command_done"]
    pids = qemu_pids(daemon.state_dir)
    assert len(pids) == 1 and pids != before
    with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
        args = f.read().split(b"\0")
    assert args[args.index(b"-m") + 1] == b"512M" and args[args.index(b"-smp") + 1] == b"2"
    qmp_sock = daemon.state_dir / "machines" / "vm-resize" / "qmp.sock"
    memory = qmp.command(qmp_sock, "query-memory-size-summary", timeout=10)
    assert memory["base-memory"] == 512 * 1024**2
    state = read_state(daemon.state_dir, "vm-resize")
    assert (state["memory_mb"], state["vcpus"], state["disk_gb"], state["status"]) == (
        512,
        2,
        5,
        "ready",
    )
    assert vms_of(client, daemon.host_id)["vm-resize"]["memory-mb"] == 512
    assert qemu.base_virtual_size(disk) == 5 * 1024**3

    # Repeated: the same outcome, no second restart.
    started = len(events_for(client, "vm-resize", "instance.started"))
    _publish(client, daemon, resize)
    again = _outcome(client, "vm-resize", request_id, count=2)
    assert (again["type"], again["memory_mb"], again["vcpus"], again["disk_gb"]) == (
        "instance.command_done",
        512,
        2,
        5,
    )
    client.pump(1.0)
    assert len(events_for(client, "vm-resize", "instance.started")) == started
    assert qemu_pids(daemon.state_dir) == pids

    # A smaller disk and memory past the host's budget are refused; the VM stays as it is.
    for options, reason in (
        (
            {"memory_mb": 512, "vcpus": 2, "disk_gb": 4},
            "the disk only grows: the VM has 5 GB, 4 GB were asked",
        ),
        (
            {"memory_mb": 2048, "vcpus": 2, "disk_gb": 5},
            "2048 MiB of memory does not fit this host (at most 1024 MiB of memory is free for this VM)",
        ),
    ):
        refused_id = str(uuid.uuid4())
        _publish(
            client,
            daemon,
            messages.resize_vm_body(vm_id="vm-resize", request_id=refused_id, **options),
        )
        refused = _outcome(client, "vm-resize", refused_id)
        assert (refused["type"], refused["reason"]) == ("instance.command_failed", reason)
    assert qemu_pids(daemon.state_dir) == pids
    assert read_state(daemon.state_dir, "vm-resize")["memory_mb"] == 512
    assert qemu.base_virtual_size(disk) == 5 * 1024**3

    # The same request twice at once (the second arrives while the first runs): one restart,
    # one outcome; the second is left to the first.
    double_id = str(uuid.uuid4())
    double = messages.resize_vm_body(
        vm_id="vm-resize", request_id=double_id, memory_mb=384, vcpus=1, disk_gb=5
    )
    started = len(events_for(client, "vm-resize", "instance.started"))
    _publish(client, daemon, double)
    _publish(client, daemon, double)
    done = _outcome(client, "vm-resize", double_id)
    assert (done["type"], done["memory_mb"], done["vcpus"]) == ("instance.command_done", 384, 1)
    client.pump(2.0)
    assert len(_outcomes(client, "vm-resize", double_id)) == 1
    assert len(events_for(client, "vm-resize", "instance.started")) == started + 1
    assert f"request_id={double_id} state=running" in daemon.log_text()

    # With reply_to (an operator's CLI) the reply carries the outcome too.
    reply = client.call(
        "resize-vm",
        {"vm-id": "vm-resize", "memory-mb": 384, "vcpus": 1, "disk-gb": 5},
        routing_key=topology.host_key(daemon.host_id),
        timeout=60,
    )
    assert reply["response"] == {
        "vm-id": "vm-resize",
        "status": "ready",
        "memory-mb": 384,
        "vcpus": 1,
        "disk-gb": 5,
    }
    assert daemon.proc.poll() is None


# -- hostile bodies of the console's commands -----------------------------------------------------


@pytest.fixture
def bare_daemon(amqp_url, tmp_path):
    clean_broker(amqp_url)
    (tmp_path / "images").mkdir()
    proc = DaemonProcess(
        host_id=unique_host_id("console"),
        amqp_url=amqp_url,
        state_dir=tmp_path / "state",
        image_dir=tmp_path / "images",
        log_path=tmp_path / "daemon.log",
    )
    yield proc
    proc.stop()
    clean_broker(amqp_url)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["vm-1", "5f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f", "\x00", 512, 4]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["username", "password"]) | st.text(max_size=6), inner, max_size=3
        )
    ),
    max_leaves=8,
)
_CONSOLE_BODIES = st.builds(
    lambda command, options: json.dumps(
        {"version": 1, "command": command, "options": options}
    ).encode("utf-8", "surrogatepass"),
    st.sampled_from(["set-admin-password", "resize-vm", "restart-vm"]),
    st.dictionaries(
        st.sampled_from(["vm-id", "request-id", "admin", "memory-mb", "vcpus", "disk-gb"]),
        _JSON,
        max_size=6,
    ),
)


def _dead_letters(amqp_url):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        found = []
        while True:
            method, props, body = channel.basic_get(topology.DEAD_QUEUE, auto_ack=True)
            if method is None:
                return found
            found.append((body, props.headers or {}))
    finally:
        conn.close()


@settings(
    max_examples=1,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(_CONSOLE_BODIES, min_size=30, max_size=30))
def test_hostile_console_commands_are_dead_lettered_with_a_reason(bare_daemon, amqp_url, batch):
    key = topology.host_key(bare_daemon.host_id)
    batch = [
        *batch,
        b'{"command": "resize-vm", "options": {"vm-id": "vm-1", "memory-mb": 512, "vcpus": 1}}',
        b'{"command": "set-admin-password", "options": {"vm-id": "vm-1", "admin": {"username":'
        b' "warren-1", "password": "short"}}}',
    ]
    with Client(amqp_url) as client:
        wait_host(client, bare_daemon.host_id)
        sent = [client.send_raw(body, key) for body in batch]
        # The console's commands are never broadcast: on their own name they are refused too.
        sent.append(
            client.send_raw(
                messages.encode(
                    messages.resize_vm_body(
                        vm_id="vm-1", request_id=uuid.uuid4(), memory_mb=512, vcpus=1, disk_gb=4
                    )
                ),
                "restart-vm",
            )
        )
        replies = [client.wait_reply(cid, timeout=30) for cid in sent]
    assert bare_daemon.proc.poll() is None
    errors = [
        r["execution-info"]["reason"] for r in replies if r["execution-info"]["status"] == "error"
    ]
    rejected = [reason for reason in errors if reason != "unknown vm-id"]
    assert "options.disk-gb is required" in rejected
    assert f"options.admin.password must be {messages.PASSWORD_RULE}" in rejected
    assert "resize-vm goes to routing key host.<host_id> of the VM's host" in rejected
    dead = _dead_letters(amqp_url)
    assert len(dead) == len(rejected)
    assert sorted(h[topology.REJECT_HEADER] for _, h in dead) == sorted(rejected)
    assert "internal error" not in bare_daemon.log_text()
    assert "Traceback" not in bare_daemon.log_text()
