"""One real RabbitMQ VM through the host daemon, for what a customer's server lives through (slow
tier): create-vm → ready → the host's instance.metrics samples of the real node (memory, disk,
uptime, connections, queue depth) → the shop's queue-depth alarm on them, firing while the test
publishes and clearing while it consumes → confirmed messages → `kill -9` of its QEMU → the
host's own restart from the VM's disk (self-healing) → every message back → the customer's
console: password rotation (old AMQP connections closed, old password refused) → resize (memory,
vCPUs and disk up through a restart, the messages still there) → delete-vm.

A real-image boot costs minutes under TCG on a loaded CI host, so one VM serves every check, in
the order of the tests below (each test continues from the previous one's VM, as in
test_debian_image.py). It is the customer's path: the image new orders get, 512 MiB, so
create-vm restores it from the image's saved state, and the heal is a cold boot of that VM's own
disk (the overlay on the saved disk). The first-boot (cold, fw_cfg) checks are
test_debian_image.py's; the restore through Machine is test_snapshot.py's.

The seconds from the kill to a working management URL are printed (`-s` shows them); speed is
not asserted.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from orders.messaging.host_events import handle_message
from orders.models import Alarm, AlarmEvent, Instance, Order
from orders.monitoring.alarms import add_alarm
from store.models import Plan
from tests.orders.conftest import provision
from tests.vmbackend.daemon_helpers import (
    DaemonProcess,
    Daemons,
    basic_auth_status,
    clean_broker,
    events_for,
    qemu_pids,
    read_state,
    wait_host,
)
from vmbackend.client import Client
from vmbackend.images import manifest
from vmbackend.protocol import messages, topology, versions

# Every test of the module is marked for the shop's database, although only the alarm test uses
# it: pytest-django runs transactional tests before the others, so one test marked alone would
# run before the VM exists. A flush of the (empty) test database after each test is the price.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600), pytest.mark.django_db(transaction=True)]

IMAGE = os.environ.get("WARREN_HEAL_TEST_IMAGE", versions.image_for(versions.DEFAULT_VERSION))
VM_ID = str(uuid.uuid4())  # a shop instance id: the host samples metrics of those only
METRICS_INTERVAL = 2  # s, this daemon's WARREN_METRICS_INTERVAL (30 s in production)
BOOT_SECONDS = 1500  # a cold boot of the real image under TCG on a loaded host (656 s seen)
QUEUES = {"heal-classic": "classic", "heal-quorum": "quorum", "heal-stream": "stream"}
MESSAGES = 300  # per queue, each confirmed by the broker before the kill
OUTCOMES = ("instance.command_done", "instance.command_failed")


@dataclass
class RealVM:
    """The daemon, the client watching its events, and what the requester of the VM knows."""

    daemon: DaemonProcess
    client: Client
    password: str
    ready: dict[str, Any] = field(default_factory=dict)
    sent: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return str(self.ready["admin_username"])

    def status(self, user: str | None = None, password: str | None = None) -> int:
        return basic_auth_status(
            self.ready["management_url"], user or self.user, password or self.password
        )

    def amqp(
        self, password: str | None = None, attempts: int = 3, heartbeat: int | None = None
    ) -> pika.BlockingConnection:
        url = self.ready["amqp_url"]
        host_port = url.split("@", 1)[1].strip("/")
        host, port = host_port.rsplit(":", 1)
        params = pika.ConnectionParameters(
            host=host, port=int(port),
            credentials=pika.PlainCredentials(self.user, password or self.password),
            socket_timeout=10, blocked_connection_timeout=30, connection_attempts=attempts,
            retry_delay=2, heartbeat=heartbeat,
        )  # fmt: skip
        return pika.BlockingConnection(params)

    def wait(self, types: tuple[str, ...], after: int, seconds: float) -> dict[str, Any]:
        """The first event of `types` for the VM with a seq above `after` (pumping the client)."""
        end = time.monotonic() + seconds
        while True:
            for event in events_for(self.client, VM_ID):
                if event["type"] in types and event["seq"] > after:
                    return event
            assert time.monotonic() < end, f"no {types} after seq {after} within {seconds} s"
            self.client.pump(0.5)

    def last_seq(self) -> int:
        return max((e.get("seq", 0) for e in events_for(self.client, VM_ID)), default=0)

    def samples(self) -> list[dict[str, Any]]:
        """The host's instance.metrics samples of the VM so far, in arrival order."""
        return events_for(self.client, VM_ID, messages.INSTANCE_METRICS)

    def sample_where(
        self, check: Callable[[dict[str, Any]], bool], seconds: float, what: str
    ) -> dict[str, Any]:
        """The first sample from now on for which `check` holds (pumping the client)."""
        seen = len(self.samples())
        end = time.monotonic() + seconds
        while True:
            new = self.samples()[seen:]
            seen += len(new)
            for sample in new:
                if check(sample):
                    return sample
            assert time.monotonic() < end, f"no sample with {what} within {seconds} s"
            self.client.pump(0.5)


