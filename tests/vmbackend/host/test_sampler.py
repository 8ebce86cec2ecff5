"""vmbackend/host/sampler.py: reading the management API's answers (pure, never raises), QEMU's
numbers from /proc, and the Sampler against a real HTTP server on 127.0.0.1
(tests/vmbackend/management_server.py). No mocks: the "QEMU" of these samples is this process."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.net import free_port
from tests.vmbackend.management_server import PASSWORD, Broker, serve
from vmbackend.host import config
from vmbackend.host.registry import Registry
from vmbackend.host.sampler import (
    CpuMeter,
    Sampler,
    node_fields,
    node_name,
    overview_fields,
    read_cpu,
    read_rss,
)
from vmbackend.host.state import READY, STOPPED, StateStore, VMRecord
from vmbackend.protocol import messages
from vmbackend.protocol.messages import Metrics

NODE = "rabbit@vm-1"
OVERVIEW = {
    "management_version": "4.0.5",
    "node": NODE,
    "queue_totals": {"messages": 15, "messages_ready": 12, "messages_unacknowledged": 3},
    "message_stats": {
        "publish": 1000,
        "publish_details": {"rate": 41.5},
        "deliver_get": 990,
        "deliver_get_details": {"rate": 40.0},
        "ack": 980,
        "ack_details": {"rate": 39.25},
    },
    "object_totals": {"connections": 4, "channels": 8, "consumers": 2, "queues": 5, "exchanges": 7},
}
NODE_ANSWER = {
    "name": NODE,
    "mem_used": 120_000_000,
    "mem_limit": 400_000_000,
    "mem_alarm": False,
    "disk_free": 3_000_000_000,
    "disk_free_limit": 50_000_000,
    "disk_free_alarm": True,
    "uptime": 3_600_500,
}


# -- the answers ------------------------------------------------------------------------------------


def test_a_real_shaped_overview_and_node_give_every_field():
    assert overview_fields(OVERVIEW) == {
        "messages_ready": 12,
        "messages_unacked": 3,
        "publish_rate": 41.5,
        "deliver_rate": 40.0,
        "ack_rate": 39.25,
        "connections": 4,
        "channels": 8,
        "consumers": 2,
        "queues": 5,
    }
    assert node_fields(NODE_ANSWER) == {
        "mem_used": 120_000_000,
        "mem_limit": 400_000_000,
        "disk_free": 3_000_000_000,
        "disk_free_limit": 50_000_000,
        "mem_alarm": False,
        "disk_alarm": True,
        "uptime_s": 3600,
    }
    assert node_name(OVERVIEW) == NODE


REAL = Path(__file__).parents[1] / "fixtures"  # trimmed answers of the real RabbitMQ 4.0 image


def _real(name: str) -> Any:
    return json.loads((REAL / f"rabbitmq-{name}.json").read_text())


def test_the_real_nodes_answers_give_their_numbers():
    """Answers of the real image's node (saved by tests/vmbackend/host/test_healing_slow.py, which
    checks on every slow run that the real node still answers with these keys and types)."""
    busy = _real("overview")  # 150 messages published with confirms, none consumed yet
    assert overview_fields(busy) == {
        "messages_ready": 150,
        "messages_unacked": 0,
        "publish_rate": 0.0,  # the burst was over: RabbitMQ's rate is of the last few seconds
        "deliver_rate": 0.0,  # nothing delivered yet: no deliver_get_details at all
        "ack_rate": 0.0,
        "connections": 1,
        "channels": 1,
        "consumers": 0,
        "queues": 1,
    }
    assert node_name(busy) == "rabbit@localhost"
    assert node_fields(_real("node")) == {
        "mem_used": 119_582_720,
        "mem_limit": 292_451_942,  # 512 MiB VM, RabbitMQ's default watermark
        "disk_free": 1_613_332_480,
        "disk_free_limit": 50_000_000,
        "mem_alarm": False,
        "disk_alarm": False,
        "uptime_s": 23,  # the answer's milliseconds
    }
    body = messages.metrics_event(
        instance_id=str(uuid.uuid4()),
        host_id="host-a",
        metrics=Metrics(reachable=True, **overview_fields(busy), **node_fields(_real("node"))),
    )
    assert messages.parse_event(messages.encode(body)).metrics is not None


def test_the_real_nodes_answer_after_consuming_has_the_deliver_and_ack_stats():
    """The same queue consumed with basic.get and acked: deliver_get and ack appear (their rates
    were 0 again when it was saved; a rate set on the real key paths is the one read)."""
    drained = _real("overview-drained")
    assert drained["message_stats"]["deliver_get"] == drained["message_stats"]["ack"] == 150
    fields = overview_fields(drained)
    assert (fields["messages_ready"], fields["deliver_rate"], fields["ack_rate"]) == (0, 0.0, 0.0)
    stats = drained["message_stats"]
    stats["publish_details"]["rate"] = 30.2
    stats["deliver_get_details"]["rate"] = 29.8
    stats["ack_details"]["rate"] = 29.5
    rates = overview_fields(drained)
    assert (rates["publish_rate"], rates["deliver_rate"], rates["ack_rate"]) == (30.2, 29.8, 29.5)


def test_the_real_idle_node_answers_empty_queue_totals_read_as_zero():
    """No queue at all: the real node answers `queue_totals: {}` and message_stats without any
    publish/deliver/ack (only disk_reads/disk_writes)."""
    idle = _real("overview-idle")
    assert idle["queue_totals"] == {} and "publish_details" not in idle["message_stats"]
    fields = overview_fields(idle)
    assert fields["messages_ready"] == fields["messages_unacked"] == fields["queues"] == 0
    assert fields["publish_rate"] == fields["deliver_rate"] == fields["ack_rate"] == 0.0
    assert (fields["connections"], fields["channels"]) == (3, 3)


def test_a_quiet_broker_without_message_stats_reads_as_zero_rates():
    fields = overview_fields({"node": NODE, "object_totals": {"connections": 1}})
    assert fields["publish_rate"] == fields["deliver_rate"] == fields["ack_rate"] == 0.0
    assert fields["messages_ready"] == 0 and fields["connections"] == 1


def test_garbled_values_are_clamped_or_left_out_never_raised():
    fields = overview_fields(
        {
            "queue_totals": {"messages_ready": -5, "messages_unacknowledged": 2**70},
            "message_stats": {"publish_details": {"rate": -3.0}, "ack_details": {"rate": 1e300}},
            "object_totals": {"connections": True, "channels": "8", "queues": 2.9},
        }
    )
    assert fields["messages_ready"] == 0
    assert fields["messages_unacked"] == 2**63 - 1
    assert fields["publish_rate"] == 0.0 and fields["ack_rate"] == 1e12
    assert (fields["connections"], fields["channels"], fields["queues"]) == (0, 0, 2)
    node = node_fields({"mem_used": "lots", "mem_alarm": "false", "uptime": None})
    assert node["mem_used"] is None and node["mem_alarm"] is None and node["uptime_s"] is None
    assert node_name({"node": ""}) is None and node_name({"node": "x" * 300}) is None


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "queue_totals",
                    "messages_ready",
                    "messages_unacknowledged",
                    "message_stats",
                    "publish_details",
                    "deliver_get_details",
                    "ack_details",
                    "rate",
                    "object_totals",
                    "connections",
                    "queues",
                    "mem_used",
                    "mem_limit",
                    "mem_alarm",
                    "disk_free",
                    "disk_free_alarm",
                    "uptime",
                    "node",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=6,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_json, _json)
def test_any_answer_gives_fields_the_event_accepts(overview, node):
    fields = {**overview_fields(overview), **node_fields(node)}
    assert all(
        isinstance(fields[name], int) and fields[name] >= 0
        for name in ("messages_ready", "messages_unacked", "connections", "channels")
    )
    assert all(math.isfinite(fields[name]) for name in ("publish_rate", "deliver_rate", "ack_rate"))
    sample = Metrics(reachable=True, **fields)
    body = messages.metrics_event(instance_id=str(uuid.uuid4()), host_id="h", metrics=sample)
    assert messages.parse_event(messages.encode_event(body)).metrics == sample
    name = node_name(overview)
    assert name is None or (isinstance(name, str) and 0 < len(name) <= 255)


# -- QEMU's numbers from /proc (this process and a child stand in for QEMU) -------------------------


def test_cpu_and_rss_of_a_live_process_and_none_for_a_gone_one():
    assert read_rss(os.getpid()) > 10 * 1024 * 1024  # a Python with pytest loaded
    assert read_cpu(os.getpid())[0] > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_rss(child.pid) is None and read_cpu(child.pid) is None
    meter = CpuMeter()
    assert meter.percent("vm", child.pid) is None


def test_cpu_percent_follows_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        meter = CpuMeter()
        meter.percent("busy", busy.pid)  # the first reading: the average since it started
        meter.percent("idle", idle.pid)
        # CPU ticks, not wall time, decide: wait until the busy child used 0.3 s of CPU.
        start = read_cpu(busy.pid)[0]
        while read_cpu(busy.pid)[0] - start < 30:
            time.sleep(0.05)
        busy_percent = meter.percent("busy", busy.pid)
        idle_percent = meter.percent("idle", idle.pid)
        assert busy_percent > 10.0  # a spinning process, on a shared machine
        assert idle_percent < busy_percent
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()


# -- the Sampler against a real HTTP server ------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[Broker]:
    with serve() as state:
        state.overview = dict(OVERVIEW)
        state.nodes = {NODE: dict(NODE_ANSWER)}
        yield state


def _registry(tmp_path, **env) -> Registry:
    cfg = config.load(
        env={
            "WARREN_HOST_ID": "h1",
            "WARREN_STATE_DIR": str(tmp_path),
            "WARREN_METRICS_TIMEOUT": "0.5",
            **env,
        }
    )
    return Registry(cfg, StateStore(tmp_path))


def _add(
    registry: Registry,
    port: int,
    *,
    status: str = READY,
    password: str = PASSWORD,
    vm_id: str = "",
) -> str:
    vm_id = vm_id or str(uuid.uuid4())
    registry.records[vm_id] = VMRecord(
        vm_id=vm_id,
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="vm-1",
        admin_username="admin",
        admin_password=password,
        status=status,
        ports={"management": port, "amqp": free_port()},
    )
    return vm_id


def _sampler(registry: Registry) -> tuple[Sampler, list[dict]]:
    published: list[dict] = []
    sampler = Sampler(registry.cfg, registry, lambda vm_id: os.getpid(), published.append)
    return sampler, published


def _read(body: dict) -> messages.Event:
    return messages.parse_event(messages.encode_event(body))


def test_a_ready_vm_gives_one_sample_with_its_numbers_and_the_host_numbers(tmp_path, broker):
    registry = _registry(tmp_path)
    vm_id = _add(registry, broker.port)
    _add(registry, broker.port, status=STOPPED)  # not sampled
    _add(registry, broker.port, vm_id="vm-by-hand")  # no UUID: no shop instance, not sampled
    restarting = _add(registry, broker.port)  # a restart-vm in progress: a gap, not unreachable
    registry.busy[restarting] = ["restart-vm"]
    sampler, published = _sampler(registry)
    bodies = sampler.sample_round()
    assert bodies == published and len(bodies) == 1
    event = _read(bodies[0])
    assert (str(event.instance_id), event.host_id, event.type) == (vm_id, "h1", "instance.metrics")
    metrics = event.metrics
    assert metrics.reachable and metrics.messages_ready == 12 and metrics.publish_rate == 41.5
    assert (metrics.mem_limit, metrics.disk_alarm, metrics.uptime_s) == (400_000_000, True, 3600)
    assert metrics.rss_bytes > 0 and metrics.cpu_percent >= 0
    assert [seen[:3] for seen in broker.seen] == [
        ("GET", "/api/overview", "admin"),
        ("GET", "/api/nodes/rabbit%40vm-1", "admin"),
    ]
    assert "seq" not in bodies[0]


def test_the_numbers_move_with_the_broker(tmp_path, broker):
    registry = _registry(tmp_path)
    _add(registry, broker.port)
    sampler, _ = _sampler(registry)
    first = _read(sampler.sample_round()[0]).metrics
    broker.overview["queue_totals"] = {"messages_ready": 500, "messages_unacknowledged": 0}
    broker.nodes[NODE]["mem_alarm"] = True
    second = _read(sampler.sample_round()[0]).metrics
    assert (first.messages_ready, second.messages_ready) == (12, 500)
    assert (first.mem_alarm, second.mem_alarm) == (False, True)


def test_a_node_call_that_fails_leaves_only_the_node_fields_out(tmp_path, broker):
    broker.nodes = {}  # 404 for the node
    registry = _registry(tmp_path)
    _add(registry, broker.port)
    sampler, _ = _sampler(registry)
    metrics = _read(sampler.sample_round()[0]).metrics
    assert metrics.reachable and metrics.connections == 4
    assert metrics.mem_used is None and metrics.disk_alarm is None


def test_a_wrong_password_is_unreachable_and_never_logged(tmp_path, broker, caplog):
    registry = _registry(tmp_path)
    secret = "wrong-" + PASSWORD
    vm_id = _add(registry, broker.port, password=secret)
    sampler, _ = _sampler(registry)
    with caplog.at_level(logging.DEBUG):
        body = sampler.sample_round()[0]
        sampler.sample_round()  # logged once per change of reachability, not every round
    metrics = _read(body).metrics
    assert metrics == Metrics(
        reachable=False, cpu_percent=metrics.cpu_percent, rss_bytes=metrics.rss_bytes
    )
    assert metrics.rss_bytes > 0  # the host's numbers are there without RabbitMQ's
    unreachable = [r.getMessage() for r in caplog.records if "metrics unreachable" in r.message]
    assert len(unreachable) == 1 and f"vm_id={vm_id}" in unreachable[0]
    assert "401" in unreachable[0]
    assert secret not in caplog.text and PASSWORD not in caplog.text
    assert secret not in repr(sampler.targets())


def test_a_changed_password_is_used_from_the_next_sample_on(tmp_path, broker, caplog):
    registry = _registry(tmp_path)
    vm_id = _add(registry, broker.port)
    sampler, _ = _sampler(registry)
    assert _read(sampler.sample_round()[0]).metrics.reachable
    broker.users["admin"] = "a-new-password-1234"  # set-admin-password changed it in the VM
    assert not _read(sampler.sample_round()[0]).metrics.reachable
    with registry.lock:
        registry.records[vm_id].admin_password = "a-new-password-1234"  # ...and in the record
    with caplog.at_level(logging.INFO):
        assert _read(sampler.sample_round()[0]).metrics.reachable
    assert any("metrics reachable again" in r.message for r in caplog.records)


def test_nothing_listening_is_unreachable(tmp_path):
    registry = _registry(tmp_path)
    _add(registry, free_port())
    sampler, _ = _sampler(registry)
    assert _read(sampler.sample_round()[0]).metrics.reachable is False


def test_a_hanging_vm_is_unreachable_and_does_not_hold_up_the_others(tmp_path, broker):
    registry = _registry(tmp_path)
    healthy = _add(registry, broker.port)
    with serve() as hanging:
        hanging.overview = dict(OVERVIEW)
        hanging.delay = 3.0  # far beyond WARREN_METRICS_TIMEOUT=0.5
        stuck = _add(registry, hanging.port)
        sampler, _ = _sampler(registry)
        first = {b["instance_id"]: _read(b).metrics for b in sampler.sample_round()}
        assert first[healthy].reachable and first[healthy].messages_ready == 12
        assert first[stuck].reachable is False


@contextlib.contextmanager
def dripping_server(seconds: float) -> Iterator[tuple[int, list[int]]]:
    """A server that answers one byte every 0.1 s for `seconds` (each read is within any socket
    timeout, the answer never ends in time): (port, accepted connections so far)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    conn.sendall(b"X")
                    time.sleep(0.1)
            except OSError:
                pass

    def serve_forever() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve_forever, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()


