"""Finishing a claim (vmbackend/host/claim.py) against a management-API look-alike: the order's admin
replaces the pool's, a larger disk grows, the order's limits apply, a resumed claim that was
already swapped finishes without a second swap, and a pool VM whose API refuses falls back to the
ordinary boot. The machine is a stand-in (no QEMU); the HTTP is real."""

from __future__ import annotations

import dataclasses

import pytest

from tests.vmbackend.management_server import serve
from vmbackend.host import config, pool
from vmbackend.host.boot import Boot
from vmbackend.host.claim import ClaimBoot
from vmbackend.host.registry import Registry
from vmbackend.host.state import BOOTING, READY, StateStore
from vmbackend.machine.management_api import ManagementAPI, ManagementAPIError
from vmbackend.machine.qemu import UserNet, VMSpec
from vmbackend.protocol.messages import CreateVM

POOL_PASSWORD = "pool-password-0123456789"


class StandInMachine:
    """What ClaimBoot and Boot.wait_rabbitmq ask of a Machine, with real HTTP to the API."""

    def __init__(self, spec: VMSpec):
        self.spec = spec
        self.grown: list[int] = []
        self.destroyed = False

    def hand_over(self, admin_user: str, admin_password: str, limits: dict[str, int]) -> None:
        self.spec = dataclasses.replace(
            self.spec, admin_user=admin_user, admin_password=admin_password, limits=dict(limits)
        )

    def is_running(self) -> bool:
        return not self.destroyed

    def grow_running_disk(self, disk_gb: int) -> None:
        self.grown.append(disk_gb)

    def _api(self, url: str) -> ManagementAPI:
        return ManagementAPI(url, self.spec.admin_user, self.spec.admin_password)

    def wait_management(self, url: str, deadline: float) -> None:
        self._api(url).wait_until_ok("api/whoami", deadline)

    def apply_limits(self, url: str) -> None:
        for name, value in sorted(self.spec.limits.items()):
            self._api(url).set_vhost_limit(name, value)

    def runtime(self, url: str) -> dict[str, str]:
        return {}

    def destroy(self) -> None:
        self.destroyed = True


@pytest.fixture
def setup(tmp_path):
    with serve() as broker:
        cfg = config.load(
            env={
                "WARREN_HOST_ID": "h1",
                "WARREN_STATE_DIR": str(tmp_path),
                "WARREN_CAPACITY": "2",
                "WARREN_POOL": "tiny:256:1",
            }
        )
        registry = Registry(cfg, StateStore(cfg.state_dir))
        record, _ = registry.add_new(
            dataclasses.replace(
                pool.new_pool_command(pool.PoolEntry("tiny", 256, 1)),
                admin_username="pool-admin",
                admin_password=POOL_PASSWORD,
            ),
            pool=True,
        )
        registry.report(record, None, {}, status=BOOTING)
        registry.report(
            record, None, {}, status=READY, ports={"management": broker.port, "amqp": 1}
        )
        broker.users = {"pool-admin": POOL_PASSWORD}
        yield cfg, registry, broker


def _claim(registry: Registry, disk_gb: int = 4):
    cmd = CreateVM(
        vm_id="vm-claim",
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=disk_gb,
        admin_username="order-admin",
        admin_password="order-password-0123456789",
        password_generated=False,
        limits={"max-connections": 9},
    )
    record = registry.claim_pool(cmd)
    assert record is not None
    spec = VMSpec(
        vm_id=record.machine_name,
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=4,
        hostname=record.hostname,
        admin_user="pool-admin",
        admin_password=POOL_PASSWORD,
        network=UserNet("127.0.0.1", record.ports["management"], 1),
    )
    return record, StandInMachine(spec)


def test_a_claim_swaps_the_admin_grows_the_disk_applies_limits_and_is_ready(setup):
    cfg, registry, broker = setup
    record, machine = _claim(registry, disk_gb=6)
    ClaimBoot(cfg, registry.store, record, registry.report, machine=machine).run()  # type: ignore[arg-type]
    assert record.status == READY and record.boot == "pool"
    assert broker.users == {"order-admin": "order-password-0123456789"}  # the pool's is gone
    assert machine.grown == [6]
    assert broker.limits == {"%2F/max-connections": 9}  # the look-alike keeps the raw path
    assert record.claimed_from == {}  # the pool password is forgotten
    assert registry.store.load("vm-claim").claimed_from == {}
    ready = record.outbox[-1]
    assert ready["type"] == "instance.ready" and ready["boot"] == "pool"
    assert POOL_PASSWORD not in str(record.outbox)
    # A fresh claim goes straight to the swap: no look-up with the order's admin first.
    assert [s[:3] for s in broker.seen[:2]] == [
        ("PUT", "/api/users/order-admin", "pool-admin"),
        ("PUT", "/api/permissions/%2F/order-admin", "pool-admin"),
    ]