def _ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["execution-info"]["status"] == "success", reply
    response: dict[str, Any] = reply["response"]
    return response


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[RealVM]:
    root = manifest.default_images_root()
    try:
        manifest.load(root, IMAGE)
    except manifest.ImageError as exc:
        pytest.fail(f"the real image {IMAGE!r} is not built here ({exc}); `make images` builds it")
    clean_broker(amqp_url)
    pool = Daemons(tmp_path_factory.mktemp("heal"), amqp_url, root)
    try:
        daemon = pool.start(
            extra_env={
                "WARREN_BOOT_DEADLINE": str(BOOT_SECONDS),
                "WARREN_METRICS_INTERVAL": str(METRICS_INTERVAL),
            }
        )
        with Client(amqp_url) as client:
            client.watch_events("#")
            wait_host(client, daemon.host_id)
            created = _ok(
                client.call("create-vm", {"image": IMAGE, "vm-id": VM_ID, "memory-mb": 512})
            )
            yield RealVM(daemon, client, created["admin-password"])
    finally:
        pool.cleanup()


def test_create_vm_ends_ready_with_working_urls_and_only_the_own_credentials(vm: RealVM):
    vm.ready = vm.wait(("instance.ready", "instance.failed"), 0, BOOT_SECONDS)
    assert vm.ready["type"] == "instance.ready", vm.ready
    assert vm.ready["boot"] in ("cold", "restore")
    assert vm.password not in str(vm.ready)
    assert vm.status() == 200
    assert vm.status("guest", "guest") == 401
    assert vm.status(vm.user, "wrong-" + vm.password) == 401
    conn = vm.amqp()
    try:
        conn.channel().queue_declare("", exclusive=True)
    finally:
        conn.close()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        vm.amqp("guest", attempts=1)


# -- issue 12: the host's metrics samples of the real node, and the shop's alarms on them --------

FIXTURES = Path(__file__).parents[1] / "fixtures"
NODE_FIELDS = ("mem_used", "mem_limit", "disk_free", "disk_free_limit", "uptime_s")
HELD_OPEN = 3  # AMQP connections the test holds open while it reads the samples


