"""The host's TLS policy (vmbackend/host/certificates.py) and how boot/registry use it: the names a
VM's certificate carries, the TLS ports and URLs, when a VM gets a new certificate, and the
renewal round (claim, fresh key, record, release).

The guest side (files, listeners, reload in a real RabbitMQ) is test_tls_slow.py's; here the
guest is a recorder of what the host hands it, so the rules run in milliseconds.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509

from tests.vmbackend.machine.test_guest_agent import FakeAgent
from vmbackend.host import boot, certificates, config
from vmbackend.host.registry import Registry
from vmbackend.host.rules import CLAIMED, new_record
from vmbackend.host.state import READY, StateStore, VMRecord
from vmbackend.machine import qemu
from vmbackend.machine.qemu_machine import QemuMachine
from vmbackend.protocol.messages import CreateVM, VMCommand, parse
from vmbackend.protocol.server_names import server_name, short_id
from vmbackend.tls import authority, guest_install


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ca")
    authority.init_ca(folder / "root")
    authority.init_host(folder / "root", "host-a", folder / "host")
    return folder / "host"


def _cfg(ca: Path | None, **env: str) -> config.Config:
    values = {"WARREN_HOST_ID": "host-a", "WARREN_PORT_RANGE": "30000-30999", **env}
    if ca is not None:
        values["WARREN_TLS_DIR"] = str(ca)
    return config.load(env=values)


def _create(**options: object) -> CreateVM:
    body = {"version": 1, "command": "create-vm", "options": {"image": "rabbitmq-4.0", **options}}
    cmd = parse(json.dumps(body).encode())
    assert isinstance(cmd, CreateVM)
    return cmd


def _record(cfg: config.Config, tmp_path: Path, **options: object) -> tuple[Registry, VMRecord]:
    registry = Registry(cfg, StateStore(tmp_path / "state"))
    record, failure = registry.add_new(_create(**options))
    assert failure is None
    return registry, record


class Recorder:
    """Stands in for the guest agent: keeps what would be run in the guest."""

    def __init__(self, code: int = 0, out: bytes = b"start\n") -> None:
        self.calls: list[tuple[str, list[str], bytes | None]] = []
        self.code, self.out = code, out

    def guest_exec(
        self,
        path: str,
        args: list[str] | None = None,
        *,
        input_data: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        self.calls.append((path, list(args or []), input_data))
        assert args and args[1] == guest_install.INSTALL  # one guest-exec per install
        return self.code, self.out

    def key_written(self) -> bytes:
        """The private key block of what went to the guest (the first PEM block on stdin)."""
        (_path, _args, data) = self.calls[-1]
        assert data is not None
        return data[: data.index(b"-----END PRIVATE KEY-----")]


def test_the_name_is_the_vm_s_own_under_the_configured_domain() -> None:
    """Not the advertised host nor the bind address: every VM of the host shares those."""
    cfg = _cfg(
        None,
        WARREN_ADVERTISED_HOST="rabbit.example.com",
        WARREN_BIND_ADDRESS="127.0.0.1",
        WARREN_VM_DOMAIN="Servers.Example.COM.",
    )
    a = VMRecord("vm-1", "rabbitmq-4.0", 512, 1, 4, "vm-1", "warren-a", "pw")
    b = VMRecord("vm-2", "rabbitmq-4.0", 512, 1, 4, "vm-2", "warren-b", "pw")
    assert certificates.names_for(cfg, a) == [f"{short_id('vm-1')}.servers.example.com"]
    assert certificates.names_for(cfg, a) != certificates.names_for(cfg, b)


def test_on_a_bridge_the_name_is_still_the_vm_s_own() -> None:
    cfg = _cfg(None)
    record = VMRecord("vm-1", "rabbitmq-4.0", 512, 1, 4, "vm-1", "warren-a", "pw", network="bridge")
    record.ip_addresses = ["fe80::1", "192.0.2.10"]
    assert certificates.names_for(cfg, record) == [server_name("vm-1", "warren.localhost")]


@pytest.mark.parametrize("domain", ["localhost", "-bad-.example", "a..b", "x" * 64 + ".example"])
def test_a_domain_that_cannot_be_a_name_constraint_is_refused(domain: str) -> None:
    with pytest.raises(config.ConfigError, match="WARREN_VM_DOMAIN"):
        _cfg(None, WARREN_VM_DOMAIN=domain)


def test_a_tls_host_gives_each_vm_four_ports_and_forwards_them(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(ca)
    _registry, record = _record(cfg, tmp_path)
    assert set(record.ports) == {"management", "amqp", "amqps", "https"}
    assert len(set(record.ports.values())) == 4
    net = boot.spec_for(cfg, record).network
    assert isinstance(net, qemu.UserNet)
    assert (net.amqps_port, net.https_port, net.plain_ports) == (
        record.ports["amqps"],
        record.ports["https"],
        True,
    )


def test_a_host_without_tls_keeps_two_ports(tmp_path: Path) -> None:
    _registry, record = _record(_cfg(None), tmp_path)
    assert set(record.ports) == {"management", "amqp"}


def test_tls_urls_once_the_vm_has_its_certificate(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(ca, WARREN_ADVERTISED_HOST="rabbit.example.com")
    _registry, record = _record(cfg, tmp_path)
    plain = boot.urls_for(cfg, record, [])
    assert plain[0].startswith("http://") and plain[1].startswith("amqp://")
    record.tls_cert = "-----BEGIN CERTIFICATE-----"
    management, amqp, probe = boot.urls_for(cfg, record, [])
    assert management == f"https://rabbit.example.com:{record.ports['https']}/"
    assert amqp == f"amqps://{record.admin_username}@rabbit.example.com:{record.ports['amqps']}/"
    assert probe == f"http://127.0.0.1:{record.ports['management']}/"  # the host's own calls


def test_a_plan_without_plain_ports_closes_them_to_customers(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        ca,
        WARREN_BIND_ADDRESS="0.0.0.0",  # noqa: S104 - the wildcard is the case
        WARREN_ADVERTISED_HOST="rabbit.example.com",
    )
    _registry, record = _record(cfg, tmp_path, **{"plain-ports": False})
    assert record.plain_ports is False
    net = boot.spec_for(cfg, record).network
    assert isinstance(net, qemu.UserNet)
    netdev = qemu._netdev(
        boot.spec_for(cfg, record),
        type(
            "M",
            (),
            {
                "guest": type(
                    "G", (), {"kind": "rabbitmq", "management_port": 15672, "amqp_port": 5672}
                )
            },
        )(),  # type: ignore[arg-type]
    )
    ports = record.ports
    assert f"hostfwd=tcp:127.0.0.1:{ports['management']}-:15672" in netdev  # the host's only
    assert f":{ports['amqp']}-:5672" not in netdev
    assert f"hostfwd=tcp:0.0.0.0:{ports['amqps']}-:5671" in netdev
    assert f"hostfwd=tcp:0.0.0.0:{ports['https']}-:15671" in netdev
    record.tls_cert = "x"
    assert boot.urls_for(cfg, record, [])[2] == f"http://127.0.0.1:{ports['management']}/"


def test_closing_the_plain_ports_needs_a_tls_host(tmp_path: Path) -> None:
    cfg = _cfg(None)
    _registry, record = _record(cfg, tmp_path, **{"plain-ports": False})
    net = boot.spec_for(cfg, record).network
    assert isinstance(net, qemu.UserNet) and net.plain_ports  # else the VM would be unreachable


def test_install_gives_a_fresh_key_and_records_only_the_certificate(
    ca: Path, tmp_path: Path
) -> None:
    cfg = _cfg(ca)
    registry, record = _record(cfg, tmp_path)
    keys = []
    for _ in range(2):
        guest = Recorder()
        assert certificates.install(cfg, record, guest, registry.report, start=True) == "start"
        keys.append(guest.key_written())
        cert = x509.load_pem_x509_certificate(record.tls_cert.encode())
        assert (
            cert.public_key()
            != x509.load_pem_x509_certificate((ca / authority.HOST_CERT).read_bytes()).public_key()
        )
    assert keys[0] != keys[1] and all(b"PRIVATE KEY" in k for k in keys)
    state = (tmp_path / "state" / "vms" / f"{record.vm_id}.json").read_text()
    assert "PRIVATE KEY" not in state and "BEGIN CERTIFICATE" in state


def test_a_failed_install_records_nothing(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(ca)
    registry, record = _record(cfg, tmp_path)
    with pytest.raises(guest_install.GuestTLSError, match="exited 1"):
        certificates.install(
            cfg, record, Recorder(code=1, out=b"{badrpc,nodedown}"), registry.report, start=True
        )
    assert record.tls_cert == ""


def _ready_with(
    cfg: config.Config, tmp_path: Path, days: float, now: datetime.datetime
) -> tuple[Registry, VMRecord]:
    registry, record = _record(cfg, tmp_path)
    leaf = authority.issue(
        authority.load_issuer(cfg.tls_dir), certificates.names_for(cfg, record), days=days, now=now
    )  # type: ignore[arg-type]
    registry.report(record, None, {}, status="booting")
    registry.report(record, None, {}, status=READY, tls_cert=leaf.cert_pem.decode())
    return registry, record


def test_the_renewal_round_renews_only_what_is_due(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(ca, WARREN_TLS_CERT_DAYS="0.01", WARREN_TLS_RENEW_BEFORE_DAYS="0.005")  # 14 min
    now = datetime.datetime.now(datetime.UTC)
    registry, record = _ready_with(cfg, tmp_path, 0.01, now)
    guest = Recorder(out=b"reload\n")
    renewer = certificates.Renewer(cfg, registry, lambda vm_id: guest)
    assert renewer.run_once(now) == 0 and guest.calls == []
    later = now + datetime.timedelta(days=0.006)
    old = record.tls_cert
    assert renewer.run_once(later) == 1
    assert record.tls_cert != old
    install = [c for c in guest.calls if c[1][1] == guest_install.INSTALL]
    assert install[0][1][2] == "reload"  # a renewal never restarts nor re-adds listeners
    assert record.vm_id not in registry.busy


def test_a_busy_vm_waits_for_the_next_round(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(ca, WARREN_TLS_CERT_DAYS="0.01", WARREN_TLS_RENEW_BEFORE_DAYS="0.005")
    now = datetime.datetime.now(datetime.UTC)
    registry, record = _ready_with(cfg, tmp_path, 0.01, now)
    guest = Recorder(out=b"reload\n")
    renewer = certificates.Renewer(cfg, registry, lambda vm_id: guest)
    assert registry.claim(VMCommand("restart-vm", record.vm_id))[0] == CLAIMED
    later = now + datetime.timedelta(days=0.006)
    assert renewer.run_once(later) == 0 and guest.calls == []
    registry.release(record.vm_id, "restart-vm")
    assert renewer.run_once(later) == 1


def test_a_failed_renewal_keeps_the_old_certificate_and_retries(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(ca, WARREN_TLS_CERT_DAYS="0.01", WARREN_TLS_RENEW_BEFORE_DAYS="0.005")
    now = datetime.datetime.now(datetime.UTC)
    registry, record = _ready_with(cfg, tmp_path, 0.01, now)
    old = record.tls_cert
    later = now + datetime.timedelta(days=0.006)
    broken = certificates.Renewer(cfg, registry, lambda vm_id: Recorder(code=1, out=b"x"))
    assert broken.run_once(later) == 0
    assert record.tls_cert == old and record.vm_id not in registry.busy
    gone = certificates.Renewer(cfg, registry, lambda vm_id: None)
    assert gone.run_once(later) == 0
    assert (
        certificates.Renewer(cfg, registry, lambda vm_id: Recorder(out=b"reload\n")).run_once(later)
        == 1
    )


def test_new_record_keeps_the_plan_s_choice() -> None:
    cfg = _cfg(None)
    assert new_record(cfg, _create(**{"plain-ports": False})).plain_ports is False
    assert new_record(cfg, _create()).plain_ports is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WARREN_TLS_CERT_DAYS": "10", "WARREN_TLS_RENEW_BEFORE_DAYS": "10"}, "less than"),
        ({"WARREN_TLS_CERT_DAYS": "0"}, "tls_cert_days"),
        ({"WARREN_TLS_CERT_DAYS": "9000"}, "tls_cert_days"),
        ({"WARREN_TLS_CHECK_INTERVAL": "0"}, "tls_check_interval"),
    ],
)
def test_bad_tls_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.load(env=env)


def test_only_rabbitmq_images_speak_tls(tiny_images_root: Path, tmp_path: Path) -> None:
    """The tiny test image has no RabbitMQ: a TLS host leaves it on its plain URLs."""
    from vmbackend.machine.qemu_machine import QemuMachine

    spec = qemu.VMSpec("vm-1", "tiny", 256, 1, 1, "vm-1", "warren-a", "pw")
    assert QemuMachine(spec, tmp_path / "vm", tiny_images_root).speaks_tls() is False


def test_one_vm_s_malformed_guest_reply_does_not_stop_the_round(ca: Path, tmp_path: Path) -> None:
    """Issue 20: a guest answering a non-numeric exit code stopped renewal for every later VM.
    Two real QemuMachine objects talk to their guest agents' sockets (a stand-in qemu-ga on
    each); the first answers garbage, the second is renewed all the same."""
    cfg = _cfg(ca, WARREN_TLS_CERT_DAYS="0.01", WARREN_TLS_RENEW_BEFORE_DAYS="0.005")
    now = datetime.datetime.now(datetime.UTC)
    registry = Registry(cfg, StateStore(tmp_path / "state"))
    issuer = authority.load_issuer(ca)
    records = []
    for vm_id in ("vm-bad", "vm-good"):
        record, failure = registry.add_new(_create(**{"vm-id": vm_id}))
        assert failure is None
        leaf = authority.issue(issuer, certificates.names_for(cfg, record), days=0.01, now=now)
        registry.report(record, None, {}, status="booting")
        registry.report(record, None, {}, status=READY, tls_cert=leaf.cert_pem.decode())
        records.append(record)
    bad, good = records
    machines, agents = {}, []
    for record, reply in (
        (bad, {"exited": True, "exitcode": "abc"}),
        (good, {"exited": True, "exitcode": 0, "out-data": "cmVsb2FkCg=="}),  # "reload\n"
    ):
        spec = qemu.VMSpec(record.vm_id, "rabbitmq-4.0", 512, 1, 4, record.vm_id, "warren", "pw")
        machine = QemuMachine(spec, tmp_path / record.vm_id, tmp_path / "images")
        machine.vm_dir.mkdir()
        agents.append(FakeAgent(machine.paths.qga, status_reply=reply))
        machines[record.vm_id] = machine
    later = now + datetime.timedelta(days=0.006)
    renewer = certificates.Renewer(cfg, registry, machines.get)
    assert [r.vm_id for r in renewer.due(later)] == ["vm-bad", "vm-good"]
    before = {r.vm_id: r.tls_cert for r in records}
    try:
        assert renewer.run_once(later) == 1
    finally:
        for agent in agents:
            agent.close()
    assert bad.tls_cert == before["vm-bad"]  # the old certificate serves; retried next round
    assert good.tls_cert != before["vm-good"]
    assert renewer.failures == 1
    assert not registry.busy


class FileRecorder:
    """Stands in for the guest agent of a VM with baked TLS: keeps the file it would write."""

    def __init__(self, code: int = 0) -> None:
        self.written: list[bytes] = []
        self.code = code

    def guest_exec(
        self,
        path: str,
        args: list[str] | None = None,
        *,
        input_data: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        assert args == ["-c", guest_install.RENEW]  # no Erlang node, no listener started
        assert input_data is not None
        self.written.append(input_data)
        return self.code, b"" if self.code == 0 else b"mv: cannot move"


def test_a_baked_vm_s_certificate_is_one_file_written_aside_and_renamed(
    ca: Path, tmp_path: Path
) -> None:
    cfg = _cfg(ca, WARREN_TLS_CERT_DAYS="0.01", WARREN_TLS_RENEW_BEFORE_DAYS="0.005")
    registry, record = _record(cfg, tmp_path)
    record.tls_mode = "baked"
    guest = FileRecorder()
    assert certificates.install(cfg, record, guest, registry.report, start=True) == "renew"
    blocks = guest.written[0].split(b"-----END ")
    assert b"PRIVATE KEY" in blocks[0] and len(blocks) == 4  # key, leaf, intermediate
    assert guest.written[0].index(record.tls_cert.encode()) == guest.written[0].index(
        b"-----BEGIN CERTIFICATE"
    )  # the recorded certificate right after the key: what RabbitMQ serves
    # The renewal round writes the file the same way (the next handshake reads it).
    registry.report(record, None, {}, status="booting")
    registry.report(record, None, {}, status=READY)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=0.006)
    old = record.tls_cert
    assert certificates.Renewer(cfg, registry, lambda vm_id: guest).run_once(later) == 1
    assert record.tls_cert != old and len(guest.written) == 2
    failing = certificates.Renewer(cfg, registry, lambda vm_id: FileRecorder(code=1))
    renewed = record.tls_cert
    assert failing.run_once(later + datetime.timedelta(days=0.01)) == 0
    assert record.tls_cert == renewed


def test_a_baked_vm_starts_qemu_without_its_tls_forwards(ca: Path, tmp_path: Path) -> None:
    cfg = _cfg(ca)
    _registry, record = _record(cfg, tmp_path)
    net = boot.spec_for(cfg, record).network
    assert isinstance(net, qemu.UserNet) and not net.tls_gated  # an older VM: as before
    record.tls_mode = "baked"
    net = boot.spec_for(cfg, record).network
    assert isinstance(net, qemu.UserNet) and net.tls_gated
    assert (net.amqps_port, net.https_port) == (record.ports["amqps"], record.ports["https"])


def test_the_way_to_tls_follows_the_image_the_vm_is_made_from(tmp_path: Path) -> None:
    from vmbackend.host import baked_tls

    images = tmp_path / "images"
    for name, guest in (
        ("baked", {"kind": "rabbitmq", "management_port": 15672, "tls": "baked"}),
        ("older", {"kind": "rabbitmq", "management_port": 15672}),
    ):
        folder = images / name
        folder.mkdir(parents=True)
        (folder / "vmlinuz").write_bytes(b"k")
        manifest_data = {
            "format": 1, "name": name, "recipe_hash": "sha256:x", "kernel": "vmlinuz",
            "append": "console=ttyS0", "guest": guest,
        }  # fmt: skip
        (folder / "image.json").write_text(json.dumps(manifest_data))
    cfg = _cfg(None, WARREN_IMAGE_DIR=str(images))
    assert baked_tls.mode_for(cfg, "baked") == baked_tls.BAKED
    assert baked_tls.mode_for(cfg, "older") == baked_tls.INSTALLED
    assert baked_tls.mode_for(cfg, "missing") == baked_tls.INSTALLED
    simulated = _cfg(None, WARREN_IMAGE_DIR=str(images), WARREN_DRIVER="simulated")
    assert baked_tls.mode_for(simulated, "baked") == baked_tls.INSTALLED


class BakedGuest(FileRecorder):
    """A VM of an image with baked TLS as baked_tls drives it: files written, ports opened."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[bytes] = []
        self.put: list[bytes] = []

    def speaks_tls(self) -> bool:
        return True

    def write_guest_file(self, path: str, data: bytes) -> None:
        assert path == guest_install.SERVER_PEM
        self.put.append(data)

    def open_tls_ports(self, cert_der: bytes) -> None:
        self.opened.append(cert_der)


