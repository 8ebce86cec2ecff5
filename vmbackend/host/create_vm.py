"""How the daemon takes a create-vm: from the shared queue or placed on this host, answered as a
duplicate, declined or put back when it does not fit, or made from a warm pool VM.

`CreateVMHandling` is a part of `Daemon` (daemon.py), on the connection's thread: it records the
VM durably, then hands the boot to a worker thread (`Commands.start_boot`/`start_claim`).
"""

from __future__ import annotations

import logging
import time

from vmbackend.host.amqp_io import AmqpIO, Delivery
from vmbackend.host.commands import Commands
from vmbackend.host.config import Config
from vmbackend.host.pool import Pool
from vmbackend.host.registry import Registry
from vmbackend.host.rules import (
    DUPLICATE,
    FULL,
    create_response,
    parse_create,
    sender_refusal,
)
from vmbackend.host.state import FAILED, VMRecord
from vmbackend.images import manifest
from vmbackend.protocol import messages
from vmbackend.protocol.messages import CreateVM, Rejected

log = logging.getLogger("vmbackend.host.daemon")  # the daemon's log, as before the split


class CreateVMHandling:
    """The create-vm handlers of the Daemon; the Daemon provides what is declared here."""

    cfg: Config
    registry: Registry
    io: AmqpIO
    commands: Commands
    pool: Pool
    shared_paused_until: float

    def update_consuming(self) -> None:
        raise NotImplementedError

    def handle_create(self, delivery: Delivery) -> None:
        refusal = sender_refusal(delivery.props.user_id, self.cfg.command_senders)
        if refusal:
            self.io.dead_letter(delivery, refusal)
            return
        try:
            cmd = parse_create(delivery.body)  # a pool VM's id too (rules._not_a_pool_id)
            self.check_image(cmd)
        except Rejected as exc:
            self.io.dead_letter(delivery, exc.reason)
            return
        self.create(delivery, cmd, placed=False)

    def check_image(self, cmd: CreateVM) -> None:
        """Rejected when the image is not here (unless the driver needs none: simulated)."""
        if not self.cfg.machines().needs_image:
            return
        try:
            manifest.load(self.cfg.image_dir, cmd.image)
        except manifest.ImageError:
            raise Rejected(f"image {cmd.image} is not available on this host") from None

    def create(self, delivery: Delivery, cmd: CreateVM, *, placed: bool) -> None:
        """Take a create-vm from the shared queue, or one placed on this host (host.<id>)."""
        decision, existing = self.registry.create_decision(cmd)
        if decision == DUPLICATE and existing is not None:
            # Same reply, the VM's latest state re-published, no new VM.
            log.info(
                "duplicate create-vm host_id=%s vm_id=%s status=%s",
                self.cfg.host_id,
                existing.vm_id,
                existing.status,
            )
            self.registry.republish(existing)
            self.io.reply(delivery, messages.success(create_response(existing, self.cfg.host_id)))
            self.io.ack(delivery)
            self.io.flush_events()
            return
        if decision == FULL and placed:
            self.decline(delivery, cmd)
            return
        if decision == FULL:  # no slot, or too big here: hand it to another host
            self.io.requeue(delivery)
            if self.registry.free_slots() > 0:  # too big: let the others see it first
                self.shared_paused_until = time.monotonic() + self.cfg.fallback_pause
            self.update_consuming()
            return
        record, failure = self.claim_or_make_room(cmd), None
        if record is None:
            record, failure = self.registry.add_new(cmd)
        try:
            self.registry.report(record, "instance.accepted", {"image": record.image})
        except Exception:
            self.registry.forget(record.vm_id)  # never promise a VM without its state file
            raise
        log.info(
            "vm accepted host_id=%s vm_id=%s image=%s memory_mb=%s",
            self.cfg.host_id,
            record.vm_id,
            record.image,
            record.memory_mb,
        )
        if failure is not None:
            self.registry.report(
                record, "instance.failed", {"reason": failure}, status=FAILED, reason=failure
            )
        else:
            # The record is durable, so the boot starts before any broker I/O: a connection that
            # drops during the reply, the ack or the flush must not leave an accepted VM that
            # never boots (its redelivered create-vm would only be answered as a duplicate).
            if record.claimed_from:
                self.commands.start_claim(record)
            else:
                self.commands.start_boot(record, None)
        self.io.reply(delivery, messages.success(create_response(record, self.cfg.host_id)))
        self.update_consuming()
        self.io.ack(delivery)
        self.io.flush_events()

    def decline(self, delivery: Delivery, cmd: CreateVM) -> None:
        """A create-vm placed on this host that does not fit (the shop's view was stale, or
        another VM came first): instance.declined with the reason, confirmed, then the ack. The
        shop places it again (docs/fleet.md); nothing is recorded here."""
        reason = self.registry.room_refusal(cmd) or "no room on this host"
        log.warning(
            "create-vm declined host_id=%s vm_id=%s memory_mb=%s vcpus=%s disk_gb=%s reason=%s",
            self.cfg.host_id,
            cmd.vm_id,
            cmd.memory_mb,
            cmd.vcpus,
            cmd.disk_gb,
            reason,
        )
        self.io.publish_confirmed(
            messages.event(
                messages.INSTANCE_DECLINED,
                instance_id=cmd.vm_id,
                host_id=self.cfg.host_id,
                seq=0,
                reason=reason,
                memory_mb=cmd.memory_mb,
                vcpus=cmd.vcpus,
                disk_gb=cmd.disk_gb,
            )
        )
        self.io.reply(delivery, messages.error(f"create-vm declined: {reason}"))
        self.io.ack(delivery)

    def claim_or_make_room(self, cmd: CreateVM) -> VMRecord | None:
        """A ready pool VM claimed for `cmd` (vmbackend/host/pool.py), else None after giving a pool
        VM's slot up when the host has no idle one (a paying order first)."""
        if not self.cfg.pool:
            return None
        record = self.registry.claim_pool(cmd)
        while record is None and self.registry.pool_in_the_way(cmd):
            victim = self.registry.evict_pool()
            if victim is None:
                break
            self.commands.retire_pool(victim, "its room went to a paying order")
        self.pool.nudge.set()  # a replacement (or the pool is smaller now)
        return record
