"""The warm pool's rules without a broker or QEMU (vmbackend/host/pool.py, Registry.claim_pool): the
WARREN_POOL syntax, which pool VM a create-vm claims, which one gives way, and — Hypothesis over
any sequence of claims, pool VMs made ready, deletions and daemon restarts (SIGKILL between the
claim's two writes included) — that no pool VM is ever handed out twice."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbackend.host import config, pool
from vmbackend.host.pool import PoolEntry, parse_pool
from vmbackend.host.registry import Registry
from vmbackend.host.rules import UNKNOWN
from vmbackend.host.state import BOOTING, DELETED, READY, StateStore, VMRecord
from vmbackend.protocol.messages import CreateVM


def _cfg(tmp: Path, capacity: int = 4, pool_text: str = "tiny:256:2") -> config.Config:
    return config.load(
        env={
            "WARREN_HOST_ID": "h1",
            "WARREN_STATE_DIR": str(tmp),
            "WARREN_CAPACITY": str(capacity),
            "WARREN_POOL": pool_text,
        }
    )


def _cmd(
    vm_id: str, memory_mb: int = 256, disk_gb: int = 4, image: str = "tiny", plain: bool = True
) -> CreateVM:
    return CreateVM(
        plain_ports=plain,
        vm_id=vm_id,
        image=image,
        memory_mb=memory_mb,
        vcpus=1,
        disk_gb=disk_gb,
        admin_username="order-admin",
        admin_password="order-password-0123456789",
        password_generated=False,
        limits={"max-connections": 5},
    )


def _ready_pool_vm(registry: Registry, entry: PoolEntry | None = None) -> VMRecord:
    entry = entry or PoolEntry("tiny", 256, 1)
    record, failure = registry.add_new(pool.new_pool_command(entry), pool=True)
    assert failure is None
    registry.report(record, None, {}, status=BOOTING)
    registry.report(record, None, {}, status=READY, management_url="http://127.0.0.1:1/")
    return record


# -- WARREN_POOL
def test_the_pool_syntax():
    assert parse_pool("") == ()
    assert parse_pool("rabbitmq-4.0:512:1, tiny:256:3") == (
        PoolEntry("rabbitmq-4.0", 512, 1),
        PoolEntry("tiny", 256, 3),
    )
    assert parse_pool("tiny:256:0") == (PoolEntry("tiny", 256, 0),)


@pytest.mark.parametrize(
    "text",
    [
        "tiny",
        "tiny:256",
        "tiny:256:1:2",
        "Tiny:256:1",
        "../x:256:1",
        "tiny:100:1",
        "tiny:99999:1",
        "tiny:256:-1",
        "tiny:256:65",
        "tiny:256:x",
        "tiny:256:1,tiny:256:2",
        "tiny: 256:1",
    ],
)
def test_a_bad_pool_setting_stops_the_daemon_with_the_reason(text, tmp_path):
    with pytest.raises(config.ConfigError, match="^pool: "):
        _cfg(tmp_path, pool_text=text)


@given(st.text(max_size=60))
def test_any_pool_text_parses_or_is_refused_with_a_value_error(text):
    try:
        entries = parse_pool(text)
    except ValueError:
        return
    assert all(0 <= e.count <= pool.MAX_COUNT and 256 <= e.memory_mb for e in entries)


# -- which pool VM a create-vm gets
def _record(vm_id: str, **over) -> VMRecord:
    fields = dict(
        vm_id=vm_id,
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=4,
        hostname="h",
        admin_username="a",
        admin_password="p",
        pool=True,
        status=READY,
        created_at=10.0,
    )
    fields.update(over)
    return VMRecord(**fields)


def test_pick_takes_an_exact_disk_first_then_the_oldest_and_only_what_fits():
    records = [
        _record("pool-young", created_at=20.0),
        _record("pool-old", created_at=5.0),
        _record("pool-small-disk", disk_gb=2, created_at=1.0),
        _record("pool-booting", status=BOOTING, created_at=0.0),
        _record("pool-512", memory_mb=512, created_at=0.0),
        _record("customer", pool=False, created_at=0.0),
    ]
    assert pool.pick(records, _cmd("x"), set()).vm_id == "pool-old"
    assert pool.pick(records, _cmd("x"), {"pool-old"}).vm_id == "pool-young"
    assert pool.pick(records, _cmd("x"), {"pool-old", "pool-young"}).vm_id == "pool-small-disk"
    assert pool.pick(records, _cmd("x", disk_gb=3), set()).vm_id == "pool-small-disk"  # grows
    assert pool.pick(records, _cmd("x", disk_gb=1), set()) is None  # a disk never shrinks
    assert pool.pick(records, _cmd("x", memory_mb=1024), set()) is None
    assert pool.pick(records, _cmd("x", image="other"), set()) is None


def test_on_a_tls_host_a_pool_vm_serves_only_orders_that_want_its_plain_ports():
    tls_ports = {"management": 1, "amqp": 2, "amqps": 3, "https": 4}
    with_plain = [_record("pool-plain", ports=tls_ports)]
    # A TLS-only order must not get a VM whose QEMU forwards plain AMQP and management.
    assert pool.pick(with_plain, _cmd("x", plain=False), set()) is None
    assert pool.pick(with_plain, _cmd("x"), set()).vm_id == "pool-plain"
    tls_only = [_record("pool-tls-only", ports=tls_ports, plain_ports=False)]
    assert pool.pick(tls_only, _cmd("x"), set()) is None
    assert pool.pick(tls_only, _cmd("x", plain=False), set()).vm_id == "pool-tls-only"
    # A host without TLS keeps plain ports for every VM: plain-ports false changes nothing.
    plain_host = [_record("pool-no-tls", ports={"management": 1, "amqp": 2})]
    assert pool.pick(plain_host, _cmd("x", plain=False), set()).vm_id == "pool-no-tls"


def test_a_starting_pool_vm_gives_way_before_a_ready_one():
    records = [_record("pool-ready", created_at=1.0), _record("pool-boot", status=BOOTING)]
    assert pool.evict_choice(records, set()).vm_id == "pool-boot"
    assert pool.evict_choice(records, {"pool-boot"}).vm_id == "pool-ready"
    assert pool.evict_choice([_record("customer", pool=False)], set()) is None


def test_census_and_missing_count_per_entry():
    entries = (PoolEntry("tiny", 256, 2), PoolEntry("tiny", 512, 1))
    records = [
        _record("pool-a"),
        _record("pool-b", status=BOOTING),
        _record("pool-c", status=DELETED),
    ]
    assert pool.census(records, entries) == [
        {"image": "tiny", "memory_mb": 256, "target": 2, "ready": 1, "starting": 1},
        {"image": "tiny", "memory_mb": 512, "target": 1, "ready": 0, "starting": 0},
    ]
    assert pool.missing(records, entries) == [PoolEntry("tiny", 512, 1)]


# -- the registry's claim
@pytest.fixture
def registry(tmp_path):
    cfg = _cfg(tmp_path)
    reg = Registry(cfg, StateStore(cfg.state_dir))
    return reg


def test_a_claim_is_durable_first_and_hides_nothing_of_the_pool_vm(registry):
    source = _ready_pool_vm(registry)
    assert registry.list_vms() == []
    assert registry.free_slots() == 4 and registry.idle_slots() == 3  # the pool gives way
    assert registry.claim(_vmcommand(source.vm_id))[0] == UNKNOWN  # no command reaches it
    assert source.outbox == [] and source.seq == 0  # it told no one

    source.tls_cert = "-----BEGIN CERTIFICATE-----\nissued at fill\n-----END CERTIFICATE-----\n"
    record = registry.claim_pool(_cmd("vm-1"))

    assert record is not None and record.machine_id == source.vm_id
    assert record.tls_cert == source.tls_cert  # the guest serves it already: not issued again
    assert record.ports == source.ports and record.boot == "pool"
    assert record.claimed_from["admin_password"] == source.admin_password
    assert registry.store.load("vm-1").machine_id == source.vm_id  # written
    assert registry.store.load(source.vm_id) is None  # then the pool record removed
    assert source.vm_id not in registry.records
    assert registry.claim_pool(_cmd("vm-2")) is None  # never twice
    assert registry.free_slots() == 3 and registry.idle_slots() == 3


def test_a_busy_or_booting_pool_vm_is_not_claimed(registry):
    source = _ready_pool_vm(registry)
    registry.boots[source.vm_id] = object()
    assert registry.claim_pool(_cmd("vm-1")) is None


def _vmcommand(vm_id: str):
    from vmbackend.protocol.messages import VMCommand

    return VMCommand(command="stop-vm", vm_id=vm_id)


# -- Hypothesis: any sequence of pool VMs, claims, deletions and restarts
OPS = st.lists(
    st.one_of(
        st.just(("pool",)),
        st.tuples(st.just("claim"), st.integers(0, 5)),
        st.tuples(st.just("delete"), st.integers(0, 5)),
        st.just(("restart",)),
        st.just(("kill-between-writes",)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_no_pool_vm_is_ever_handed_out_twice(ops):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(Path(tmp), capacity=6)
        registry = Registry(cfg, StateStore(cfg.state_dir))
        claimed_by: dict[str, str] = {}  # pool VM id -> the vm-id that claimed it
        for op in ops:
            if op[0] == "pool" and registry.idle_slots() > 0:
                _ready_pool_vm(registry)
            elif op[0] in ("claim", "kill-between-writes"):
                vm_id = f"vm-{op[1]}" if op[0] == "claim" else f"vm-k{len(claimed_by)}"
                if vm_id in registry.records:
                    continue
                pool_files = {
                    r.vm_id: registry.store.path(r.vm_id).read_bytes()
                    for r in registry.records.values()
                    if r.pool
                }
                record = registry.claim_pool(_cmd(vm_id))
                if record is None:
                    continue
                source = record.machine_id
                assert source not in claimed_by, "handed out twice"
                claimed_by[source] = vm_id
                if op[0] == "kill-between-writes":  # the pool file survived the SIGKILL
                    registry.store.path(source).write_bytes(pool_files[source])
                    registry = _restarted(cfg)
            elif op[0] == "delete":
                vm_id = f"vm-{op[1]}"
                record = registry.records.get(vm_id)
                if record is not None and record.status != DELETED:
                    registry.report(record, None, {}, status=DELETED)
                    registry.store.remove(vm_id, record.machine_name)
                    del registry.records[vm_id]
            elif op[0] == "restart":
                registry = _restarted(cfg)
            # Invariants after every step.
            machines = [r.machine_name for r in registry.records.values()]
            assert len(machines) == len(set(machines)), "two VMs on one QEMU"
            for r in registry.records.values():
                if r.pool:
                    assert r.vm_id not in claimed_by
            assert registry.idle_slots() >= 0


def _restarted(cfg: config.Config) -> Registry:
    """A new daemon's registry: loaded from the state files, stale pool records dropped."""
    registry = Registry(cfg, StateStore(cfg.state_dir))
    registry.load()
    registry.drop_claimed_pool()
    return registry


