"""The host's VMs and the rules about them: pure Python, no pika, no QEMU.

What a reader can look up here: the VMRecords and their slots, which vm-ids have a command in
progress (the busy set) or a boot running, whether a command may run now on a VM, what a
duplicate create-vm gets, which state event to re-publish, and how one message body becomes a
command or a reason to dead-letter it. Every status change goes through `Registry.report`, which
checks it against `state.TRANSITIONS`, writes the state file durably and queues the event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from vmbackend.host import network, ports
from vmbackend.host.config import Config
from vmbackend.host.pool_books import PoolBooks
from vmbackend.host.rules import (
    BUSY,
    CLAIMED,
    COMMAND_DONE,
    COMMAND_FAILED,
    DUPLICATE,
    FULL,
    MAX_REQUESTS,
    NEW,
    REQUEST_DONE,
    REQUEST_NEW,
    REQUEST_RUNNING,
    UNKNOWN,
    new_record,
    state_event,
)
from vmbackend.host.state import (
    BOOTING,
    DELETED,
    READY,
    StateStore,
    VMRecord,
    move,
)
from vmbackend.protocol import capacity, messages
from vmbackend.protocol.messages import (
    ConsoleCommand,
    CreateVM,
    VMCommand,
)

log = logging.getLogger(__name__)


class Registry(PoolBooks):
    """This host's VM records, the slots they hold and what is being done to them. Thread-safe."""

    def __init__(self, cfg: Config, store: StateStore, on_event: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.store = store
        self.on_event = on_event  # asks the AMQP side to flush the outbox
        self.lock = threading.RLock()
        self.records: dict[str, VMRecord] = {}
        # vm-ids with a start/stop/restart/delete in progress -> the commands holding them (a
        # delete-vm may join a start-vm whose boot it cancels: two holders, two releases).
        self.busy: dict[str, list[str]] = {}
        # vm-id -> (Boot or Heal, Thread) of a boot in a worker thread: a create-vm's first boot,
        # a start-vm's boot or a self-healing. delete-vm cancels it through `.cancel`.
        self.boots: dict[str, Any] = {}
        # vm-id -> the request id of the console command running on it (a repeat waits for it).
        self.running_requests: dict[str, str] = {}
        # Signalled when a hold is released or a boot ends: a delete-vm waits on it for what
        # runs beside it to finish (Commands.delete).
        self.changed = threading.Condition(self.lock)

    def load(self) -> list[VMRecord]:
        with self.lock:
            self.records = self.store.load_all()
            return list(self.records.values())

    # -- state and events
    def report(
        self, record: VMRecord, event_type: str | None, fields: dict[str, Any], **updates: Any
    ) -> None:
        """Apply `updates` (a status change checked by `state.move`), queue the event, write the
        state file; then ask for a flush. Durable before it returns; raises IllegalTransition
        (changing nothing) for a status change the table forbids."""
        with self.lock:
            if "status" in updates:
                move(record, updates.pop("status"))
            for key, value in updates.items():
                setattr(record, key, value)
            if record.pool:
                event_type = None  # a pool VM is nobody's until claimed: it tells no one
            if event_type is not None:
                record.seq += 1
                record.outbox.append(
                    messages.event(
                        event_type,
                        instance_id=record.vm_id,
                        host_id=self.cfg.host_id,
                        seq=record.seq,
                        **fields,
                    )
                )
                if event_type not in (COMMAND_DONE, COMMAND_FAILED):  # outcomes are no state
                    record.last_event = {"type": event_type, "fields": dict(fields)}
            self.store.save(record)
        if event_type is not None:
            self.on_event()

    def pending_events(self) -> list[tuple[str, list[dict[str, Any]]]]:
        with self.lock:
            return [(r.vm_id, list(r.outbox)) for r in self.records.values() if r.outbox]

    def confirmed(self, vm_id: str, message_id: str) -> bool:
        """The broker confirmed the event: drop it from the outbox (and forget a deleted VM
        whose last event that was). False when there is nothing more to send for `vm_id`."""
        with self.lock:
            record = self.records.get(vm_id)
            if record is None or not record.outbox:
                return False
            if record.outbox[0]["message_id"] == message_id:
                record.outbox.pop(0)
            if record.status == DELETED and not record.outbox:
                self.store.remove(vm_id, record.machine_name)
                del self.records[vm_id]
            else:
                self.store.save(record)
            return True

    # -- capacity
    def free_slots(self) -> int:
        """Slots a customer's create-vm may take: pool VMs give theirs up (vmbackend/host/pool.py)."""
        with self.lock:
            used = sum(1 for r in self.records.values() if r.holds_slot() and not r.pool)
        return self.cfg.capacity - used

    def idle_slots(self) -> int:
        """Slots nobody holds, pool VMs included (where a new pool VM may start)."""
        with self.lock:
            used = sum(1 for r in self.records.values() if r.holds_slot())
        return self.cfg.capacity - used

    def resources(self, *, include_pool: bool = False) -> capacity.Resources:
        """The host's totals (config) and what its VMs holding a slot use (docs/fleet.md); pool
        VMs only with `include_pool`: they give way to customers (vmbackend/host/pool.py)."""
        totals = capacity.Resources(
            memory_total_mb=self.cfg.host_memory_mb,
            vcpus_total=capacity.overcommitted_vcpus(self.cfg.host_cpus, self.cfg.cpu_overcommit),
            disk_total_gb=self.cfg.host_disk_gb,
        )
        with self.lock:
            held = [
                r for r in self.records.values() if r.holds_slot() and (include_pool or not r.pool)
            ]
            return capacity.usage(totals, held)

    def room_refusal(self, cmd: CreateVM) -> str | None:
        """Why this host has no room for `cmd` now (no free slot, or its size does not fit);
        None when it has."""
        with self.lock:
            if self.free_slots() <= 0:
                return f"this host has no free slot (capacity {self.cfg.capacity})"
            return capacity.refusal(self.resources(), cmd)

    def resources_without(self, vm_id: str) -> capacity.Resources:
        """The host's totals and what every VM holding a slot except `vm_id` uses (a resize
        asks whether the VM's new size fits next to them)."""
        resources = self.resources()
        with self.lock:
            record = self.records.get(vm_id)
            if record is None or not record.holds_slot():
                return resources
            return capacity.Resources(
                memory_total_mb=resources.memory_total_mb,
                vcpus_total=resources.vcpus_total,
                disk_total_gb=resources.disk_total_gb,
                memory_used_mb=resources.memory_used_mb - record.memory_mb,
                vcpus_used=resources.vcpus_used - record.vcpus,
                disk_used_gb=resources.disk_used_gb - record.disk_gb,
            )

    def running(self) -> int:
        with self.lock:
            return sum(
                1 for r in self.records.values() if r.status in (BOOTING, READY) and not r.pool
            )

    def list_vms(self) -> list[dict[str, Any]]:
        with self.lock:
            records = [r for r in self.records.values() if r.status != DELETED and not r.pool]
        return [
            {
                "vm-id": r.vm_id,
                "host-id": self.cfg.host_id,
                "status": r.status,
                "image": r.image,
                "ip-addresses": r.ip_addresses,
                "management-url": r.management_url,
                "amqp-url": r.amqp_url,
                "memory-mb": r.memory_mb,
                "vcpus": r.vcpus,
            }
            for r in records
        ]

    # -- create-vm
    def create_decision(self, cmd: CreateVM) -> tuple[str, VMRecord | None]:
        """NEW, DUPLICATE (with the record) or FULL (no slot, or it does not fit: hand it to
        another host; `room_refusal` says why)."""
        with self.lock:
            existing = self.records.get(cmd.vm_id)
            if existing is not None and existing.status != DELETED:
                return DUPLICATE, existing
            if self.room_refusal(cmd) is not None:
                return FULL, None
            return NEW, None

    def add_new(self, cmd: CreateVM, *, pool: bool = False) -> tuple[VMRecord, str | None]:
        """Record a new VM with its ports or tap; the reason it cannot boot, if any."""
        with self.lock:
            record = new_record(self.cfg, cmd)
            record.pool = pool
            failure = None
            try:
                self._attach_network(record)
            except (ports.NoFreePorts, network.NetworkError) as exc:
                failure = str(exc)
            self.records[record.vm_id] = record
        return record, failure

    def _attach_network(self, record: VMRecord) -> None:
        """Ports (user mode) or tap name + MAC (bridge mode), unique among this host's VMs."""
        others = [r for r in self.records.values() if r.vm_id != record.vm_id]
        if record.network == "bridge":
            record.tap = network.tap_name(record.vm_id)
            record.mac = network.mac_for(record.vm_id, taken=[r.mac for r in others if r.mac])
            return
        used = [p for r in others for p in r.ports.values()]
        names = ["management", "amqp"]
        if self.cfg.tls_dir is not None:  # amqps and https too (docs/tls.md)
            names += ["amqps", "https"]
        chosen = ports.allocate(
            len(names),
            used=used,
            bind_address=self.cfg.bind_address,
            port_min=self.cfg.port_min,
            port_max=self.cfg.port_max,
        )
        record.ports = dict(zip(names, chosen, strict=True))

    def forget(self, vm_id: str) -> None:
        with self.lock:
            self.records.pop(vm_id, None)

    def republish(self, record: VMRecord) -> None:
        """Queue the VM's current state again (a duplicate create-vm), with a newer seq."""
        event_type, fields = state_event(record)
        self.report(record, event_type, fields)

    # -- host commands
    def claim(self, cmd: VMCommand | ConsoleCommand) -> tuple[str, VMRecord | None]:
        """CLAIMED (the vm-id is now busy: call `release` when done), UNKNOWN or BUSY.

        A delete-vm wins over whatever holds the VM (a start, restart, resize, a password change):
        the customer cancelling must neither wait for a boot's deadline nor be told to try again.
        It joins the holders (only one delete at a time); from then on no boot may start on the
        VM (`start_job`), and `Commands.delete` cancels the running one and waits for the other
        holders to finish before it destroys the VM."""
        with self.lock:
            record = self.records.get(cmd.vm_id)
            if record is None or record.status == DELETED or record.pool:
                return UNKNOWN, None
            holders = self.busy.setdefault(cmd.vm_id, [])
            if holders and (cmd.command != "delete-vm" or "delete-vm" in holders):
                return BUSY, record
            holders.append(cmd.command)
            request_id = getattr(cmd, "request_id", "")
            if request_id:
                self.running_requests[cmd.vm_id] = request_id
            return CLAIMED, record

    def release(self, vm_id: str, command: str = "", request_id: str = "") -> None:
        """Drop one hold on `vm_id` (the one `command` took, else any)."""
        with self.lock:
            if request_id and self.running_requests.get(vm_id) == request_id:
                del self.running_requests[vm_id]
            holders = self.busy.get(vm_id, [])
            if command in holders:
                holders.remove(command)
            elif holders:
                holders.pop()
            if not holders:
                self.busy.pop(vm_id, None)
            self.changed.notify_all()

    def others_holding(self, vm_id: str, command: str) -> list[str]:
        """The commands holding `vm_id` besides one hold of `command`."""
        with self.lock:
            holders = list(self.busy.get(vm_id, []))
            if command in holders:
                holders.remove(command)
            return holders

    def being_deleted(self, vm_id: str) -> bool:
        with self.lock:
            record = self.records.get(vm_id)
            return "delete-vm" in self.busy.get(vm_id, []) or (
                record is not None and record.status == DELETED
            )

    def start_job(self, vm_id: str, job: Any, thread: threading.Thread) -> None:
        """Register a boot or a heal (`job`, with `.cancel` and `.machine`) and start its thread,
        both under the lock: whoever finds a job in `boots` may join its thread at once (a delete
        that found it registered but not started yet failed with "cannot join thread before it
        is started", issue 20). Rejected, starting nothing, when the VM is being deleted."""
        with self.lock:
            if self.being_deleted(vm_id):
                raise messages.Rejected("cancelled: the VM is being deleted")
            self.boots[vm_id] = (job, thread)
            thread.start()

    def end_job(self, vm_id: str) -> None:
        """The boot or heal of `vm_id` ended (its thread's last step)."""
        with self.lock:
            self.boots.pop(vm_id, None)
            self.changed.notify_all()

    def boot_of(self, vm_id: str) -> Any:
        with self.lock:
            return self.boots.get(vm_id)

    def unattended_ready(self) -> list[VMRecord]:
        """Ready VMs nobody works on: the ones whose QEMU the liveness check may look at."""
        with self.lock:
            return [r for r in self.records.values() if self.is_unattended_ready(r)]

    def is_unattended_ready(self, record: VMRecord) -> bool:
        with self.lock:
            return (
                record.status == READY
                and record.vm_id not in self.busy
                and record.vm_id not in self.boots
            )

    # -- the console's requests (idempotency by request id)
    def request_state(self, vm_id: str, request_id: str) -> tuple[str, dict[str, Any] | None]:
        """REQUEST_DONE with the remembered outcome, REQUEST_RUNNING, or REQUEST_NEW."""
        with self.lock:
            record = self.records.get(vm_id)
            if record is None or not request_id:
                return REQUEST_NEW, None
            for done in record.requests:
                if done.get("request_id") == request_id:
                    return REQUEST_DONE, done
            if self.running_requests.get(vm_id) == request_id:
                return REQUEST_RUNNING, None
            return REQUEST_NEW, None

    def finish_request(
        self,
        record: VMRecord,
        command: str,
        request_id: str,
        event_type: str,
        fields: dict[str, Any],
    ) -> None:
        """Publish a console command's outcome (command_done/failed) and, with a request id,
        remember it in the same durable write: a repeat re-publishes it instead of acting."""
        body = {"command": command, **({"request_id": request_id} if request_id else {}), **fields}
        with self.lock:
            requests = list(record.requests)
            if request_id:
                requests = [r for r in requests if r.get("request_id") != request_id]
                requests.append(
                    {
                        "request_id": request_id,
                        "command": command,
                        "type": event_type,
                        "fields": body,
                    }
                )
            self.report(record, event_type, body, requests=requests[-MAX_REQUESTS:])

    def republish_outcome(self, record: VMRecord, done: dict[str, Any]) -> None:
        """A repeated request id: its outcome again (a newer seq, the same fields)."""
        self.report(record, str(done["type"]), dict(done["fields"]))
