"""TLS of a VM whose image bakes the listeners in (docs/tls.md): its file, then its public ports.

Such an image's RabbitMQ listens on amqps/https from its first start and reads one file
(server.pem; the image's is a throw-away) at every handshake. A VM gets its own file written and
its public TLS ports forwarded only once that file answers (`Machine.open_tls_ports`), so the
throw-away never answers a customer. A fresh restore writes the file in place (`put`, ~0.3 s)
and checks it in a thread beside personalization (`Early`, joined at ready); any other boot
writes it with the atomic `renew` (certificates.install, also the renewal round) and checks it
at ready: a new QEMU (start, heal) has no forwards until then. The way is chosen at a VM's first
launch and recorded (`VMRecord.tls_mode`): a VM made from an older image keeps the run-time
install for its whole life.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time

from vmbackend.host import certificates
from vmbackend.host.config import Config
from vmbackend.host.state import VMRecord
from vmbackend.images import manifest
from vmbackend.machine.base import Machine, MachineError
from vmbackend.tls import authority, guest_install

log = logging.getLogger(__name__)

BAKED = "baked"
INSTALLED = "installed"  # the listeners are started at run time (guest_install.install)


def mode_for(cfg: Config, image: str) -> str:
    """BAKED when the image the VM is made from bakes its TLS listeners in."""
    if not cfg.machines().needs_image:
        return INSTALLED  # a simulated VM has no guest
    try:
        return BAKED if manifest.load(cfg.image_dir, image).guest.tls_baked else INSTALLED
    except manifest.ImageError:
        return INSTALLED  # the launch reports the missing image itself


def choose_mode(cfg: Config, record: VMRecord, report: certificates.Report) -> None:
    """Record the VM's way to TLS at its first launch, before QEMU's command line is made."""
    if not record.tls_mode:
        report(record, None, {}, tls_mode=mode_for(cfg, record.image))


def applies(cfg: Config, record: VMRecord, machine: Machine | None) -> bool:
    """Whether the VM gets TLS the baked way on a host that gives TLS."""
    return (
        record.tls_mode == BAKED
        and certificates.enabled(cfg)
        and machine is not None
        and machine.speaks_tls()
    )


def gated(record: VMRecord) -> bool:
    """Whether the host forwards the VM's public TLS ports at run time (user mode with TLS)."""
    return record.network != "bridge" and "amqps" in record.ports


def der(cert_pem: str | bytes) -> bytes:
    text = cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem
    return ssl.PEM_cert_to_DER_cert(text)


def open_ports(machine: Machine, record: VMRecord, cert_pem: str | bytes) -> None:
    started = time.monotonic()
    machine.open_tls_ports(der(cert_pem))
    log.info("tls ports open vm_id=%s seconds=%.2f", record.vm_id, time.monotonic() - started)


class Early:
    """A fresh restore's TLS: a certificate with a key made now, written over the throw-away in
    place (its ports are not forwarded yet), kept in the record, then checked and its ports
    forwarded in a thread beside personalization (QMP and TCP only, never the guest agent)."""

    def __init__(
        self, cfg: Config, record: VMRecord, machine: Machine, report: certificates.Report
    ) -> None:
        try:
            leaf = certificates.issue(cfg, record)
            guest_install.put(machine, leaf)
        except (authority.TLSError, guest_install.GuestTLSError) as exc:
            raise MachineError(f"TLS certificate: {exc}") from exc
        # Kept before the check: the check gates the ports, the record only says which
        # certificate to check (a daemon restarted now checks this one, finish()).
        certificates.keep(cfg, record, leaf, report, how="put")
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._open, args=(machine, record, leaf.cert_pem), name=f"tls-{record.vm_id}"
        )
        self.thread.start()

    def _open(self, machine: Machine, record: VMRecord, cert_pem: bytes) -> None:
        try:
            open_ports(machine, record, cert_pem)
        except BaseException as exc:  # noqa: BLE001 - raised in the boot's thread by join()
            self.error = exc

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def start(
    cfg: Config, record: VMRecord, machine: Machine | None, report: certificates.Report
) -> Early | None:
    """Once the guest agent answers: a restored baked VM with no certificate yet gets `Early`;
    None for any other (its certificate comes the common way, `certificates.install`)."""
    if machine is None or not applies(cfg, record, machine) or not gated(record):
        return None
    if record.boot != "restore" or not certificates.is_due(cfg, record):
        return None
    return Early(cfg, record, machine, report)


def finish(cfg: Config, record: VMRecord, machine: Machine | None, early: Early | None) -> None:
    """At ready, after the VM's certificate is in place: its public TLS ports forward to it.
    A claimed pool VM's forwards exist since its own boot (a renewed file needs none)."""
    if early is not None:
        early.join()
    elif machine is not None and applies(cfg, record, machine) and gated(record):
        if record.tls_cert and not record.claimed_from:
            open_ports(machine, record, record.tls_cert)


def recheck(cfg: Config, record: VMRecord, machine: Machine) -> None:
    """A ready VM adopted by a restarted daemon: its forwards may be missing (the daemon died
    between its file and its ports), so check and open them again; the ones there are kept."""
    if not (applies(cfg, record, machine) and gated(record) and record.tls_cert):
        return
    try:
        open_ports(machine, record, record.tls_cert)
    except (MachineError, ValueError) as exc:
        log.error("tls recheck failed vm_id=%s error=%s", record.vm_id, str(exc)[:300])
