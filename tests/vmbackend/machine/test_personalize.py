"""vmbackend/machine/personalize.py's admin swap against the management-API look-alike (real HTTP on
127.0.0.1, basic auth checked). The whole personalize path runs on a restored tiny VM in
test_snapshot.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.vmbackend.management_server import Broker, serve
from vmbackend.machine.management_api import TIMEOUT
from vmbackend.machine.personalize import PersonalizeError, erlang_cookie, swap_admin
from vmbackend.machine.qemu import UserNet, VMSpec

TEMPLATE = "warren-template"
TEMPLATE_PW = "template-pw-1"  # noqa: S105 - test data
OWN_PW = "own-pw-2"  # noqa: S105 - test data


@pytest.fixture
def broker() -> Iterator[Broker]:
    with serve() as state:
        state.users = {TEMPLATE: TEMPLATE_PW}  # a freshly restored guest knows only the template
        yield state


def _spec() -> VMSpec:
    return VMSpec(
        vm_id="vm-p-1",
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="vm-p-1",
        admin_user="owner",
        admin_password=OWN_PW,
        network=UserNet("127.0.0.1", 1, 2),
    )


def _never_gone(doing: str) -> None:
    pass


def test_the_template_admin_is_replaced_by_the_vms_own(broker):
    swap_admin(broker.url(), _spec(), TEMPLATE, TEMPLATE_PW, time.monotonic() + 10, _never_gone)
    assert broker.users == {"owner": OWN_PW}


def test_a_second_swap_finishes_a_partial_one(broker):
    broker.users["owner"] = OWN_PW  # the first run died after creating the VM's admin
    swap_admin(broker.url(), _spec(), TEMPLATE, TEMPLATE_PW, time.monotonic() + 10, _never_gone)
    assert broker.users == {"owner": OWN_PW}
    swap_admin(broker.url(), _spec(), TEMPLATE, TEMPLATE_PW, time.monotonic() + 10, _never_gone)
    assert broker.users == {"owner": OWN_PW}
    assert not any(user == TEMPLATE for _, _, user, _ in broker.seen[-2:])


def test_an_unknown_template_admin_is_an_error(broker):
    with pytest.raises(PersonalizeError, match="template admin is unknown"):
        swap_admin(broker.url(), _spec(), TEMPLATE, None, time.monotonic() + 10, _never_gone)


def test_a_wrong_template_password_fails_at_the_deadline_without_passwords(broker):
    with pytest.raises(PersonalizeError, match="admin swap: .*HTTP 401") as err:
        swap_admin(
            broker.url(), _spec(), TEMPLATE, "stale-pw-3", time.monotonic() + 0.5, _never_gone
        )
    for secret in ("stale-pw-3", OWN_PW, TEMPLATE_PW):
        assert secret not in str(err.value)
    assert broker.users == {TEMPLATE: TEMPLATE_PW}


def test_a_dead_vm_stops_the_wait(broker):
    def gone(doing: str) -> None:
        raise RuntimeError(f"QEMU exited while {doing}")

    with pytest.raises(RuntimeError, match="while waiting for the template admin"):
        swap_admin(broker.url(), _spec(), TEMPLATE, "stale-pw-3", time.monotonic() + 30, gone)


def test_erlang_cookies_are_32_capitals_and_differ():
    a, b = erlang_cookie(), erlang_cookie()
    assert len(a) == 32 and a.isalpha() and a.isupper() and a != b


def test_a_write_slower_than_one_request_s_timeout_still_swaps(broker):
    """Under TCG on a busy host the admin's PUT took longer than a read's TIMEOUT: the swap
    waits for it (within the step's deadline) instead of failing the restore."""
    broker.put_delay = TIMEOUT + 0.5
    swap_admin(broker.url(), _spec(), TEMPLATE, TEMPLATE_PW, time.monotonic() + 60, _never_gone)
    assert broker.users == {"owner": OWN_PW}
