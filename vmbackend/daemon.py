"""The host daemon: AMQP commands in, QEMU VMs out, events back (docs/protocol.md).

Threads, after pika's threaded consumer example:

- the main thread owns the one pika BlockingConnection and only does I/O: it consumes, answers
  list-vms from memory, accepts create-vm (a durable state write, then the ack), publishes events
  with publisher confirms and heartbeats;
- every boot and every start/stop/restart/delete runs in a worker thread; workers never touch
  the channel, they hand replies, acks and event flushes back through
  `connection.add_callback_threadsafe`.

Every state change is written to the VM's state file before anything is acknowledged or
published, and events wait in the state file (`outbox`) until the broker confirms them, so a
SIGKILL or a broker outage loses nothing. SIGTERM stops consuming, closes the connection (unacked
deliveries go back to the queue) and exits 0, leaving the VMs running for the next start to adopt.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from vmbackend import messages, network, ports, topology
from vmbackend.config import Config
from vmbackend.images import manifest
from vmbackend.machine import Machine, MachineError, MachineGone
from vmbackend.messages import CreateVM, ListVMs, Rejected, VMCommand
from vmbackend.provision import Provision, cleanup, ready_fields, spec_for
from vmbackend.state import (
    ACCEPTED,
    BOOTING,
    DELETED,
    FAILED,
    LOST,
    READY,
    STOPPED,
    StateStore,
    VMRecord,
)

log = logging.getLogger(__name__)

DAEMON_VERSION = "0.1.0"
HOST_PREFETCH = 16
BACKOFF_START = 0.5
BACKOFF_CAP = 30.0
LOOP_TICK = 0.25

CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.ChannelClosed,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.StreamLostError,
    pika.exceptions.NackError,
    OSError,
)


def hostname_for(vm_id: str) -> str:
    """A valid hostname from a vm-id (vm-ids may hold `_`, hostnames may not)."""
    return "vm-" + vm_id[:12].lower().replace("_", "-").rstrip("-")


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = StateStore(cfg.state_dir)
        self.lock = threading.RLock()
        self.records: dict[str, VMRecord] = {}
        self.machines: dict[str, Machine] = {}
        self.boots: dict[str, tuple[Provision, threading.Thread]] = {}
        self.busy: set[str] = set()  # vm-ids with a start/stop/restart/delete in progress
        self.stopping = threading.Event()
        self.connection: pika.BlockingConnection | None = None
        self.host_channel: BlockingChannel | None = None
        self.create_channel: BlockingChannel | None = None
        self.event_channel: BlockingChannel | None = None
        self.create_tag: str | None = None
        self.heartbeat_seq = 0

    # ------------------------------------------------------------------ state and events
    def report(self, record: VMRecord, event_type: str | None, fields: dict[str, Any],
               **updates: Any) -> None:
        """Apply `updates`, queue the event, write the state file; then ask for a flush.

        Thread-safe. The state file is durable before the function returns.
        """
        with self.lock:
            for key, value in updates.items():
                setattr(record, key, value)
            if event_type is not None:
                record.seq += 1
                record.outbox.append(messages.event(
                    event_type, instance_id=record.vm_id, host_id=self.cfg.host_id,
                    seq=record.seq, **fields))
            self.store.save(record)
        if event_type is not None:
            self._from_worker(self.flush_events)

    def free_slots(self) -> int:
        with self.lock:
            used = sum(1 for r in self.records.values() if r.holds_slot())
        return self.cfg.capacity - used

    def _from_worker(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the connection's thread (no-op while disconnected)."""
        conn = self.connection
        if threading.current_thread() is threading.main_thread():
            if conn is not None and conn.is_open:
                callback()
            return
        if conn is None or not conn.is_open:
            return
        try:
            conn.add_callback_threadsafe(callback)
        except (pika.exceptions.ConnectionWrongStateError, RuntimeError, AttributeError):
            pass  # disconnected meanwhile: the next connection flushes and redelivers

    def flush_events(self) -> None:
        """Publish every queued event in order, dropping each from the outbox once confirmed."""
        channel = self.event_channel
        if channel is None or not channel.is_open:
            return
        with self.lock:
            pending = [(r.vm_id, list(r.outbox)) for r in self.records.values() if r.outbox]
        for vm_id, events in pending:
            for body in events:
                channel.basic_publish(
                    topology.EVENTS_EXCHANGE, body["type"], messages.encode_event(body),
                    pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                         message_id=body["message_id"]))
                with self.lock:
                    record = self.records.get(vm_id)
                    if record is None or not record.outbox:
                        break
                    if record.outbox[0]["message_id"] == body["message_id"]:
                        record.outbox.pop(0)
                    if record.status == DELETED and not record.outbox:
                        self.store.remove(vm_id)
                        del self.records[vm_id]
                    else:
                        self.store.save(record)

    def publish_heartbeat(self) -> None:
        channel = self.event_channel
        if channel is None or not channel.is_open:
            return
        with self.lock:
            running = sum(1 for r in self.records.values() if r.status in (BOOTING, READY))
        self.heartbeat_seq += 1
        body = messages.event("host.heartbeat", instance_id=None, host_id=self.cfg.host_id,
                              seq=self.heartbeat_seq, capacity=self.cfg.capacity,
                              running=running, free_slots=max(0, self.free_slots()),
                              daemon_version=DAEMON_VERSION)
        channel.basic_publish(topology.EVENTS_EXCHANGE, "host.heartbeat",
                              messages.encode_event(body),
                              pika.BasicProperties(content_type="application/json",
                                                   message_id=body["message_id"]))

    # ------------------------------------------------------------------ recovery
    def recover(self) -> None:
        """Load the state dir; adopt running VMs, mark dead ones lost, resume half-done boots."""
        self.records = self.store.load_all()
        for record in list(self.records.values()):
            self._recover_one(record)

    def _adopt(self, record: VMRecord) -> Machine | None:
        try:
            machine = Machine.adopt(spec_for(self.cfg, record), self.store.vm_dir(record.vm_id),
                                    self.cfg.image_dir)
        except MachineGone:
            return None
        except (MachineError, ValueError, KeyError) as exc:
            log.error("adopt failed host_id=%s vm_id=%s error=%s", self.cfg.host_id,
                      record.vm_id, exc)
            return None
        self.machines[record.vm_id] = machine
        return machine

    def _recover_one(self, record: VMRecord) -> None:
        vm_id = record.vm_id
        if record.status == DELETED:
            cleanup(self.cfg, self.store, record, None)
            return
        if record.status in (FAILED, LOST, STOPPED):
            return
        machine = self._adopt(record)
        if record.status == READY:
            if machine is None:
                self._mark_lost(record, "QEMU process was gone when the daemon started")
            else:
                log.info("vm adopted host_id=%s vm_id=%s pid=%s", self.cfg.host_id, vm_id,
                         machine.pid)
            return
        if record.status == BOOTING and machine is None:
            provision = Provision(self.cfg, self.store, record, self.report)
            provision.fail(MachineGone("QEMU exited while the daemon was not running"))
            return
        # ACCEPTED (maybe launched just before a crash: adopt found it) or BOOTING: resume.
        if machine is None:
            shutil.rmtree(self.store.vm_dir(vm_id), ignore_errors=True)  # half-made launch
        elif record.status == ACCEPTED:
            self.report(record, None, {}, status=BOOTING,
                        boot_started_at=record.boot_started_at or time.time())
        log.info("boot resumed host_id=%s vm_id=%s adopted=%s", self.cfg.host_id, vm_id,
                 machine is not None)
        self._start_boot(record, machine)

    def _mark_lost(self, record: VMRecord, reason: str) -> None:
        log.warning("vm lost host_id=%s vm_id=%s reason=%s", self.cfg.host_id, record.vm_id,
                    reason)
        self.machines.pop(record.vm_id, None)
        self.report(record, "instance.lost", {"reason": reason}, status=LOST)

    def check_liveness(self) -> None:
        """Mark ready VMs whose QEMU died as lost (runs with the heartbeat)."""
        with self.lock:
            candidates = [r for r in self.records.values() if r.status == READY
                          and r.vm_id not in self.busy and r.vm_id not in self.boots]
        for record in candidates:
            machine = self.machines.get(record.vm_id)
            if machine is None or not machine.is_running():
                with self.lock:
                    if (record.status != READY or record.vm_id in self.busy
                            or record.vm_id in self.boots):
                        continue
                self._mark_lost(record, "QEMU process exited")

    # ------------------------------------------------------------------ boots
    def _start_boot(self, record: VMRecord, machine: Machine | None) -> None:
        provision = Provision(self.cfg, self.store, record, self.report, machine=machine)

        def run() -> None:
            provision.run()
            with self.lock:
                if provision.machine is not None and record.status in (BOOTING, READY):
                    self.machines[record.vm_id] = provision.machine
                self.boots.pop(record.vm_id, None)
            self._from_worker(self.update_consuming)

        thread = threading.Thread(target=run, name=f"boot-{record.vm_id}", daemon=True)
        with self.lock:
            self.boots[record.vm_id] = (provision, thread)
        thread.start()

    # ------------------------------------------------------------------ AMQP plumbing
    def _reply(self, channel: BlockingChannel, props: BasicProperties, body: bytes) -> None:
        if not props.reply_to:
            return
        channel.basic_publish("", props.reply_to, body, pika.BasicProperties(
            content_type="application/json", correlation_id=props.correlation_id))

    def _dead_letter(self, channel: BlockingChannel, method: Basic.Deliver,
                     props: BasicProperties, body: bytes, reason: str) -> None:
        """Send the message to the dead-letter exchange with the reason, answer, ack."""
        log.warning("command rejected host_id=%s routing_key=%s reason=%s", self.cfg.host_id,
                    method.routing_key, reason)
        headers = {topology.REJECT_HEADER: reason, "x-warren-host-id": self.cfg.host_id,
                   "x-warren-routing-key": method.routing_key}
        target = self.event_channel or channel
        target.basic_publish(topology.DLX, method.routing_key, body, pika.BasicProperties(
            content_type=props.content_type, delivery_mode=2, headers=headers,
            message_id=props.message_id, correlation_id=props.correlation_id))
        self._reply(channel, props, messages.error(reason))
        channel.basic_ack(method.delivery_tag)

    def update_consuming(self) -> None:
        """Consume create-vm only while this host has a free slot (a full host takes nothing)."""
        channel = self.create_channel
        if channel is None or not channel.is_open:
            return
        want = self.free_slots() > 0 and not self.stopping.is_set()
        if want and self.create_tag is None:
            self.create_tag = channel.basic_consume(topology.CREATE_QUEUE, self.on_create)
            log.info("consuming create-vm host_id=%s free_slots=%s", self.cfg.host_id,
                     self.free_slots())
        elif not want and self.create_tag is not None:
            tag, self.create_tag = self.create_tag, None
            channel.basic_cancel(tag)
            log.info("paused create-vm host_id=%s free_slots=%s", self.cfg.host_id,
                     self.free_slots())

    def connect(self) -> None:
        params = pika.URLParameters(self.cfg.amqp_url)
        params.socket_timeout = 10
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.client_properties = {"connection_name": f"vmbackend {self.cfg.host_id}"}
        self.connection = pika.BlockingConnection(params)
        self.event_channel = self.connection.channel()
        self.event_channel.confirm_delivery()
        topology.declare_host(self.event_channel, self.cfg.host_id)
        topology.declare_events_store(self.event_channel)
        self.host_channel = self.connection.channel()
        self.host_channel.basic_qos(prefetch_count=HOST_PREFETCH)
        self.host_channel.basic_consume(topology.host_queue(self.cfg.host_id), self.on_host)
        self.create_channel = self.connection.channel()
        self.create_channel.basic_qos(prefetch_count=1)
        self.create_tag = None
        log.info("connected host_id=%s url=%s capacity=%s", self.cfg.host_id,
                 self.cfg.redacted_amqp_url(), self.cfg.capacity)

    def _close(self) -> None:
        conn, self.connection = self.connection, None
        self.host_channel = self.create_channel = self.event_channel = None
        self.create_tag = None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except CONNECTION_ERRORS:
                pass

    # ------------------------------------------------------------------ create-vm
    def on_create(self, channel: BlockingChannel, method: Basic.Deliver,
                  props: BasicProperties, body: bytes) -> None:
        try:
            cmd = messages.parse(body)
            if not isinstance(cmd, CreateVM):
                raise Rejected(f"{cmd.command} must not be sent with routing key create-vm")
            try:
                manifest.load(self.cfg.image_dir, cmd.image)
            except manifest.ImageError:
                raise Rejected(f"image {cmd.image} is not available on this host") from None
        except Rejected as exc:
            self._dead_letter(channel, method, props, body, exc.reason)
            return
        with self.lock:
            existing = self.records.get(cmd.vm_id)
            if existing is not None and existing.status != DELETED:
                self._answer_duplicate(channel, method, props, existing)
                return
            if self.free_slots() <= 0:  # raced with our own cancel: hand it to another host
                channel.basic_nack(method.delivery_tag, requeue=True)
                self.update_consuming()
                return
            record = self._new_record(cmd)
            failure = None
            try:
                self._attach_network(record)
            except (ports.NoFreePorts, network.NetworkError) as exc:
                failure = str(exc)
            self.records[record.vm_id] = record
        self.report(record, "instance.accepted", {"image": record.image})
        log.info("vm accepted host_id=%s vm_id=%s image=%s memory_mb=%s", self.cfg.host_id,
                 record.vm_id, record.image, record.memory_mb)
        self._reply(channel, props, messages.success(self._create_response(record)))
        if failure is not None:
            self.report(record, "instance.failed", {"reason": failure}, status=FAILED,
                        reason=failure)
        self.update_consuming()
        channel.basic_ack(method.delivery_tag)
        self.flush_events()
        if failure is None:
            self._start_boot(record, None)

    def _new_record(self, cmd: CreateVM) -> VMRecord:
        return VMRecord(vm_id=cmd.vm_id, image=cmd.image, memory_mb=cmd.memory_mb,
                        vcpus=cmd.vcpus, disk_gb=cmd.disk_gb, hostname=hostname_for(cmd.vm_id),
                        admin_username=cmd.admin_username, admin_password=cmd.admin_password,
                        password_generated=cmd.password_generated, limits=dict(cmd.limits),
                        network=self.cfg.network)

    def _attach_network(self, record: VMRecord) -> None:
        """Ports (user mode) or tap name + MAC (bridge mode), unique among this host's VMs."""
        others = [r for r in self.records.values() if r.vm_id != record.vm_id]
        if record.network == "bridge":
            record.tap = network.tap_name(record.vm_id)
            record.mac = network.mac_for(record.vm_id, taken=[r.mac for r in others if r.mac])
            return
        used = [p for r in others for p in r.ports.values()]
        management, amqp = ports.allocate(2, used=used, bind_address=self.cfg.bind_address,
                                          port_min=self.cfg.port_min, port_max=self.cfg.port_max)
        record.ports = {"management": management, "amqp": amqp}

    def _create_response(self, record: VMRecord) -> dict[str, Any]:
        response = {"vm-id": record.vm_id, "host-id": self.cfg.host_id,
                    "admin-username": record.admin_username}
        if record.password_generated:
            response["admin-password"] = record.admin_password
        return response

    def _answer_duplicate(self, channel: BlockingChannel, method: Basic.Deliver,
                          props: BasicProperties, record: VMRecord) -> None:
        """A create-vm for a vm-id we have: same reply, current state re-published, no new VM."""
        log.info("duplicate create-vm host_id=%s vm_id=%s status=%s", self.cfg.host_id,
                 record.vm_id, record.status)
        event_type, fields = self._state_event(record)
        self.report(record, event_type, fields)
        self._reply(channel, props, messages.success(self._create_response(record)))
        channel.basic_ack(method.delivery_tag)
        self.flush_events()

    def _state_event(self, record: VMRecord) -> tuple[str, dict[str, Any]]:
        if record.status == READY:
            return "instance.ready", ready_fields(record)
        if record.status == FAILED:
            return "instance.failed", {"reason": record.reason}
        if record.status == STOPPED:
            return "instance.stopped", {}
        if record.status == LOST:
            return "instance.lost", {"reason": record.reason or "QEMU process exited"}
        if record.status == BOOTING and record.stage:
            return "instance.progress", {"stage": record.stage}
        return "instance.accepted", {"image": record.image}

    # ------------------------------------------------------------------ host commands
    def list_vms(self) -> list[dict[str, Any]]:
        with self.lock:
            records = [r for r in self.records.values() if r.status != DELETED]
        return [{"vm-id": r.vm_id, "host-id": self.cfg.host_id, "status": r.status,
                 "image": r.image, "ip-addresses": r.ip_addresses,
                 "management-url": r.management_url, "amqp-url": r.amqp_url,
                 "memory-mb": r.memory_mb, "vcpus": r.vcpus} for r in records]

    def on_host(self, channel: BlockingChannel, method: Basic.Deliver,
                props: BasicProperties, body: bytes) -> None:
        direct = method.routing_key == topology.host_key(self.cfg.host_id)
        try:
            cmd = messages.parse(body)
            if isinstance(cmd, CreateVM):
                raise Rejected("create-vm goes to routing key create-vm (the shared queue)")
            if not direct and method.routing_key != cmd.command:
                raise Rejected(f"routing key {method.routing_key} does not match command "
                               f"{cmd.command}")
        except Rejected as exc:
            self._dead_letter(channel, method, props, body, exc.reason)
            return
        if isinstance(cmd, ListVMs):
            self._reply(channel, props, messages.success(self.list_vms()))
            channel.basic_ack(method.delivery_tag)
            return
        with self.lock:
            record = self.records.get(cmd.vm_id)
            known = record is not None and record.status != DELETED
            busy = cmd.vm_id in self.busy
            if known and not busy:
                self.busy.add(cmd.vm_id)
        if not known:
            if direct:  # broadcasts for other hosts' VMs stay silent
                self._reply(channel, props, messages.error("unknown vm-id"))
            channel.basic_ack(method.delivery_tag)
            return
        if busy:
            self._reply(channel, props, messages.error(
                f"vm-id {cmd.vm_id} has another command in progress"))
            channel.basic_ack(method.delivery_tag)
            return

        def work() -> None:
            try:
                reply = messages.success(self.run_command(cmd))
            except Rejected as exc:
                reply = messages.error(exc.reason)
            except Exception as exc:  # noqa: BLE001 - the requester must hear about any failure
                log.exception("command failed host_id=%s vm_id=%s command=%s", self.cfg.host_id,
                              cmd.vm_id, cmd.command)
                reply = messages.error(f"{cmd.command} failed: {str(exc)[:300]}")
            finally:
                with self.lock:
                    self.busy.discard(cmd.vm_id)

            def finish() -> None:
                if channel.is_open:
                    self._reply(channel, props, reply)
                    channel.basic_ack(method.delivery_tag)
                self.update_consuming()

            self._from_worker(finish)

        log.info("command started host_id=%s vm_id=%s command=%s", self.cfg.host_id, cmd.vm_id,
                 cmd.command)
        threading.Thread(target=work, name=f"{cmd.command}-{cmd.vm_id}", daemon=True).start()

    def run_command(self, cmd: VMCommand) -> dict[str, Any]:
        """start/stop/restart/delete one VM; runs in a worker thread. Returns the response."""
        with self.lock:
            record = self.records[cmd.vm_id]
        if cmd.command == "delete-vm":
            self.delete(record)
            return {"vm-id": record.vm_id, "status": "deleted"}
        if record.status in (ACCEPTED, BOOTING):
            with self.lock:
                boot = self.boots.get(record.vm_id)
            if cmd.command == "start-vm" and boot is not None:
                boot[1].join(timeout=self.cfg.boot_deadline)  # starting a booting VM: its outcome
                return {"vm-id": record.vm_id, "status": record.status}
            raise Rejected(f"vm-id {record.vm_id} is still booting (delete-vm cancels a boot)")
        if record.status == FAILED:
            raise Rejected(f"vm-id {record.vm_id} failed; only delete-vm applies")
        if cmd.command in ("stop-vm", "restart-vm"):
            self.stop(record, kill=cmd.kill)
        if cmd.command in ("start-vm", "restart-vm"):
            self.start(record)
        return {"vm-id": record.vm_id, "status": record.status}

    def _machine(self, record: VMRecord) -> Machine | None:
        machine = self.machines.get(record.vm_id)
        if machine is None:
            machine = self._adopt(record)
        return machine

    def stop(self, record: VMRecord, *, kill: bool) -> None:
        machine = self._machine(record)
        if machine is not None and machine.is_running():
            if kill:
                machine.kill()
            else:
                machine.powerdown(timeout=self.cfg.stop_timeout)
        self.machines.pop(record.vm_id, None)
        if record.status != STOPPED:
            self.report(record, "instance.stopped", {}, status=STOPPED)
        log.info("vm stopped host_id=%s vm_id=%s kill=%s", self.cfg.host_id, record.vm_id, kill)

    def start(self, record: VMRecord) -> None:
        """Boot a stopped (or lost) VM from its disk and wait until it is ready again."""
        machine = self._machine(record)
        if machine is not None and machine.is_running():
            if record.status == READY:
                return
            # QEMU already runs: a start cut short by a daemon stop. Wait for it, never a
            # second QEMU on the same disk.
            if record.status != BOOTING:
                self.report(record, "instance.started", {}, status=BOOTING, stage="vm_starting",
                            boot_started_at=time.time())
        else:
            if record.network == "bridge":
                network.create_tap(record.tap, self.cfg.bridge)
            machine = Machine(spec_for(self.cfg, record), self.store.vm_dir(record.vm_id),
                              self.cfg.image_dir, accel=self.cfg.accel)
            started = time.time()
            boot = machine.start()
            self.report(record, "instance.started", {}, status=BOOTING, stage="vm_starting",
                        boot=boot, boot_started_at=started)
        provision = Provision(self.cfg, self.store, record, self.report, machine=machine)
        addresses = provision.wait_guest()
        provision.wait_rabbitmq(addresses)
        self.machines[record.vm_id] = machine

    def delete(self, record: VMRecord) -> None:
        """Cancel a running boot, destroy the VM and its files, free its ports and slot."""
        with self.lock:
            boot = self.boots.get(record.vm_id)
        machine = self._machine(record)
        if boot is not None:
            provision, thread = boot
            provision.cancel.set()
            if provision.machine is not None:
                machine = provision.machine
            if machine is not None:
                try:
                    machine.kill()
                except MachineError as exc:  # not started yet or already gone
                    log.info("kill during cancel host_id=%s vm_id=%s error=%s",
                             self.cfg.host_id, record.vm_id, exc)
            thread.join(timeout=self.cfg.stop_timeout + 30)
            # Race: the boot may have created (and started) its Machine after we looked above;
            # once the boot thread has ended, its machine is the one to destroy.
            if provision.machine is not None:
                machine = provision.machine
        cleanup(self.cfg, self.store, record, machine)
        self.machines.pop(record.vm_id, None)
        self.report(record, "instance.deleted", {}, status=DELETED, ports={})
        log.info("vm deleted host_id=%s vm_id=%s", self.cfg.host_id, record.vm_id)

    # ------------------------------------------------------------------ main loop
    def request_stop(self, *_args: object) -> None:
        self.stopping.set()

    def serve_once(self, deadline: float) -> None:
        """One connected session: process I/O until stop or `deadline` (monotonic)."""
        next_heartbeat = 0.0
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if self.connection is None:
                return
            self.connection.process_data_events(time_limit=LOOP_TICK)
            if time.monotonic() >= next_heartbeat:
                self.check_liveness()
                self.publish_heartbeat()
                next_heartbeat = time.monotonic() + self.cfg.heartbeat_interval
            self.flush_events()
            self.update_consuming()

    def run(self) -> int:
        """Recover, then serve with reconnects (capped backoff) until SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("daemon starting host_id=%s state_dir=%s capacity=%s network=%s",
                 self.cfg.host_id, self.cfg.state_dir, self.cfg.capacity, self.cfg.network)
        self.recover()
        backoff = BACKOFF_START
        while not self.stopping.is_set():
            try:
                self.connect()
                self.flush_events()
                self.update_consuming()
                backoff = BACKOFF_START
                self.serve_once(float("inf"))
            except CONNECTION_ERRORS as exc:
                log.warning("broker connection lost host_id=%s error=%r retry_in=%.1fs",
                            self.cfg.host_id, exc, backoff)
                self._close()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop consuming and close: unacked deliveries go back to their queues; VMs keep running."""
        log.info("daemon stopping host_id=%s boots_in_progress=%s", self.cfg.host_id,
                 len(self.boots))
        try:
            if self.create_channel is not None and self.create_tag is not None:
                self.create_channel.basic_cancel(self.create_tag)
            if self.connection is not None and self.connection.is_open:
                self.flush_events()
        except CONNECTION_ERRORS:
            pass
        self._close()


def main(cfg: Config) -> int:
    return Daemon(cfg).run()
