"""Finishing a pool claim (vmbackend/host/pool.py): a ready pool VM becomes the order's VM.

`ClaimBoot` is a `Boot` whose machine is already running: instead of launching and waiting for
a guest, it gives the order's admin through the management API (`ClaimBoot.swap_admin`:
idempotent, so a claim resumed after a daemon SIGKILL finishes it), grows the disk when the
order's is larger, and then goes the common way (`wait_rabbitmq`: the management API answers
with the order's credentials, limits, runtime, `instance.ready`); the pool's random admin is
deleted after that (`drop_pool_admin`), so the customer does not wait for it.

Why the order's credentials replace the pool's, instead of the host handing the pool's back: the
shop generated, encrypted and shows the order's password already, the create-vm carries it as
for any VM, and a console rotation works on it the same way; handing a generated password back
would need a new secret-carrying reply or event (events are stored by the broker and the shop)
for one path only. The swap costs a few HTTP calls (0.16 s median on the real image).

Should any of it fail (the pool VM died, its API refuses), the VM is booted the ordinary way
(the image's saved state, else cold) on a fresh folder: a claim never loses the order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from vmbackend.host.boot import Boot, Cancelled, cleanup, urls_for
from vmbackend.host.state import BOOTING
from vmbackend.host.steps import StepClock
from vmbackend.machine.base import MachineError, MachineGone
from vmbackend.machine.management_api import WRITE_TIMEOUT, ManagementAPI, ManagementAPIError
from vmbackend.machine.qemu import VMSpec

log = logging.getLogger(__name__)


class ClaimBoot(Boot):
    """Make the claimed pool VM the order's; on failure boot it the ordinary way. `resumed`: a
    claim a daemon restart cut off (its admin swap may be done already)."""

    resumed = False
    fell_back = False  # the claim failed: the VM boots the ordinary way (`fall_back`)

    def wait_guest(self) -> list[str]:
        if self.fell_back:  # a fresh QEMU of the order's own: nothing to swap
            return super().wait_guest()
        self._check_cancel()
        machine = self.machine
        if machine is None:
            raise MachineError("the pool VM's QEMU is not known")
        record = self.record
        source = record.claimed_from
        if record.status != BOOTING:
            self.report(record, None, {}, status=BOOTING)
        machine.hand_over(record.admin_username, record.admin_password, record.limits)
        _management, _amqp, probe = urls_for(self.cfg, record, record.ip_addresses)

        def check(doing: str) -> None:
            self._check_cancel()
            if not machine.is_running():
                raise MachineGone(f"the pool VM's QEMU exited while {doing}")

        try:
            self.swap_admin(probe, machine.spec, source, check)
        except ManagementAPIError as exc:
            raise MachineError(f"admin swap: {exc}") from exc
        if record.disk_gb > int(source.get("disk_gb", record.disk_gb)):
            machine.grow_running_disk(record.disk_gb)
        return list(record.ip_addresses)

    def swap_admin(
        self, probe: str, spec: VMSpec, source: dict[str, Any], check: Callable[[str], None]
    ) -> None:
        """The order's admin next to the pool's. A fresh claim goes straight to it (the pool
        VM's API answered with the pool admin when it was made ready: `personalize.swap_admin`'s
        two look-ups would cost two requests) and leaves the check that the order's credentials
        work to `wait_rabbitmq` (its api/overview with them: a whoami here would ask twice); a
        resumed one first asks whether it was done. The pool's admin goes after instance.ready
        (`drop_pool_admin`)."""
        me = ManagementAPI(probe, spec.admin_user, spec.admin_password)
        if self.resumed:
            try:
                me.whoami()
                return
            except ManagementAPIError:
                pass
        clock = StepClock()
        old = ManagementAPI(
            probe,
            str(source.get("admin_username", "")),
            str(source.get("admin_password", "")),
            timeout=WRITE_TIMEOUT,
        )
        check("giving the order's admin")
        old.set_user(me.user, spec.admin_password)
        clock.mark("set_user")
        old.set_permissions(me.user)
        clock.mark("set_permissions")
        log.info(
            "event=claim_swapped host_id=%s vm_id=%s %s",
            self.cfg.host_id,
            self.record.vm_id,
            clock.fields(),
        )

    def drop_pool_admin(self, source: dict[str, Any]) -> None:
        """Delete the pool's admin once the order's VM is ready: the customer is not kept
        waiting for it. Until it is gone the record keeps `claimed_from`, so a daemon killed
        before this finishes the claim again on its next start (recovery: `pool claim
        resumed`). A refusal here leaves the VM serving and the record as it is: logged, and
        tried again on the next start."""
        old_user = str(source.get("admin_username", ""))
        if old_user and old_user != self.record.admin_username:
            machine = self.machine
            if machine is None:
                return
            _management, _amqp, probe = urls_for(self.cfg, self.record, self.record.ip_addresses)
            me = ManagementAPI(probe, machine.spec.admin_user, machine.spec.admin_password)
            started = time.monotonic()
            try:
                me.delete_user(old_user)
            except ManagementAPIError as exc:
                log.warning(
                    "event=pool_admin_not_deleted host_id=%s vm_id=%s error=%s",
                    self.cfg.host_id,
                    self.record.vm_id,
                    str(exc)[:300],
                )
                return
            log.info(
                "event=pool_admin_deleted host_id=%s vm_id=%s seconds=%.3f",
                self.cfg.host_id,
                self.record.vm_id,
                time.monotonic() - started,
            )
        self.report(self.record, None, {}, claimed_from={})

    def run(self) -> None:
        if self.machine is None:  # the pool VM's QEMU is gone (e.g. found so after a restart)
            self.fall_back()
            return
        try:
            source = dict(self.record.claimed_from)
            addresses = self.wait_guest()
            self.wait_rabbitmq(addresses)
        except Cancelled:
            log.info("claim cancelled host_id=%s vm_id=%s", self.cfg.host_id, self.record.vm_id)
            return
        except Exception as exc:  # noqa: BLE001 - the order must still get a VM
            if self.cancel.is_set():
                return
            log.warning(
                "pool claim failed, booting instead host_id=%s vm_id=%s error=%s",
                self.cfg.host_id,
                self.record.vm_id,
                str(exc)[:300],
            )
            self.fall_back()
            return
        self.drop_pool_admin(source)

    def fall_back(self) -> None:
        """Throw the pool VM away and boot the order's VM the ordinary way (restore, else cold)."""
        cleanup(self.cfg, self.store, self.record, self.machine)
        self.machine = None
        self.fell_back = True
        # The pool VM's certificate went with its disk: the fresh VM gets its own (Boot._tls).
        self.report(
            self.record,
            None,
            {},
            machine_id="",
            claimed_from={},
            tls_cert="",
            boot="",
            stage="",
            seconds=0.0,
        )
        super().run()