def test_each_boot_path_opens_the_tls_ports_with_the_certificate_in_the_guest(
    ca: Path, tmp_path: Path
) -> None:
    import ssl

    from vmbackend.host import baked_tls

    cfg = _cfg(ca)
    registry, record = _record(cfg, tmp_path)
    record.tls_mode = baked_tls.BAKED
    guest = BakedGuest()
    machine: Any = guest

    def der() -> bytes:
        return ssl.PEM_cert_to_DER_cert(record.tls_cert)

    # A fresh restore: written in place, recorded, checked beside personalization.
    record.boot = "restore"
    early = baked_tls.start(cfg, record, machine, registry.report)
    assert early is not None and len(guest.put) == 1 and guest.written == []
    baked_tls.finish(cfg, record, machine, early)
    assert guest.opened == [der()]
    # The same VM's QEMU again (start-vm, heal): its file is on its disk, its ports are checked.
    record.boot = "cold"
    assert baked_tls.start(cfg, record, machine, registry.report) is None
    baked_tls.finish(cfg, record, machine, None)
    assert guest.opened == [der(), der()] and len(guest.put) == 1
    # A claimed pool VM: open since the pool VM's boot.
    record.claimed_from = {"vm_id": "pool-1"}
    baked_tls.finish(cfg, record, machine, None)
    assert len(guest.opened) == 2
    # An older VM (run-time install) and a host without TLS: nothing of this.
    record.claimed_from = {}
    record.tls_mode = baked_tls.INSTALLED
    baked_tls.finish(cfg, record, machine, None)
    record.tls_mode = baked_tls.BAKED
    baked_tls.finish(_cfg(None), record, machine, None)
    assert len(guest.opened) == 2


def test_a_failed_check_fails_the_boot_and_a_re_adopted_vm_is_checked_again(
    ca: Path, tmp_path: Path
) -> None:
    from vmbackend.host import baked_tls
    from vmbackend.machine.base import MachineError

    class Refusing(BakedGuest):
        def open_tls_ports(self, cert_der: bytes) -> None:
            raise MachineError("guest port 5671 does not serve the VM's certificate")

    cfg = _cfg(ca)
    registry, record = _record(cfg, tmp_path)
    record.tls_mode, record.boot = baked_tls.BAKED, "restore"
    machine: Any = Refusing()
    early = baked_tls.start(cfg, record, machine, registry.report)
    with pytest.raises(MachineError, match="does not serve"):
        baked_tls.finish(cfg, record, machine, early)
    baked_tls.recheck(cfg, record, machine)  # logged; the VM keeps running
    guest = BakedGuest()
    baked_tls.recheck(cfg, record, cast(Any, guest))
    assert len(guest.opened) == 1