def _shape(data: Any) -> Any:
    """The JSON types of an answer's key paths (a list: the shape of its first item)."""
    if isinstance(data, dict):
        return {key: _shape(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_shape(data[0])] if data else []
    return (
        "number"
        if isinstance(data, int | float) and not isinstance(data, bool)
        else type(data).__name__
    )


def _within(trimmed: Any, real: Any, path: str = "") -> list[str]:
    """The key paths of `trimmed`'s shape that `real`'s shape lacks or types otherwise."""
    if isinstance(trimmed, dict):
        if not isinstance(real, dict):
            return [path or "/"]
        return [
            miss
            for key, value in trimmed.items()
            for miss in (
                _within(value, real[key], f"{path}/{key}") if key in real else [f"{path}/{key}"]
            )
        ]
    if isinstance(trimmed, list):
        return [] if not trimmed or not real else _within(trimmed[0], real[0], path + "/0")
    return [] if trimmed == real else [f"{path}: {real} not {trimmed}"]


def _compare(saved: Path, name: str, answer: Any) -> None:
    """Save a real answer in `saved` and check it has every key and type of its trimmed copy in
    tests/vmbackend/fixtures (what the parser's unit tests read)."""
    (saved / f"rabbitmq-{name}.json").write_text(json.dumps(answer, indent=1, sort_keys=True))
    trimmed = json.loads((FIXTURES / f"rabbitmq-{name}.json").read_text())
    missing = _within(_shape(trimmed), _shape(answer))
    assert missing == [], f"the real {name} answer (in {saved}) differs from its fixture: {missing}"


def test_the_hosts_samples_carry_the_real_nodes_memory_disk_uptime_and_connections(
    vm: RealVM, tmp_path_factory: pytest.TempPathFactory
):
    """Every METRICS_INTERVAL seconds the host reads the VM's management API (api/overview, then
    api/nodes/<node>): its real numbers arrive as instance.metrics, connections counted while the
    test holds some open. The real answers are saved for refreshing the parser's fixtures (in the
    test's temp folder) and must still have every key and type the fixtures rely on."""
    assert vm.ready, "needs the ready VM of the test before"
    first = vm.sample_where(
        lambda s: s["reachable"] and all(name in s for name in NODE_FIELDS),
        120,  # a node that just started emits its stats a few seconds later
        "the node's numbers",
    )
    assert first["host_id"] == vm.daemon.host_id
    assert 0 < first["mem_used"] < first["mem_limit"], first
    assert 0 < first["disk_free_limit"] < first["disk_free"], first
    assert first["uptime_s"] > 0 and first["mem_alarm"] is False and first["disk_alarm"] is False
    assert first["rss_bytes"] > 100 * 2**20 and first["cpu_percent"] >= 0  # QEMU, from /proc
    assert messages.parse_event(messages.encode(first)).metrics is not None  # the shop takes it

    held = [vm.amqp() for _ in range(HELD_OPEN)]
    try:
        for conn in held:
            conn.channel()
        counted = vm.sample_where(
            lambda s: s.get("connections") == HELD_OPEN and s.get("channels") == HELD_OPEN,
            120,  # RabbitMQ's stats lag a few seconds
            f"{HELD_OPEN} connections and channels",
        )
        assert counted["reachable"] and counted["uptime_s"] >= first["uptime_s"]
        overview = _api(vm, "api/overview")
        node = _api(vm, "api/nodes/" + urllib.parse.quote(overview["node"], safe=""))
    finally:
        for conn in held:
            conn.close()
    vm.sample_where(lambda s: s.get("connections") == 0, 120, "the connections closed")

    saved = tmp_path_factory.mktemp("real-api")
    _compare(saved, "overview-idle", overview)  # no queue: RabbitMQ answers queue_totals {}
    _compare(saved, "node", node)


QUEUE = "metrics-depth"
THRESHOLD = 100  # the customer's queue-depth alarm: above 100 messages queued
PUBLISHED = 150  # above the threshold; the clear needs 90 % of it or less
ALARM_SECONDS = 3 * METRICS_INTERVAL  # how long the condition must hold: three samples


def _ready_instance(vm: RealVM) -> Instance:
    """The shop's side of the VM: a paid order whose instance is ready on the test's host, as
    the shop has it once instance.ready is applied (instance id = the VM's id)."""
    plan = Plan.objects.create(
        slug="slow-metrics", name="Slow metrics", memory_mb=512, vcpus=1, disk_gb=4,
        max_connections=100, max_queues=200, monthly_price_cents=900, currency="usd",
    )  # fmt: skip
    user = get_user_model().objects.create_user("mira", "mira@example.com", "pw-mira-123456")
    order = Order.objects.create(user=user, plan=plan)
    made = provision(order)
    assert made is not None
    Instance.objects.filter(pk=made.pk).update(
        public_id=uuid.UUID(VM_ID),
        status=Instance.Status.READY,
        host_id=vm.daemon.host_id,
        ready_at=timezone.now(),
    )
    return Instance.objects.get(pk=made.pk)


def test_a_queue_depth_alarm_fires_while_publishing_to_the_real_node_and_clears_while_consuming(
    vm: RealVM, mailoutbox: list[Any], tmp_path_factory: pytest.TempPathFactory
):
    """The host's real samples through the event worker's own step (orders.messaging.host_events
    .handle_message: the contract's parser, orders.monitoring.metrics.apply_metrics, the alarms): the test
    publishes until the customer's queue-depth alarm fires, checks the samples count exactly
    what it published, then consumes until the alarm clears. One email each way.

    The alarm's duration is three samples instead of the customer's whole minutes (the minimum
    the order page allows is 1 min: two more minutes of a real VM per run); the durations are
    the fast tier's (tests/orders/monitoring/test_alarms.py, tests/e2e/test_metrics_flow.py)."""
    assert vm.ready, "needs the ready VM of the tests before"
    instance = _ready_instance(vm)
    alarm = add_alarm(
        instance=instance, kind=Alarm.Kind.QUEUE_DEPTH, threshold=THRESHOLD, minutes=1
    )
    Alarm.objects.filter(pk=alarm.pk).update(duration_s=ALARM_SECONDS)
    fed = len(vm.samples())  # the samples before this test belong to no shop instance yet
    results: list[str] = []

    def feed() -> None:
        nonlocal fed
        for sample in vm.samples()[fed:]:
            results.append(handle_message(messages.encode(sample)))
            fed += 1
        alarm.refresh_from_db()

    conn = vm.amqp()
    try:
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True)
        ch.confirm_delivery()
        published = 0
        end = time.monotonic() + 300
        while alarm.status == Alarm.State.OK:  # publish until the alarm fires
            assert time.monotonic() < end, f"no alarm with {published} messages published"
            for _ in range(min(25, PUBLISHED - published)):
                ch.basic_publish("", QUEUE, f"m-{published}".encode(), mandatory=True)
                published += 1
            vm.client.pump(0.5)
            conn.process_data_events()
            feed()
        fired = instance.metric_samples.get(at=alarm.fired_at)  # the sample that fired it
        assert fired.messages_queued is not None and fired.messages_queued > THRESHOLD
        exact = vm.sample_where(
            lambda s: s.get("messages_ready") == PUBLISHED, 120, f"{PUBLISHED} messages ready"
        )
        assert exact["messages_unacked"] == 0 and exact["queues"] == 1, exact
        _compare(tmp_path_factory.mktemp("real-api"), "overview", _api(vm, "api/overview"))
        feed()

        consumed = 0
        end = time.monotonic() + 300
        while alarm.status == Alarm.State.FIRING:  # consume until it clears
            assert time.monotonic() < end, f"no clear with {PUBLISHED - consumed} messages left"
            for _ in range(min(25, PUBLISHED - consumed)):
                method, _, _ = ch.basic_get(QUEUE)
                assert method is not None
                ch.basic_ack(method.delivery_tag)
                consumed += 1
            vm.client.pump(0.5)
            conn.process_data_events()
            feed()
        cleared = instance.metric_samples.get(at=alarm.cleared_at)
        assert cleared.messages_queued is not None and cleared.messages_queued <= THRESHOLD * 0.9
        assert ch.queue_declare(QUEUE, passive=True).method.message_count == PUBLISHED - consumed
        while ch.basic_get(QUEUE, auto_ack=True)[0] is not None:  # the rest, if any
            consumed += 1
        assert consumed == PUBLISHED
        vm.sample_where(
            lambda s: (s.get("messages_ready"), s.get("messages_unacked")) == (0, 0),
            120,
            "the queue drained",
        )
        _compare(tmp_path_factory.mktemp("real-api"), "overview-drained", _api(vm, "api/overview"))
        feed()  # the samples of the empty queue: the alarm stays cleared
        assert alarm.status == Alarm.State.OK
        ch.queue_delete(QUEUE)
    finally:
        conn.close()

    assert set(results) == {"recorded"}, results  # every real sample stored, each once
    stored = instance.metric_samples.order_by("at")
    assert stored.count() == len(results)
    assert all(s.reachable and s.mem_used and s.disk_free for s in stored)
    assert max(s.publish_rate or 0 for s in stored) > 0  # the rates moved too
    assert max(s.ack_rate or 0 for s in stored) > 0
    changes = list(alarm.events.order_by("at").values_list("change", flat=True))
    assert changes == [AlarmEvent.Change.FIRED, AlarmEvent.Change.CLEARED]
    # The defaults saw a healthy server the whole time.
    assert set(instance.alarms.filter(is_default=True).values_list("status", flat=True)) == {
        Alarm.State.OK
    }
    assert [m.subject.split(":")[0] for m in mailoutbox] == ["Alarm", "Cleared"]
    assert mailoutbox[0].to == ["mira@example.com"]
    print(
        f"\n{IMAGE}: queue-depth alarm fired at {fired.messages_queued} queued, cleared at "
        f"{cleared.messages_queued}; {len(results)} samples every {METRICS_INTERVAL} s applied"
    )


