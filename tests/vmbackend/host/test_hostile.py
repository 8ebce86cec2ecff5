"""Hostile input reaches a real daemon subprocess over the real broker: every bad message is
dead-lettered with its reason and answered with an error; the daemon keeps serving."""

import json

import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vmbackend.daemon_helpers import (
    DaemonProcess,
    clean_broker,
    unique_host_id,
    wait_host,
)
from tests.vmbackend.host.test_registry import BODIES
from vmbackend.client import Client
from vmbackend.protocol import topology

HOSTILE_CREATE = [
    (b"{not json", "not UTF-8 JSON"),
    (b"\x00\xff\xfe garbage", "not UTF-8 JSON"),
    (b"[]", "must be a JSON object"),
    (b'"create-vm"', "must be a JSON object"),
    (b'{"command": "rm -rf /"}', "unknown command"),
    (b'{"command": "create-vm"}', "options.image is required"),
    (
        b'{"command": "create-vm", "options": {"image": "../../etc/passwd"}}',
        "image name must match",
    ),
    (
        b'{"command": "create-vm", "options": {"image": "tiny", "memory-mb": 99999999}}',
        "memory-mb must be between",
    ),
    (
        b'{"command": "create-vm", "options": {"image": "tiny", "vcpus": "8"}}',
        "vcpus must be an integer",
    ),
    (
        b'{"command": "create-vm", "options": {"image": "no-such-image"}}',
        "not available on this host",
    ),
    (b'{"command": "list-vms"}', "must not be sent with routing key create-vm"),
    (
        b'{"command": "create-vm", "options": {"image": "tiny", "vm-id": "pool-0a1b"}}',
        "reserved for the host",
    ),
]


@pytest.fixture
def daemon(amqp_url, tmp_path):
    clean_broker(amqp_url)
    (tmp_path / "images").mkdir()
    proc = DaemonProcess(
        host_id=unique_host_id("hostile"),
        amqp_url=amqp_url,
        state_dir=tmp_path / "state",
        image_dir=tmp_path / "images",
        log_path=tmp_path / "daemon.log",
    )
    yield proc
    proc.stop()
    clean_broker(amqp_url)


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


def test_bad_create_vm_messages_are_dead_lettered_with_a_reason(daemon, amqp_url):
    with Client(amqp_url) as client:
        wait_host(client, daemon.host_id)
        for body, reason in HOSTILE_CREATE:
            reply = client.wait_reply(client.send_raw(body, "create-vm"), timeout=30)
            assert reply["execution-info"]["status"] == "error", body
            assert reason in reply["execution-info"]["reason"], (body, reply)
        # The daemon is still alive and serving.
        assert wait_host(client, daemon.host_id) == []
    assert daemon.proc.poll() is None
    dead = _dead_letters(amqp_url)
    assert [body for body, _ in dead] == [body for body, _ in HOSTILE_CREATE]
    for (_body, headers), (_, reason) in zip(dead, HOSTILE_CREATE, strict=True):
        assert reason in headers[topology.REJECT_HEADER]
        assert headers["x-warren-host-id"] == daemon.host_id
    assert "Traceback" not in daemon.log_text()


def test_bad_host_commands_are_rejected_and_unknown_vms_answered(daemon, amqp_url):
    key = topology.host_key(daemon.host_id)
    with Client(amqp_url) as client:
        wait_host(client, daemon.host_id)
        cases = [
            (b"\xff", key, "not UTF-8 JSON"),
            (b'{"command": "stop-vm", "options": {}}', key, "vm-id is required"),
            (b'{"command": "stop-vm", "options": {"vm-id": "../x"}}', key, "vm-id must match"),
            (b'{"command": "stop-vm", "options": {"vm-id": "a", "kill": 1}}', key, "kill must be"),
            # A create-vm comes on the shared queue or placed on one host, never broadcast.
            (
                b'{"command": "create-vm", "options": {"image": "tiny"}}',
                "stop-vm",
                "host.<host_id>",
            ),
            (b'{"command": "delete-vm", "options": {"vm-id": "a"}}', "stop-vm", "does not match"),
            # A pool VM's id is refused on the host's own key as on the shared queue (issue 20).
            (
                b'{"command": "create-vm", "options": {"image": "tiny", "vm-id": "pool-0a1b"}}',
                key,
                "reserved for the host",
            ),
            (b'{"command": "delete-vm", "options": {"vm-id": "pool-0a1b"}}', key, "reserved"),
            (
                json.dumps({"command": "start-vm", "options": {"vm-id": "nope"}}).encode(),
                key,
                "unknown vm-id",
            ),
        ]
        for body, routing_key, reason in cases:
            reply = client.wait_reply(client.send_raw(body, routing_key), timeout=30)
            assert reply["execution-info"]["status"] == "error", body
            assert reason in reply["execution-info"]["reason"], (body, reply)
        # A broadcast for a VM nobody has: silence, not an error from every host.
        silent = client.collect("stop-vm", {"vm-id": "nobody-has-it"}, wait=1.5)
        assert silent == []
        assert wait_host(client, daemon.host_id) == []
    assert daemon.proc.poll() is None
    reasons = [h[topology.REJECT_HEADER] for _, h in _dead_letters(amqp_url)]
    assert len(reasons) == 8  # every case but the unknown vm-id, which is valid input