# -- the pool thread's decisions (no QEMU: a stand-in for Commands records what it is asked)
class FakeCommands:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.retired: list[tuple[str, str]] = []
        self.started: list[str] = []

    def retire_pool(self, record: VMRecord, reason: str) -> None:
        self.retired.append((record.vm_id, reason))
        self.registry.report(record, None, {}, status=DELETED)

    def start_boot(self, record: VMRecord, machine: object) -> None:
        self.started.append(record.vm_id)


def _pool_thread(registry: Registry) -> tuple[pool.Pool, FakeCommands]:
    commands = FakeCommands(registry)
    return pool.Pool(registry.cfg, registry, commands), commands


def test_the_pool_thread_fills_one_at_a_time_recycles_old_ones_and_pauses_after_a_failure(
    registry,
):
    thread, commands = _pool_thread(registry)  # WARREN_POOL=tiny:256:2, capacity 4
    thread.tick(now=1000.0)
    assert len(commands.started) == 1
    (first,) = [r for r in registry.records.values() if r.pool]
    registry.boots[first.vm_id] = object()  # still booting: no second boot meanwhile
    thread.tick(now=1001.0)
    assert len(commands.started) == 1
    del registry.boots[first.vm_id]
    thread.tick(now=1002.0)
    assert len(commands.started) == 2

    # A ready pool VM older than WARREN_POOL_RECYCLE is replaced.
    registry.report(first, None, {}, status=BOOTING)
    registry.report(first, None, {}, status=READY, created_at=1000.0)
    thread.tick(now=1000.0 + registry.cfg.pool_recycle + 1)
    assert commands.retired == [(first.vm_id, "recycled: unused for too long")]

    # A pool VM whose boot failed is retired and its entry waits FAILURE_PAUSE seconds.
    second = next(r for r in registry.records.values() if r.pool and r.status != DELETED)
    registry.report(second, None, {}, status="failed", reason="boom")
    before = len(commands.started)
    thread.tick(now=5000.0)
    assert commands.retired[-1] == (second.vm_id, "its boot failed")
    assert len(commands.started) == before  # paused
    thread.tick(now=5000.0 + pool.FAILURE_PAUSE + 1)
    assert len(commands.started) == before + 1


def test_the_pool_thread_never_takes_room_a_customer_could_use(tmp_path):
    cfg = _cfg(tmp_path, capacity=1, pool_text="tiny:256:1")
    registry = Registry(cfg, StateStore(cfg.state_dir))
    registry.add_new(_cmd("customer"))
    thread, commands = _pool_thread(registry)
    thread.tick(now=1.0)
    assert commands.started == []
    assert registry.pool_census() == [
        {"image": "tiny", "memory_mb": 256, "target": 1, "ready": 0, "starting": 0}
    ]