def test_a_resumed_claim_that_was_swapped_already_finishes_without_a_second_swap(setup):
    cfg, registry, broker = setup
    record, machine = _claim(registry)
    broker.users = {"order-admin": "order-password-0123456789"}  # swapped before the SIGKILL
    boot = ClaimBoot(cfg, registry.store, record, registry.report, machine=machine)  # type: ignore[arg-type]
    boot.resumed = True
    boot.run()
    assert record.status == READY
    assert not [s for s in broker.seen if s[0] == "PUT" and "/api/users/" in s[1]]
    assert machine.grown == []


def test_a_pool_vm_that_refuses_falls_back_to_the_ordinary_boot(setup, monkeypatch):
    cfg, registry, broker = setup
    next(r for r in registry.records.values() if r.pool).tls_cert = "pool VM's certificate"
    record, machine = _claim(registry)
    assert record.tls_cert == "pool VM's certificate"  # claimed with the VM it was issued to
    broker.users = {}  # the pool admin is refused (a broken pool VM)
    booted: list[str] = []
    monkeypatch.setattr(Boot, "run", lambda self: booted.append(self.record.machine_name))
    ClaimBoot(cfg, registry.store, record, registry.report, machine=machine).run()  # type: ignore[arg-type]
    assert machine.destroyed
    assert booted == ["vm-claim"]  # its own folder and QEMU name now
    assert record.machine_id == "" and record.claimed_from == {} and record.boot == ""
    # The certificate went with the pool VM's disk: the fresh VM is issued its own.
    assert record.tls_cert == "" and registry.store.load("vm-claim").tls_cert == ""


def test_the_pool_admin_goes_after_the_order_is_told_it_is_ready(setup):
    """The customer does not wait for the pool admin's deletion: every request before
    instance.ready is the swap, the check with the order's admin and the limits; the DELETE is
    the last one, and only then is the claim done (claimed_from forgotten)."""
    cfg, registry, broker = setup
    record, machine = _claim(registry)
    seen_at_ready: list[int] = []

    def report(rec, event_type, fields, **updates):
        if event_type == "instance.ready":
            seen_at_ready.append(len(broker.seen))
            assert rec.claimed_from  # still claiming: a SIGKILL now resumes the claim
        registry.report(rec, event_type, fields, **updates)

    ClaimBoot(cfg, registry.store, record, report, machine=machine).run()  # type: ignore[arg-type]
    (at_ready,) = seen_at_ready
    before_ready = [s[:2] for s in broker.seen[:at_ready]]
    assert ("DELETE", "/api/users/pool-admin") not in before_ready
    assert ("GET", "/api/whoami") not in before_ready[:2]  # no look-up between swap steps
    assert broker.seen[-1][:2] == ("DELETE", "/api/users/pool-admin")
    assert broker.users == {"order-admin": "order-password-0123456789"}
    assert registry.store.load("vm-claim").claimed_from == {}


def test_a_pool_admin_that_cannot_be_deleted_leaves_the_ready_vm_and_the_claim_to_resume(
    setup, monkeypatch
):
    cfg, registry, broker = setup
    record, machine = _claim(registry)

    def refuse(self, name):
        raise ManagementAPIError("DELETE refused")

    monkeypatch.setattr(ManagementAPI, "delete_user", refuse)
    booted: list[str] = []
    monkeypatch.setattr(Boot, "run", lambda self: booted.append(self.record.machine_name))
    ClaimBoot(cfg, registry.store, record, registry.report, machine=machine).run()  # type: ignore[arg-type]
    assert record.status == READY and not machine.destroyed and booted == []
    # The next start finds the claim unfinished and deletes the pool admin then.
    assert registry.store.load("vm-claim").claimed_from["admin_username"] == "pool-admin"