def _ready_count(amqp_url, queue):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def test_bodies_that_crash_a_json_parser_are_dead_lettered_and_the_daemon_lives(daemon, amqp_url):
    """A 50 KB body of `[` (RecursionError in json) and a 5000-digit number (ValueError from
    int()) used to escape the parser and kill the daemon."""
    nested = b"[" * 50_000
    huge = (
        b'{"command": "create-vm", "options": {"image": "tiny", "memory-mb": ' + b"9" * 5000 + b"}}"
    )
    key = topology.host_key(daemon.host_id)
    cases = [
        (nested, "create-vm", "nests deeper"),
        (nested, key, "nests deeper"),
        (huge, "create-vm", "longer than 20 digits"),
        (huge, key, "longer than 20 digits"),
    ]
    with Client(amqp_url) as client:
        wait_host(client, daemon.host_id)
        for body, routing_key, reason in cases:
            reply = client.wait_reply(client.send_raw(body, routing_key), timeout=30)
            assert reply["execution-info"]["status"] == "error", routing_key
            assert reason in reply["execution-info"]["reason"], reply
        assert wait_host(client, daemon.host_id) == []
    assert daemon.proc.poll() is None
    dead = _dead_letters(amqp_url)
    assert len(dead) == len(cases)
    for (_body, headers), (_, _, reason) in zip(dead, cases, strict=True):
        assert reason in headers[topology.REJECT_HEADER]
    assert "Traceback" not in daemon.log_text()


@settings(
    max_examples=1,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.too_slow,
    ],
)
@given(batch=st.lists(BODIES, min_size=25, max_size=25))
def test_a_generated_batch_of_garbage_is_settled_and_the_daemon_keeps_serving(
    daemon, amqp_url, batch
):
    key = topology.host_key(daemon.host_id)
    with Client(amqp_url) as client:
        wait_host(client, daemon.host_id)
        sent = [(client.send_raw(body, rk), body) for body in batch for rk in ("create-vm", key)]
        replies = [client.wait_reply(cid, timeout=30) for cid, _ in sent]
        assert wait_host(client, daemon.host_id) == []
    assert daemon.proc.poll() is None
    rejected = [
        r
        for r in replies
        if r["execution-info"]["status"] == "error"
        and r["execution-info"]["reason"] != "unknown vm-id"
    ]
    assert len(_dead_letters(amqp_url)) == len(rejected)
    assert "internal error" not in daemon.log_text()
    # Nothing left for a redelivery loop: stop the daemon (unacked messages would go back to
    # their queues) and both queues are empty.
    daemon.stop()
    assert _ready_count(amqp_url, topology.CREATE_QUEUE) == 0
    assert _ready_count(amqp_url, topology.host_queue(daemon.host_id)) == 0


def _one_delivery(conn, body):
    """A real delivery (basic_get from a private queue) to hand to the daemon's handlers."""
    from vmbackend.host.amqp_io import Delivery

    channel = conn.channel()
    topology.declare_common(channel)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", queue, body, pika.BasicProperties(user_id="guest"))
    for _ in range(50):
        method, props, got = channel.basic_get(queue)
        if method is not None:
            return Delivery(channel, method, props, got), queue
        conn.sleep(0.1)
    raise AssertionError("the message never arrived")


def _settled_and_gone(conn, delivery, queue):
    assert delivery.settled
    delivery.channel.close()  # an unacked message would go back to the queue now
    return conn.channel().queue_declare(queue, passive=True).method.message_count == 0


def _in_process_daemon(amqp_url, tmp_path, image_dir):
    from vmbackend.host import config
    from vmbackend.host.daemon import Daemon

    cfg = config.load(
        env={
            "WARREN_HOST_ID": "guard-1",
            "WARREN_AMQP_URL": amqp_url,
            "WARREN_STATE_DIR": str(tmp_path / "state"),
            "WARREN_IMAGE_DIR": str(image_dir),
            "WARREN_PORT_RANGE": "21000-28999",
            "WARREN_COMMAND_SENDERS": "guest",  # the tests' deliveries come from guest
        }
    )
    return Daemon(cfg)


def test_an_exception_while_handling_one_message_dead_letters_it_with_the_reason(
    amqp_url, tmp_path
):
    """The guard around every handler: a bug hit by one message (here a handler that raises)
    ends in a dead letter with the reason and an ack, not a dead daemon or a requeue loop."""
    clean_broker(amqp_url)
    daemon = _in_process_daemon(amqp_url, tmp_path, tmp_path)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        delivery, queue = _one_delivery(conn, b'{"command": "list-vms"}')

        def broken(_delivery):
            raise KeyError("a bug")

        daemon.guarded(broken, delivery)  # does not raise
        assert _settled_and_gone(conn, delivery, queue)
    finally:
        conn.close()
    dead = _dead_letters(amqp_url)
    assert len(dead) == 1
    assert dead[0][1][topology.REJECT_HEADER] == "internal error: KeyError: 'a bug'"


def test_a_create_vm_whose_state_cannot_be_written_is_dead_lettered_and_forgotten(
    amqp_url, tmp_path, tiny_images_root
):
    """An OSError from the disk (not the broker) must not send the daemon into its reconnect
    loop (the message would come back forever), and no VM may be promised without its file."""
    clean_broker(amqp_url)
    daemon = _in_process_daemon(amqp_url, tmp_path, tiny_images_root)
    vms = tmp_path / "state" / "vms"
    vms.rmdir()
    vms.write_text("a file where the folder should be")  # every state write fails now
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        body = b'{"command": "create-vm", "options": {"image": "tiny", "vm-id": "vm-nodisk"}}'
        delivery, queue = _one_delivery(conn, body)
        daemon.on_create(delivery)  # does not raise
        assert _settled_and_gone(conn, delivery, queue)
    finally:
        conn.close()
    assert daemon.registry.records == {}
    dead = _dead_letters(amqp_url)
    assert len(dead) == 1 and "internal error" in dead[0][1][topology.REJECT_HEADER]
