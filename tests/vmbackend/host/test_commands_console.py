"""`Commands.set_admin_password` against a management-API look-alike over real HTTP (no QEMU):
the AMQP connections of the admin are closed and nobody else's, the new password is kept where
the host keeps it, a daemon killed between the change and the state write finishes on the
redelivery, and a refusal changes nothing and names no password.

The tiny image has no AMQP listener, so this is where closing connections is checked with
connections to close (the slow tier checks it on a real RabbitMQ)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vmbackend.management_server import PASSWORD, Broker, serve
from vmbackend.host import config
from vmbackend.host.commands import Commands
from vmbackend.host.registry import Registry
from vmbackend.host.state import READY, STOPPED, StateStore, VMRecord
from vmbackend.protocol.messages import Rejected, SetAdminPassword

NEW = "brand-new-password-0123456789"
REQ = "5f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f"


class RunningMachine:
    """Stands in for the VM's running Machine: this test has no QEMU, only its management API."""

    def __init__(self) -> None:
        self.passwords: list[str] = []

    def is_running(self) -> bool:
        return True

    def set_admin_password(self, password: str) -> None:
        self.passwords.append(password)


@pytest.fixture
def broker() -> Iterator[Broker]:
    with serve() as state:
        yield state


@pytest.fixture
def commands(tmp_path, broker):
    cfg = config.load(env={"WARREN_HOST_ID": "h1", "WARREN_STATE_DIR": str(tmp_path / "state")})
    store = StateStore(cfg.state_dir)
    commands = Commands(cfg, store, Registry(cfg, store))
    record = VMRecord(
        vm_id="vm-1",
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="vm-1",
        admin_username="admin",
        admin_password=PASSWORD,
        ports={"management": broker.port, "amqp": 1},
        status=READY,
        ever_ready=True,
    )
    commands.registry.records["vm-1"] = record
    commands.machines["vm-1"] = RunningMachine()
    return commands


def _rotate(commands, username="admin"):
    record = commands.registry.records["vm-1"]
    commands.set_admin_password(record, SetAdminPassword("vm-1", REQ, username, NEW))
    return record


def test_the_new_password_replaces_the_old_and_the_admins_connections_are_closed(commands, broker):
    broker.connections = {
        "127.0.0.1:40001 -> 10.0.2.15:5672": "admin",
        "127.0.0.1:40002 -> 10.0.2.15:5672": "app-user",
        "127.0.0.1:40003 -> 10.0.2.15:5672": "admin",
    }

    record = _rotate(commands)

    assert broker.users["admin"] == NEW  # the old password is refused from now on
    assert broker.connections == {"127.0.0.1:40002 -> 10.0.2.15:5672": "app-user"}
    assert record.admin_password == NEW
    assert commands.store.load("vm-1").admin_password == NEW  # durable
    assert commands.machines["vm-1"].passwords == [NEW]
    puts = [(m, p, u) for m, p, u, _b in broker.seen if m == "PUT"]
    assert puts == [("PUT", "/api/users/admin", "admin")]


def test_a_change_made_before_a_daemon_restart_is_finished_on_the_redelivery(commands, broker):
    broker.users["admin"] = NEW  # the PUT went through, the state file still has the old one
    broker.connections = {"127.0.0.1:40001 -> 10.0.2.15:5672": "admin"}

    record = _rotate(commands)

    assert record.admin_password == NEW and commands.store.load("vm-1").admin_password == NEW
    assert broker.connections == {}


def test_another_user_name_is_refused_without_a_change(commands, broker):
    with pytest.raises(Rejected, match="the VM's admin user is admin, not someone"):
        _rotate(commands, username="someone")
    assert broker.users["admin"] == PASSWORD
    assert not [m for m, *_ in broker.seen if m == "PUT"]


def test_an_api_that_does_not_take_it_changes_nothing_and_names_no_password(commands, broker):
    broker.unready = 1000  # 503 to everything

    with pytest.raises(Rejected) as info:
        _rotate(commands)

    assert info.value.reason.startswith("the VM's management API did not take the new password")
    assert NEW not in info.value.reason and PASSWORD not in info.value.reason
    record = commands.registry.records["vm-1"]
    assert record.admin_password == PASSWORD
    assert commands.machines["vm-1"].passwords == []


def test_a_stopped_vm_is_refused_before_any_call(commands, broker):
    commands.registry.records["vm-1"].status = STOPPED
    with pytest.raises(Rejected, match="the VM is stopped; try again when it is running"):
        _rotate(commands)
    assert broker.seen == []


def test_the_outcome_of_a_refusal_is_published_once_and_remembered(commands, broker):
    commands.registry.records["vm-1"].status = STOPPED
    cmd = SetAdminPassword("vm-1", REQ, "admin", NEW)

    with pytest.raises(Rejected):
        commands.run(cmd)

    record = commands.registry.records["vm-1"]
    assert [e["type"] for e in record.outbox] == ["instance.command_failed"]
    event = record.outbox[0]
    assert (event["command"], event["request_id"], event["reason"]) == (
        "set-admin-password",
        REQ,
        "the VM is stopped; try again when it is running",
    )
    assert NEW not in str(record.outbox) and PASSWORD not in str(record.outbox)
    assert record.requests[0]["request_id"] == REQ
