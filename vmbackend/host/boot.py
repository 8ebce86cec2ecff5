"""Booting one VM on top of Machine: launch, wait for the guest, wait for RabbitMQ, report.

One `Boot` per VM in a worker thread, for a create-vm or a start-vm (its disk); each step is a
method of its own, `run()` chains them. A VM never ready ends `instance.failed` plus cleanup; one
ready once `instance.lost`, disk kept (only delete-vm removes it), or in a self-healing's restart
(`healing=True`) records why; a RabbitMQ that never answers fails with its log's tail. Each state
change goes through `report` (record, state file, event): a killed daemon resumes from the last
one. TLS of images with baked listeners: baked_tls.py."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable

from vmbackend.host import baked_tls, certificates, network
from vmbackend.host.config import Config
from vmbackend.host.state import BOOTING, FAILED, LOST, READY, StateStore, VMRecord
from vmbackend.host.steps import StepClock
from vmbackend.machine.base import Machine, MachineError
from vmbackend.machine.qemu import TLS_AMQP_PORT, TLS_MANAGEMENT_PORT, TapNet, UserNet, VMSpec
from vmbackend.tls import authority, guest_install

log = logging.getLogger(__name__)

STAGES = ("vm_starting", "guest_up", "rabbitmq_starting")
GUEST_MANAGEMENT_PORT = 15672
GUEST_AMQP_PORT = 5672
MAX_REASON = 3000  # the event's limit is 4000 (messages.MAX_REASON)
# The guest's RabbitMQ log when the management API never answered: the files' tails, else the
# unit's journal. Bounded: 30 lines each, LOG_TAIL_CHARS in the reason.
RABBITMQ_LOG_COMMAND = (
    'found=; for f in /var/log/rabbitmq/*.log; do [ -s "$f" ] && found=1 && tail -n 30 "$f"; '
    'done; [ -n "$found" ] || journalctl -u rabbitmq-server -n 30 --no-pager -o cat 2>&1'
)
LOG_TAIL_CHARS = 1500
LOG_EXEC_SECONDS = 20.0

# report(record, event_type or None, event fields, record field updates)
Report = Callable[..., None]


class Cancelled(Exception):
    """The VM was deleted while it booted."""


def spec_for(cfg: Config, record: VMRecord) -> VMSpec:
    """The Machine's VMSpec for a recorded VM."""
    if record.network == "bridge":
        net: UserNet | TapNet = TapNet(tap=record.tap, mac=record.mac)
    else:
        net = UserNet(
            cfg.bind_address,
            record.ports["management"],
            record.ports["amqp"],
            amqps_port=record.ports.get("amqps"),
            https_port=record.ports.get("https"),
            # Closing the plain ports needs the TLS ones open (a host with TLS).
            plain_ports=record.plain_ports or "amqps" not in record.ports,
            tls_gated=record.tls_mode == baked_tls.BAKED,  # forwarded once its own cert answers
        )
    return VMSpec(
        vm_id=record.machine_name,  # QEMU's name: a claimed pool VM keeps its QEMU
        image=record.image,
        memory_mb=record.memory_mb,
        vcpus=record.vcpus,
        disk_gb=record.disk_gb,
        hostname=record.hostname,
        admin_user=record.admin_username,
        admin_password=record.admin_password,
        network=net,
        limits=dict(record.limits),
    )


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def urls_for(cfg: Config, record: VMRecord, addresses: list[str]) -> tuple[str, str, str]:
    """(management URL for customers, AMQP URL without password, URL the daemon probes)."""
    user = record.admin_username
    if record.network == "bridge":
        guest_ip = network.preferred_address(addresses)
        if guest_ip is None:
            raise MachineError("the guest reported no usable address on the bridge")
        host = _host_in_url(guest_ip)
        management = f"http://{host}:{GUEST_MANAGEMENT_PORT}/"
        if record.tls_cert:
            return (
                f"https://{host}:{TLS_MANAGEMENT_PORT}/",
                f"amqps://{user}@{host}:{TLS_AMQP_PORT}/",
                management,
            )
        return management, f"amqp://{user}@{host}:{GUEST_AMQP_PORT}/", management
    advertised = _host_in_url(cfg.advertised_host)
    mport, aport = record.ports["management"], record.ports["amqp"]
    net = spec_for(cfg, record).network
    assert isinstance(net, UserNet)
    probe = f"http://{_host_in_url(net.management_bind)}:{mport}/"
    if record.tls_cert and "amqps" in record.ports:  # the customer's URLs are the TLS ones
        return (
            f"https://{advertised}:{record.ports['https']}/",
            f"amqps://{user}@{advertised}:{record.ports['amqps']}/",
            probe,
        )
    return f"http://{advertised}:{mport}/", f"amqp://{user}@{advertised}:{aport}/", probe


