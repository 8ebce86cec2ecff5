"""The host daemon: AMQP commands in, QEMU VMs out, events back (docs/protocol.md).

The parts, each in its own module:

- `registry`: the VM records, slots, the busy set and every rule about them (pure Python);
- `amqp_io`: the one pika connection (main thread): consuming, replies, dead letters, events
  with publisher confirms, host.heartbeat;
- `commands` and `boot`: what happens to one VM's QEMU, always in a worker thread, and the
  watcher thread that restarts a ready VM whose QEMU exited (`healing`: the restart policy);
- `recovery`: the state dir after a restart;
- `sampler`: the sampler thread (instance.metrics, best-effort, never on the connection's thread);
- `create_vm`: taking a create-vm (shared or placed, a duplicate, a decline, the warm pool);
- this module: the handlers of one delivery and the main loop with reconnects.

Threads follow pika's threaded consumer example: the main thread only does I/O (consume, answer
list-vms from memory, accept create-vm with a durable state write before the ack, publish);
every boot and every start/stop/restart/delete runs in a worker thread that hands its reply,
ack and event flush back through `connection.add_callback_threadsafe`.

Every state change is written to the VM's state file before anything is acknowledged or
published, and events wait in the state file (`outbox`) until the broker confirms them, so a
SIGKILL or a broker outage loses nothing. SIGTERM stops consuming, closes the connection (unacked
deliveries go back to the queue) and exits 0, leaving the VMs running for the next start to adopt.
Any exception while handling one message ends in a dead letter with the reason and an ack: one
bad message never stops the daemon nor loops through a requeue.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from vmbackend.host import certificates
from vmbackend.host.amqp_io import CONNECTION_ERRORS, AmqpIO, Delivery, connection_lost
from vmbackend.host.commands import Commands
from vmbackend.host.config import Config
from vmbackend.host.create_vm import CreateVMHandling
from vmbackend.host.pool import Pool
from vmbackend.host.recovery import recover
from vmbackend.host.registry import Registry
from vmbackend.host.rules import (
    BUSY,
    COMMAND_FAILED,
    REQUEST_DONE,
    REQUEST_NEW,
    UNKNOWN,
    outcome_response,
    parse_host,
    sender_refusal,
)
from vmbackend.host.sampler import Sampler
from vmbackend.host.state import StateStore
from vmbackend.machine.base import Machine
from vmbackend.protocol import messages, topology
from vmbackend.protocol.backoff import run_with_reconnect
from vmbackend.protocol.messages import (
    ConsoleCommand,
    CreateVM,
    ListVMs,
    Rejected,
    ResizeVM,
    SetAdminPassword,
    VMCommand,
)

log = logging.getLogger(__name__)

LOOP_TICK = 0.25
MAX_INTERNAL_REASON = 300


class Daemon(CreateVMHandling):
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = StateStore(cfg.state_dir)
        self.stopping = threading.Event()
        self.registry = Registry(cfg, self.store)
        self.io = AmqpIO(cfg, self.registry)
        self.registry.on_event = lambda: self.io.from_worker(self.io.flush_events)
        self.commands = Commands(
            cfg,
            self.store,
            self.registry,
            after_boot=lambda: self.io.from_worker(self.update_consuming),
        )
        self.pool = Pool(cfg, self.registry, self.commands)
        self.sampler = Sampler(cfg, self.registry, self.qemu_pid, self.io.offer_metrics)
        # Monotonic time until which the shared create-vm queue is left to other hosts: this
        # host put back a request that does not fit it (docs/fleet.md, the fallback queue).
        self.shared_paused_until = 0.0

    def machine_of(self, vm_id: str) -> Machine | None:
        return self.commands.machines.get(vm_id)

    def qemu_pid(self, vm_id: str) -> int | None:
        machine = self.commands.machines.get(vm_id)
        return machine.pid if machine is not None else None

    # -- one delivery
    def guarded(self, handler: Callable[[Delivery], None], delivery: Delivery) -> None:
        """Run `handler`; an unexpected exception dead-letters the message (if it is still
        unsettled) instead of killing the daemon. Connection errors go to the reconnect loop."""
        try:
            handler(delivery)
        except Exception as exc:  # noqa: BLE001 - one message must never stop the daemon
            if connection_lost(exc, delivery):
                raise
            log.exception(
                "message handling failed host_id=%s routing_key=%s",
                self.cfg.host_id,
                delivery.routing_key,
            )
            if not delivery.settled:
                reason = f"internal error: {type(exc).__name__}: {str(exc)[:MAX_INTERNAL_REASON]}"
                self.io.dead_letter(delivery, reason)

    def on_create(self, delivery: Delivery) -> None:
        self.guarded(self.handle_create, delivery)

    def on_host(self, delivery: Delivery) -> None:
        self.guarded(self.handle_host, delivery)

    def handle_host(self, delivery: Delivery) -> None:
        host_key = topology.host_key(self.cfg.host_id)
        direct = delivery.routing_key == host_key
        try:
            cmd = parse_host(delivery.body, routing_key=delivery.routing_key, host_key=host_key)
        except Rejected as exc:
            self.io.dead_letter(delivery, exc.reason)
            return
        if isinstance(cmd, ListVMs):
            self.io.reply(delivery, messages.success(self.registry.list_vms()))
            self.io.ack(delivery)
            return
        # Any host's user can publish into this queue through the default exchange: only the
        # configured senders may change VMs (docs/security.md).
        refusal = sender_refusal(delivery.props.user_id, self.cfg.command_senders)
        if refusal:
            self.io.dead_letter(delivery, refusal)
            return
        if isinstance(cmd, CreateVM):  # placed on this host by the shop (docs/fleet.md)
            try:
                self.check_image(cmd)
            except Rejected as exc:
                self.io.dead_letter(delivery, exc.reason)
                return
            self.create(delivery, cmd, placed=True)
            return
        request_id = getattr(cmd, "request_id", "")
        if request_id and self.repeated_request(delivery, cmd, request_id):
            return
        claim, record = self.registry.claim(cmd)
        if claim == UNKNOWN:
            if direct:  # broadcasts for other hosts' VMs stay silent
                self.io.reply(delivery, messages.error("unknown vm-id"))
            self.io.ack(delivery)
            return
        if (
            claim == BUSY
            and record is not None
            and (request_id or isinstance(cmd, SetAdminPassword | ResizeVM))
        ):
            reason = "another command is in progress on this VM; try again in a minute"
            self.registry.finish_request(
                record, cmd.command, request_id, COMMAND_FAILED, {"reason": reason}
            )
            self.io.reply(delivery, messages.error(reason))
            self.io.ack(delivery)
            self.io.flush_events()
            return
        if claim == BUSY:
            self.io.reply(
                delivery, messages.error(f"vm-id {cmd.vm_id} has another command in progress")
            )
            self.io.ack(delivery)
            return
        log.info(
            "command started host_id=%s vm_id=%s command=%s",
            self.cfg.host_id,
            cmd.vm_id,
            cmd.command,
        )
        try:
            threading.Thread(
                target=self.work,
                args=(cmd, delivery),
                name=f"{cmd.command}-{cmd.vm_id}",
                daemon=True,
            ).start()
        except BaseException:
            self.registry.release(cmd.vm_id, cmd.command)
            raise

    def repeated_request(
        self, delivery: Delivery, cmd: VMCommand | ConsoleCommand, request_id: str
    ) -> bool:
        """A console request id seen before: re-publish its outcome (done) or wait for the
        first (running); nothing is done again. False for a new request id."""
        state, done = self.registry.request_state(cmd.vm_id, request_id)
        if state == REQUEST_NEW:
            return False
        log.info(
            "repeated request host_id=%s vm_id=%s command=%s request_id=%s state=%s",
            self.cfg.host_id,
            cmd.vm_id,
            cmd.command,
            request_id,
            state,
        )
        with self.registry.lock:
            record = self.registry.records[cmd.vm_id]
        if state == REQUEST_DONE and done is not None:
            self.registry.republish_outcome(record, done)
            self.io.reply(delivery, outcome_response(record, done["type"], done["fields"]))
        else:
            self.io.reply(delivery, messages.error(f"request {request_id} is in progress"))
        self.io.ack(delivery)
        self.io.flush_events()
        return True

    def work(self, cmd: VMCommand | ConsoleCommand, delivery: Delivery) -> None:
        """A host command in its worker thread; the reply and ack go back to the I/O thread."""
        try:
            reply = messages.success(self.commands.run(cmd))
        except Rejected as exc:
            reply = messages.error(exc.reason)
        except Exception as exc:  # noqa: BLE001 - the requester must hear about any failure
            log.exception(
                "command failed host_id=%s vm_id=%s command=%s",
                self.cfg.host_id,
                cmd.vm_id,
                cmd.command,
            )
            reply = messages.error(f"{cmd.command} failed: {str(exc)[:MAX_INTERNAL_REASON]}")
        finally:
            self.registry.release(cmd.vm_id, cmd.command, getattr(cmd, "request_id", ""))

        def finish() -> None:
            if delivery.channel.is_open:
                self.io.reply(delivery, reply)
                self.io.ack(delivery)
            self.update_consuming()

        self.io.from_worker(finish)

    # -- main loop
    def update_consuming(self) -> None:
        want = (
            self.registry.free_slots() > 0
            and not self.stopping.is_set()
            and time.monotonic() >= self.shared_paused_until
        )
        self.io.set_consuming_create(want, self.on_create)

    def request_stop(self, *_args: object) -> None:
        self.stopping.set()

    def serve_once(self, deadline: float) -> None:
        """One connected session: process I/O until stop or `deadline` (monotonic)."""
        next_heartbeat = 0.0
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if not self.io.process(LOOP_TICK):
                return
            if time.monotonic() >= next_heartbeat:
                self.commands.check_liveness()
                self.io.publish_heartbeat()
                next_heartbeat = time.monotonic() + self.cfg.heartbeat_interval
            self.io.flush_events()
            self.io.flush_metrics(max_age=max(self.cfg.metrics_interval, 1.0))
            self.update_consuming()

    def _session(self, connected: Callable[[], None]) -> bool:
        """One broker session: connect, catch up on events and consuming, serve until stopped."""
        self.io.connect(self.on_host)
        self.io.flush_events()
        self.update_consuming()
        connected()
        self.serve_once(float("inf"))
        return self.stopping.is_set()

    def _connection_lost(self, exc: BaseException, retry_in: float) -> None:
        log.warning(
            "broker connection lost host_id=%s error=%r retry_in=%.1fs",
            self.cfg.host_id,
            exc,
            retry_in,
        )
        self.io.close()

    def run(self) -> int:
        """Recover, then serve with reconnects (capped backoff) until SIGTERM/SIGINT."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info(
            "daemon starting host_id=%s state_dir=%s capacity=%s network=%s",
            self.cfg.host_id,
            self.cfg.state_dir,
            self.cfg.capacity,
            self.cfg.network,
        )
        recover(self.commands)
        # The watcher: a QEMU that exits on its own is noticed within a second, not at the next
        # heartbeat (which still checks, as a backstop); never on the connection's thread.
        threading.Thread(
            target=self.commands.watch, args=(self.stopping,), name="watcher", daemon=True
        ).start()
        if self.cfg.pool:  # vmbackend/host/pool.py: the warm pool's own thread
            threading.Thread(
                target=self.pool.run, args=(self.stopping,), name="pool", daemon=True
            ).start()
        if self.cfg.metrics_interval > 0:  # vmbackend/host/sampler.py: its own threads, best-effort
            threading.Thread(
                target=self.sampler.run, args=(self.stopping,), name="metrics", daemon=True
            ).start()
        if certificates.enabled(self.cfg):  # renews VMs' certificates before they expire
            renewer = certificates.Renewer(self.cfg, self.commands.registry, self.machine_of)
            threading.Thread(
                target=renewer.run, args=(self.stopping,), name="tls-renewal", daemon=True
            ).start()
        run_with_reconnect(
            self._session,
            stop=self.stopping,
            errors=CONNECTION_ERRORS,
            on_error=self._connection_lost,
        )
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop consuming and close: unacked deliveries go back to their queues; VMs keep running."""
        log.info(
            "daemon stopping host_id=%s boots_in_progress=%s",
            self.cfg.host_id,
            len(self.registry.boots),
        )
        try:
            self.io.cancel_create()
            if self.io.connection is not None and self.io.connection.is_open:
                self.io.flush_events()
        except CONNECTION_ERRORS:
            pass
        self.io.close()


def main(cfg: Config) -> int:
    return Daemon(cfg).run()