def _publish_confirmed(vm: RealVM) -> None:
    conn = vm.amqp()
    try:
        ch = conn.channel()
        for name, kind in QUEUES.items():
            ch.queue_declare(name, durable=True, arguments={"x-queue-type": kind})
        ch.confirm_delivery()  # each basic_publish returns once the broker confirmed it
        for i in range(MESSAGES):
            for name in QUEUES:
                body = f"{name}-{i}".encode()
                ch.basic_publish(
                    "", name, body, pika.BasicProperties(delivery_mode=2), mandatory=True
                )
                vm.sent.setdefault(name, []).append(body)
            if i % 50 == 0:
                vm.client.pump(0)  # keep the event watcher's connection alive
    finally:
        conn.close()


def _read_back(vm: RealVM, *, in_order: bool = True) -> None:
    conn = vm.amqp(attempts=10)
    try:
        ch = conn.channel()
        for name in ("heal-classic", "heal-quorum"):
            assert ch.queue_declare(name, passive=True).method.message_count == MESSAGES, name
        ch.basic_qos(prefetch_count=500)
        bodies = []
        # A stream's reader starts once the stream coordinator (a Raft machine recovering its
        # own log first) serves it: wait up to 30 s for the first delivery.
        for method, _, body in ch.consume(
            "heal-stream", arguments={"x-stream-offset": "first"}, inactivity_timeout=30
        ):
            if method is None:
                break
            bodies.append(body)
            ch.basic_ack(method.delivery_tag)
            if len(bodies) == MESSAGES:
                break
        ch.cancel()
        assert bodies == vm.sent["heal-stream"]
        for name in ("heal-classic", "heal-quorum"):  # readable, not just counted
            got = [ch.basic_get(name, auto_ack=False)[2] for _ in range(MESSAGES)]
            if in_order:
                assert got == vm.sent[name], name
            else:  # messages returned by an earlier read may come back in another order
                assert sorted(got) == sorted(vm.sent[name]), name
        ch.close()  # unacked: back in the queues for the checks after this one
    finally:
        conn.close()