def rabbitmq_log_tail(machine: Machine) -> str:
    """The last lines of the guest's RabbitMQ log, one line, bounded; a note when unreadable."""
    try:
        _code, out = machine.guest_exec(
            "/bin/sh", ["-c", RABBITMQ_LOG_COMMAND], timeout=LOG_EXEC_SECONDS
        )
    except MachineError as exc:
        return f"(not readable: {str(exc)[:200]})"
    lines = [line.strip() for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
    return " | ".join(lines[-30:])[-LOG_TAIL_CHARS:] or "(empty)"


def safe_reason(exc: BaseException, record: VMRecord) -> str:
    """The failure text for events and logs: no password, bounded length."""
    text = str(exc) or type(exc).__name__
    if record.admin_password:
        text = text.replace(record.admin_password, "***")
    return text[:MAX_REASON]


class Boot:
    """Boot one recorded VM to readiness (or resume a boot after a daemon restart).

    `existing_disk`: a start-vm of a VM that has a disk already (boot it again, always cold)
    instead of a create-vm's first launch. `healing`: one restart attempt of a self-healing (the
    `instance.restarting` event was published already; a failure is left to the restart policy).
    `cancel`: shared with whoever may cancel it (delete-vm), e.g. across a heal's attempts.
    """

    tls_early: baked_tls.Early | None = None  # a restore's TLS check, joined at ready

    def __init__(
        self,
        cfg: Config,
        store: StateStore,
        record: VMRecord,
        report: Report,
        machine: Machine | None = None,
        *,
        existing_disk: bool = False,
        healing: bool = False,
        cancel: threading.Event | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.record = record
        self.report = report
        self.machine = machine
        self.existing_disk = existing_disk
        self.healing = healing
        self.cancel = cancel if cancel is not None else threading.Event()
        self.started = time.monotonic()

    # -- helpers
    def _deadline(self) -> float:
        """The boot deadline as a monotonic time; counted from the first launch, across restarts."""
        started = self.record.boot_started_at or time.time()
        remaining = started + self.cfg.boot_deadline - time.time()
        return time.monotonic() + max(0.0, remaining)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(self.record.vm_id)

    def _stage(self, stage: str) -> None:
        """Publish a progress stage once (a resumed boot does not repeat earlier stages)."""
        done = STAGES.index(self.record.stage) if self.record.stage in STAGES else -1
        if STAGES.index(stage) > done:
            self.report(self.record, "instance.progress", {"stage": stage}, stage=stage)

    # -- steps
    def _new_machine(self) -> Machine:
        """The record's Machine (not started yet), its tap created first in bridge mode."""
        driver = self.cfg.machines()
        if driver.needs_tap and self.record.network == "bridge":
            network.create_tap(self.record.tap, self.cfg.bridge)
        self.machine = driver.new(
            spec_for(self.cfg, self.record),
            self.store.vm_dir(self.record.machine_name),
            self.cfg.image_dir,
        )
        return self.machine

    def launch(self) -> None:
        if self.existing_disk:
            self.relaunch()
            return
        self._check_cancel()
        if not self.record.boot_started_at:  # the boot deadline and `seconds` count from here
            self.report(self.record, None, {}, boot_started_at=time.time())
        self._stage("vm_starting")
        baked_tls.choose_mode(self.cfg, self.record, self.report)  # before QEMU's forwards
        machine = self._new_machine()
        boot = machine.launch(allow_restore=self.cfg.restore)
        if self.cancel.is_set():  # delete-vm arrived while QEMU was starting: no orphan VM
            machine.kill()
            raise Cancelled(self.record.vm_id)
        self.report(self.record, None, {}, status=BOOTING, boot=boot)
        log.info(
            "vm launched host_id=%s vm_id=%s boot=%s pid=%s",
            self.cfg.host_id,
            self.record.vm_id,
            boot,
            machine.pid,
        )

    def relaunch(self) -> None:
        """Start QEMU again on the VM's own disk (start-vm of a stopped or lost VM)."""
        machine = self._new_machine()
        started = time.time()
        boot = machine.start()
        if self.cancel.is_set():  # delete-vm arrived while QEMU was starting: no orphan VM
            machine.kill()
            raise Cancelled(self.record.vm_id)
        # A heal announced itself with instance.restarting; a start-vm says instance.started.
        event = None if self.healing else "instance.started"
        self.report(
            self.record,
            event,
            {},
            status=BOOTING,
            stage="vm_starting",
            boot=boot,
            boot_started_at=started,
        )
        log.info(
            "vm started host_id=%s vm_id=%s pid=%s",
            self.cfg.host_id,
            self.record.vm_id,
            machine.pid,
        )

    def wait_guest(self) -> list[str]:
        self._check_cancel()
        if self.machine is None:
            raise MachineError("no machine to wait for")
        self.machine.wait_guest_agent(self._deadline())
        self._stage("guest_up")
        addresses = self.machine.guest_addresses()
        self._check_cancel()
        self.tls_early = baked_tls.start(self.cfg, self.record, self.machine, self.report)
        # A restored VM gets its certificate before the cookie rotation (guest_install talks to the
        # node with the cookie file); a cold-booted one once its node answers (wait_rabbitmq).
        self.machine.personalize(self._deadline(), before_cookie=lambda: self._tls(addresses))
        return addresses

    def _tls(self, addresses: list[str]) -> None:
        """Give the VM a certificate when it has none (or it is due, or its names changed): a
        key made now, never one from the image or the saved state. A VM that had one already
        (a start from its disk) has the drop-in: its node started the listeners itself."""
        machine = self.machine
        if not certificates.enabled(self.cfg) or machine is None or not machine.speaks_tls():
            return
        if self.record.network == "bridge":
            self.record.ip_addresses = list(addresses)
        if not certificates.is_due(self.cfg, self.record):
            return
        self._check_cancel()
        try:
            certificates.install(
                self.cfg, self.record, machine, self.report, start=not self.record.tls_cert
            )
        except (authority.TLSError, guest_install.GuestTLSError) as exc:
            raise MachineError(f"TLS certificate: {exc}") from exc

    def wait_rabbitmq(self, addresses: list[str]) -> None:
        self._check_cancel()
        if self.machine is None:
            raise MachineError("no machine to wait for")
        self._stage("rabbitmq_starting")
        management, amqp, probe = urls_for(self.cfg, self.record, addresses)
        clock = StepClock()
        try:
            self.machine.wait_management(probe, self._deadline())
        except MachineError as exc:
            if self.cancel.is_set() or not self.machine.is_running():
                raise
            # The guest runs but RabbitMQ never answered (e.g. an index it cannot read after a
            # crash): the node's own words are what staff need.
            raise MachineError(
                f"RabbitMQ did not answer; its log: {rabbitmq_log_tail(self.machine)}; {exc}"
            ) from exc
        clock.mark("management")
        self._tls(addresses)
        baked_tls.finish(self.cfg, self.record, self.machine, self.tls_early)  # TLS ports open
        management, amqp, probe = urls_for(self.cfg, self.record, addresses)
        if self.record.limits:
            self.machine.apply_limits(probe)
        clock.mark("tls_limits")
        runtime = self.machine.runtime(probe)  # what runs, for the customer; {} if unread
        self._check_cancel()
        seconds = round(time.time() - (self.record.boot_started_at or time.time()), 3)
        fields = {
            "management_url": management,
            "amqp_url": amqp,
            "admin_username": self.record.admin_username,
            "ip_addresses": addresses,
            "boot": self.record.boot or "cold",
            "seconds": seconds,
        }
        if runtime:
            fields["runtime"] = runtime
        self.report(
            self.record,
            "instance.ready",
            fields,
            status=READY,
            management_url=management,
            amqp_url=amqp,
            ip_addresses=addresses,
            seconds=seconds,
            healing=False,
            reason="",
        )
        clock.log_done("vm ready", self.cfg.host_id, self.record.vm_id, "runtime", seconds=seconds)

    def fail(self, exc: BaseException) -> None:
        """End a boot that cannot finish: `lose` a VM that was ready once, else clean up the
        half-made VM and publish instance.failed with the reason."""
        if self.record.ever_ready:
            self.lose(exc)
            return
        reason = safe_reason(exc, self.record)
        log.error(
            "vm failed host_id=%s vm_id=%s reason=%s", self.cfg.host_id, self.record.vm_id, reason
        )
        cleanup(self.cfg, self.store, self.record, self.machine)
        self.report(
            self.record,
            "instance.failed",
            {"reason": reason},
            status=FAILED,
            reason=reason,
            ports={},
        )

    def lose(self, exc: BaseException) -> None:
        """A VM that was ready once did not come back: stop what is left of its QEMU, keep its
        folder and disk, publish instance.lost with the reason. start-vm may try again. A heal's
        attempt only records the reason: the restart policy decides what comes next."""
        reason = safe_reason(exc, self.record)
        log.error(
            "vm start failed host_id=%s vm_id=%s healing=%s reason=%s",
            self.cfg.host_id,
            self.record.vm_id,
            self.healing,
            reason,
        )
        try:
            if self.machine is not None and self.machine.is_running():
                self.machine.kill()
        except MachineError as error:
            log.error(
                "kill after a failed start host_id=%s vm_id=%s error=%s",
                self.cfg.host_id,
                self.record.vm_id,
                error,
            )
        if self.healing:
            self.report(self.record, None, {}, reason=reason)
            return
        self.report(self.record, "instance.lost", {"reason": reason}, status=LOST, reason=reason)

    def run(self) -> None:
        """Launch (unless resuming an adopted machine), wait, report; never raises."""
        try:
            if self.machine is None:
                self.launch()
            addresses = self.wait_guest()
            self.wait_rabbitmq(addresses)
        except Cancelled:
            log.info("boot cancelled host_id=%s vm_id=%s", self.cfg.host_id, self.record.vm_id)
        except Exception as exc:  # noqa: BLE001 - any failure must end as failed or lost
            if self.cancel.is_set():
                log.info("boot cancelled host_id=%s vm_id=%s", self.cfg.host_id, self.record.vm_id)
                return
            self.fail(exc)


def cleanup(cfg: Config, store: StateStore, record: VMRecord, machine: Machine | None) -> None:
    """Kill QEMU and remove the VM's folder and tap; keeps the state record."""
    try:
        if machine is not None:
            machine.destroy()
    except MachineError as exc:
        log.error("cleanup failed host_id=%s vm_id=%s error=%s", cfg.host_id, record.vm_id, exc)
    shutil.rmtree(store.vm_dir(record.machine_name), ignore_errors=True)
    if record.network == "bridge" and record.tap:
        network.delete_tap(record.tap)