def test_a_vm_that_drips_its_answer_holds_one_fetcher_not_a_thread_per_round(tmp_path, broker):
    registry = _registry(tmp_path)
    healthy = _add(registry, broker.port)
    with dripping_server(seconds=6) as (port, accepted):
        slow = _add(registry, port)
        sampler, _ = _sampler(registry)
        for _round in range(3):
            samples = {b["instance_id"]: _read(b).metrics for b in sampler.sample_round()}
            assert samples[healthy].reachable and samples[slow].reachable is False
        assert len(accepted) == 1  # rounds 2 and 3 did not ask the VM whose fetch still runs
        assert list(sampler.in_flight) == [slow]
        fetching = [t for t in threading.enumerate() if t.name == f"metrics-{slow}"]
        assert len(fetching) == 1 and fetching[0].daemon  # never holds up the daemon's exit


def test_a_huge_or_hostile_answer_is_unreachable_not_a_crash(tmp_path, broker):
    registry = _registry(tmp_path)
    _add(registry, broker.port)
    sampler, _ = _sampler(registry)
    broker.overview = [1] * 600_000  # a JSON array of 1.8 MB: above the answer bound
    assert _read(sampler.sample_round()[0]).metrics.reachable is False
    broker.overview = json.loads("[" * 10 + "]" * 10)  # valid JSON, not an object
    assert _read(sampler.sample_round()[0]).metrics.reachable is False


def test_the_sampler_thread_samples_every_interval_until_stopped(tmp_path, broker):
    registry = _registry(tmp_path, WARREN_METRICS_INTERVAL="0.2")
    _add(registry, broker.port)
    sampler, published = _sampler(registry)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(published) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(published) >= 3 and not thread.is_alive()
    assert len({body["message_id"] for body in published}) == len(published)