def test_a_killed_vm_is_restarted_by_the_host_with_every_confirmed_message(vm: RealVM):
    """Issue 11: a `kill -9` of QEMU (what an OOM kill or a crash does); the host notices and
    starts the VM again from its own disk: instance.restarting, then instance.ready with the
    same URLs and credentials, and every confirmed persistent message in the durable classic
    queue, the quorum queue and the stream."""
    assert vm.ready, "needs the ready VM of the test before"
    _publish_confirmed(vm)
    before = vm.last_seq()
    [pid] = qemu_pids(vm.daemon.state_dir)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    restarting = vm.wait(("instance.restarting", "instance.lost"), before, 30)
    noticed = time.monotonic() - killed
    assert restarting["type"] == "instance.restarting", restarting
    assert restarting["attempt"] == 1
    again = vm.wait(("instance.ready", "instance.lost", "instance.restarting"), restarting["seq"],
                    BOOT_SECONDS)  # fmt: skip
    assert again["type"] == "instance.ready", again
    for key in ("management_url", "amqp_url", "admin_username"):
        assert again[key] == vm.ready[key]
    assert again["boot"] == "cold"  # from its own disk, never the image's saved state
    while vm.status() != 200:
        assert time.monotonic() < killed + BOOT_SECONDS
        vm.client.pump(0.5)
    seconds = time.monotonic() - killed
    [new_pid] = qemu_pids(vm.daemon.state_dir)
    assert new_pid != pid
    _read_back(vm)
    assert vm.status("guest", "guest") == 401
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        vm.amqp("guest", attempts=1)
    load = os.getloadavg()
    print(
        f"\n{IMAGE}: kill -9 -> instance.restarting {noticed:.1f} s, -> management URL "
        f"answering again {seconds:.1f} s (cold boot from the VM's disk; load {load[0]:.1f})"
    )


