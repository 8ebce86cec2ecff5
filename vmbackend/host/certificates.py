"""The host's side of TLS: which names a VM's certificate carries, when it gets a new one, and
the renewal loop (docs/tls.md).

The host signs with its own intermediate (WARREN_TLS_DIR: host.key, host.pem, ca.pem, made by
`python -m vmbackend tls host`). A VM's certificate is issued with a key made at that moment and
put into the guest by vmbackend/tls/guest_install.py; the record keeps only the certificate (public), so
the daemon knows when it is due. Read from disk at each use: an operator who replaces the
intermediate needs no daemon restart.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

from vmbackend.host.config import Config
from vmbackend.host.state import READY, VMRecord
from vmbackend.machine.base import MachineError
from vmbackend.protocol.messages import VMCommand
from vmbackend.protocol.server_names import server_name
from vmbackend.tls import authority, guest_install

log = logging.getLogger(__name__)

RENEW_COMMAND = "renew-certificate"  # the registry's busy marker; never on the wire

Report = Callable[..., None]


def enabled(cfg: Config) -> bool:
    return cfg.tls_dir is not None


def names_for(cfg: Config, record: VMRecord) -> list[str]:
    """The VM's own name, `<short-id>.<WARREN_VM_DOMAIN>`, and nothing else: the host's name or
    address is shared by all its VMs (user mode), so a certificate carrying it would let one
    VM's key answer for another. Clients connect to the URL's address and verify this name
    (server_hostname / SNI: docs/tls.md)."""
    return [server_name(record.vm_id, cfg.vm_domain)]


def renew_before(cfg: Config) -> datetime.timedelta:
    return datetime.timedelta(days=cfg.tls_renew_before_days)


def is_due(cfg: Config, record: VMRecord, now: datetime.datetime | None = None) -> bool:
    """Whether the VM needs a (new) certificate now."""
    return authority.needs_renewal(
        record.tls_cert or None, names_for(cfg, record), renew_before=renew_before(cfg), now=now
    )


def issue(cfg: Config, record: VMRecord) -> authority.Leaf:
    """A certificate for the VM with a key made now. Raises authority.TLSError."""
    assert cfg.tls_dir is not None
    issuer = authority.load_issuer(cfg.tls_dir)
    return authority.issue(issuer, names_for(cfg, record), days=cfg.tls_cert_days)


def keep(cfg: Config, vm: VMRecord, leaf: authority.Leaf, report: Report, *, how: str) -> None:
    """Keep the VM's certificate once the guest has it (and, baked, serves it)."""
    report(vm, None, {}, tls_cert=leaf.cert_pem.decode())
    log.info(
        "tls certificate installed host_id=%s vm_id=%s not_after=%s how=%s",
        cfg.host_id,
        vm.vm_id,
        leaf.not_after.isoformat(),
        how,
    )


def install(
    cfg: Config, record: VMRecord, guest: guest_install.Guest, report: Report, *, start: bool
) -> str:
    """Issue the VM a certificate (a fresh key) and put it into the guest; the certificate is
    recorded only once the guest has it. A VM of an image with baked TLS (docs/tls.md) gets its
    file replaced atomically, which the next handshake reads; any other the run-time install.
    Raises authority.TLSError or guest_install.GuestTLSError."""
    leaf = issue(cfg, record)
    if record.tls_mode == "baked":
        guest_install.renew(guest, leaf)
        outcome = "renew"
    else:
        outcome = guest_install.install(guest, leaf, plain_ports=record.plain_ports, start=start)
    keep(cfg, record, leaf, report, how=outcome)
    return outcome


class Renewer:
    """Every `cfg.tls_check_interval` s: each ready VM nobody works on whose certificate is due
    gets a new one, without a restart (guest_install reloads the files). A VM busy with a command is
    left for the next round; a failure is logged and retried next round (the old certificate
    serves until it expires)."""

    def __init__(
        self,
        cfg: Config,
        registry: Any,
        machine_of: Callable[[str], guest_install.Guest | None],
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.machine_of = machine_of
        self.failures = 0  # renewals that failed (not those left for a busy VM), since start

    def due(self, now: datetime.datetime | None = None) -> list[VMRecord]:
        return [
            r for r in self.registry.unattended_ready() if r.tls_cert and is_due(self.cfg, r, now)
        ]

    def renew(self, record: VMRecord) -> bool:
        """One VM's renewal; True when it has its new certificate."""
        from vmbackend.host.rules import CLAIMED

        outcome, current = self.registry.claim(VMCommand(RENEW_COMMAND, record.vm_id))
        if outcome != CLAIMED or current is None:
            return False
        try:
            machine = self.machine_of(record.vm_id)
            if current.status != READY or machine is None:
                return False
            install(self.cfg, current, machine, self.registry.report, start=False)
            return True
        except (authority.TLSError, guest_install.GuestTLSError, MachineError, OSError) as exc:
            self.failures += 1
            log.error(
                "tls renewal failed host_id=%s vm_id=%s error=%s",
                self.cfg.host_id,
                record.vm_id,
                str(exc)[:500],
            )
            return False
        finally:
            self.registry.release(record.vm_id, RENEW_COMMAND)

    def run_once(self, now: datetime.datetime | None = None) -> int:
        """One round; the number of VMs renewed. Each VM on its own: whatever one VM's guest
        answers (or raises), the next VM of the round is still renewed."""
        renewed = 0
        for record in self.due(now):
            try:
                renewed += self.renew(record)
            except Exception as exc:  # noqa: BLE001 - one VM's trouble must not end the round
                log.error(
                    "tls renewal failed host_id=%s vm_id=%s error=%s: %s",
                    self.cfg.host_id,
                    record.vm_id,
                    type(exc).__name__,
                    str(exc)[:500],
                )
                self.failures += 1
        return renewed

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.cfg.tls_check_interval):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the loop must outlive any one VM's trouble
                log.exception("tls renewal round failed host_id=%s", self.cfg.host_id)