def _console(vm: RealVM, body: dict[str, Any]) -> None:
    """As the shop's relay sends a console command: to the VM's host only, persistent, no
    reply_to (the outcome comes as an event)."""
    vm.client.channel.basic_publish(
        topology.COMMANDS_EXCHANGE,
        topology.host_key(vm.daemon.host_id),
        messages.encode(body),
        pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=str(uuid.uuid4()),
            user_id="guest",  # the daemons under test obey guest (WARREN_COMMAND_SENDERS)
        ),
    )


def _outcomes(vm: RealVM, request_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events_for(vm.client, VM_ID)
        if e["type"] in OUTCOMES and e.get("request_id") == request_id
    ]


def _outcome(vm: RealVM, request_id: str, seconds: float, count: int = 1) -> dict[str, Any]:
    end = time.monotonic() + seconds
    while len(_outcomes(vm, request_id)) < count:
        assert time.monotonic() < end, f"no outcome #{count} of {request_id} in {seconds} s"
        vm.client.pump(0.5)
    return _outcomes(vm, request_id)[count - 1]


def _closed_by_the_broker(conn: pika.BlockingConnection, seconds: float) -> bool:
    """Whether the broker closes `conn` (CONNECTION_FORCED, as the management API's close does)
    within `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn.process_data_events(time_limit=1)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            return exc.reply_code == 320
    return False


def test_a_password_rotation_closes_old_connections_and_refuses_the_old_password(vm: RealVM):
    """Issue 11's console on the real broker: the rotation goes through the VM's management API,
    the AMQP connections opened with the old password are closed, the old password is refused at
    once, the new one works, and the host keeps it (healing and resizing use it)."""
    assert vm.ready, "needs the ready VM of the tests before"
    old, new = vm.password, "rotated-" + uuid.uuid4().hex
    conn = vm.amqp(heartbeat=0)  # idle while the rotation runs: only the host may close it
    conn.channel().queue_declare("", exclusive=True)
    # The host closes the connections the management API lists: the test's starts listed, as a
    # customer's long-open connection is (whether one opened in the same second is seen depends
    # on RabbitMQ's connection tracking; not what this checks).
    end = time.monotonic() + 120
    while not [c for c in _api(vm, "api/connections") if c.get("user") == vm.user]:
        assert time.monotonic() < end, "the connection never appeared in the management API"
        vm.client.pump(1)
    request_id = str(uuid.uuid4())
    started = time.monotonic()
    _console(
        vm,
        messages.set_admin_password_body(
            vm_id=VM_ID, request_id=request_id, username=vm.user, password=new
        ),
    )
    done = _outcome(vm, request_id, 600)
    seconds = time.monotonic() - started
    assert done["type"] == "instance.command_done", done
    assert done["command"] == "set-admin-password"
    assert new not in json.dumps(done) and old not in json.dumps(done)
    assert _closed_by_the_broker(conn, 30), "the old password's AMQP connection stays open"
    vm.password = new
    assert vm.status(vm.user, old) == 401
    assert vm.status() == 200
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        vm.amqp(old, attempts=1)
    vm.amqp().close()
    assert read_state(vm.daemon.state_dir, VM_ID)["admin_password"] == new
    assert new not in vm.daemon.log_text()
    print(f"\n{IMAGE}: set-admin-password -> command_done {seconds:.1f} s")


def _api(vm: RealVM, path: str) -> Any:
    """GET a management API path on the VM as its admin; the decoded JSON."""
    token = base64.b64encode(f"{vm.user}:{vm.password}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - the VM's loopback http URL
        vm.ready["management_url"] + path, headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.load(response)


def _disk_free(vm: RealVM) -> int:
    """The guest's free bytes on RabbitMQ's disk (its root file system), from the node's stats;
    0 until a node that just started has emitted them."""
    [node] = _api(vm, "api/nodes")
    return int(node.get("disk_free", 0))


def test_a_resize_grows_memory_vcpus_and_disk_through_a_restart_and_keeps_the_messages(
    vm: RealVM,
):
    assert vm.ready, "needs the ready VM of the tests before"
    disk_gb = int(read_state(vm.daemon.state_dir, VM_ID)["disk_gb"])
    free_before = _disk_free(vm)
    assert free_before > 0
    before = vm.last_seq()
    request_id = str(uuid.uuid4())
    body = messages.resize_vm_body(
        vm_id=VM_ID, request_id=request_id, memory_mb=1024, vcpus=2, disk_gb=disk_gb + 2
    )
    started = time.monotonic()
    _console(vm, body)
    done = _outcome(vm, request_id, BOOT_SECONDS + 120)
    seconds = time.monotonic() - started
    assert done["type"] == "instance.command_done", done
    assert (done["memory_mb"], done["vcpus"], done["disk_gb"]) == (1024, 2, disk_gb + 2)
    after = [e["type"] for e in events_for(vm.client, VM_ID) if e.get("seq", 0) > before]
    assert "instance.stopped" in after and "instance.ready" in after, after
    again = [e for e in events_for(vm.client, VM_ID, "instance.ready") if e["seq"] > before][-1]
    for key in ("management_url", "amqp_url", "admin_username"):
        assert again[key] == vm.ready[key]
    version = versions.for_image(IMAGE)
    if version is not None:  # what is running, for the order page
        assert again["runtime"]["rabbitmq_version"].startswith(version.version + "."), again
    [pid] = qemu_pids(vm.daemon.state_dir)
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert args[args.index("-m") + 1] == "1024M" and args[args.index("-smp") + 1] == "2"
    while vm.status() != 200:  # the rotated password survived the restart
        assert time.monotonic() < started + BOOT_SECONDS
        vm.client.pump(0.5)
    _read_back(vm, in_order=False)
    end = time.monotonic() + 300  # the guest's file system grows after the boot
    while _disk_free(vm) < free_before + 2**30:
        assert time.monotonic() < end, "the guest's file system did not grow"
        vm.client.pump(1)

    # The same request again (a redelivery, a repeated click): the same outcome, no restart.
    seq = vm.last_seq()
    _console(vm, body)
    repeated = _outcome(vm, request_id, 120, count=2)
    assert {k: repeated[k] for k in ("type", "memory_mb", "vcpus", "disk_gb")} == {
        k: done[k] for k in ("type", "memory_mb", "vcpus", "disk_gb")
    }
    # A smaller disk is refused with the reason, and the VM stays as it is.
    refused_id = str(uuid.uuid4())
    _console(
        vm,
        messages.resize_vm_body(
            vm_id=VM_ID, request_id=refused_id, memory_mb=1024, vcpus=2, disk_gb=disk_gb
        ),
    )
    refused = _outcome(vm, refused_id, 120)
    assert refused["type"] == "instance.command_failed", refused
    assert "only grows" in refused["reason"]
    later = [e["type"] for e in events_for(vm.client, VM_ID) if e.get("seq", 0) > seq]
    assert "instance.stopped" not in later and "instance.started" not in later, later
    assert vm.status() == 200
    print(f"\n{IMAGE}: resize-vm (ACPI stop, cold boot, grow) -> command_done {seconds:.1f} s")


def test_delete_vm_removes_the_vm_and_its_qemu(vm: RealVM):
    deleted = _ok(vm.client.call("delete-vm", {"vm-id": VM_ID}, timeout=120))
    assert deleted["status"] == "deleted"
    assert qemu_pids(vm.daemon.state_dir) == []
    assert not list(vm.daemon.state_dir.glob(f"**/{VM_ID}/disk.qcow2"))
