"""Wake-ups on commit (orders/lib/wakeup.py): the relay publishes a new row at once, an order page's
waiting request learns of its order's change. Run on SQLite (the default) and on PostgreSQL
(DATABASE_URL=postgres://...): each path is the real one of its database."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from orders.core.provisioning import enqueue
from orders.lib import wakeup
from orders.messaging.outbox import Relay
from orders.models import OutboxMessage
from tests.orders.conftest import get_all
from vmbackend.protocol import topology

LONG_POLL = 120.0  # the relay's poll in these tests: only a wake-up can be quicker


def _wait_until(predicate, *, timeout: float = 30.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        done.wait(0.02)
    return predicate()


def _create_vm(n: int) -> OutboxMessage:
    return enqueue(routing_key="create-vm", body={"version": 1, "command": "create-vm", "n": n})


@pytest.fixture
def relay(orders_amqp_url):
    relay = Relay(url=orders_amqp_url, poll_interval=LONG_POLL, lock_poll=0.05)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    yield relay
    relay.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_a_committed_row_is_published_on_the_wake_up_not_the_poll(amqp, relay):
    first = _create_vm(0)  # published by the relay's first pass; then it waits (poll: 120 s)
    assert _wait_until(lambda: OutboxMessage.objects.get(pk=first.pk).sent_at is not None)
    assert relay.wakeups <= 1  # the first row's own wake-up may have come after the pass

    with transaction.atomic():
        second = _create_vm(1)

    assert _wait_until(lambda: OutboxMessage.objects.get(pk=second.pk).sent_at is not None)
    assert relay.wakeups >= 1
    bodies = [b for _, _, b in get_all(amqp, topology.CREATE_QUEUE)]
    assert len(bodies) == 2


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_row_wakes_nobody(amqp, relay):
    assert _wait_until(lambda: relay.lock is not None and relay.total == 0)
    with wakeup.Listener(wakeup.OUTBOX) as listener:
        with pytest.raises(RuntimeError), transaction.atomic():
            _create_vm(2)
            raise RuntimeError("rolled back")
        assert listener.wait(0.5) == []
    assert not OutboxMessage.objects.exists()
    assert relay.wakeups == 0


@pytest.mark.django_db(transaction=True)
def test_every_listener_of_a_channel_gets_the_key_once_the_change_commits():
    with wakeup.Listener(wakeup.ORDERS) as one, wakeup.Listener(wakeup.ORDERS) as two:
        with transaction.atomic():
            wakeup.notify(wakeup.ORDERS, "42")
            assert one.drain() == []  # not before the commit
        assert one.wait(10.0) == ["42"]
        assert two.wait(10.0) == ["42"]
        assert one.drain() == []


@pytest.mark.django_db(transaction=True)
def test_another_channel_is_not_woken_and_unknown_channels_are_refused():
    with wakeup.Listener(wakeup.OUTBOX) as outbox:
        wakeup.notify(wakeup.ORDERS, "7")
        assert outbox.wait(0.3) == []
    with pytest.raises(ValueError):
        wakeup.notify("warren_outbox; DROP TABLE x", "")
    with pytest.raises(ValueError):
        wakeup.Listener("nope")


@pytest.mark.django_db(transaction=True)
def test_a_dead_listeners_socket_is_removed_by_the_next_sender():
    if wakeup.is_postgresql():
        pytest.skip("SQLite's datagram sockets only")
    with wakeup.Listener(wakeup.ORDERS) as alive:
        folder = wakeup._wake_dir(wakeup.ORDERS)
        dead = folder / "999999999-0"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(dead))  # bound, then closed: nobody receives any more
        wakeup.notify(wakeup.ORDERS, "1")
        assert alive.wait(10.0) == ["1"]
        assert not dead.exists()


@pytest.mark.django_db(transaction=True)
def test_the_hub_wakes_a_waiting_page_for_its_own_order_only():
    hub = wakeup.Hub()
    seen = hub.generation("5")
    assert _wait_until(lambda: hub.thread is not None and hub.thread.is_alive())
    results: dict[str, int] = {}

    def wait(key: str, timeout: float) -> None:
        results[key] = hub.wait(key, hub.generation(key), timeout)

    other = threading.Thread(target=wait, args=("6", 1.0))
    other.start()
    # The hub's listener may not be bound yet: notify until the waiting key moves.
    assert _wait_until(lambda: (wakeup.notify(wakeup.ORDERS, "5"), hub.generation("5"))[1] > seen)
    other.join()
    hub.stop()
    assert results["6"] == 0  # its order never changed: it waited out its timeout


# -- the socket folder is ours alone -------------------------------------------------------------


@pytest.fixture
def wake_root(tmp_path: Path, settings: Any) -> Path:
    if wakeup.is_postgresql():
        pytest.skip("SQLite's datagram sockets only")
    settings.WAKEUP_DIR = str(tmp_path / "wake")
    return tmp_path / "wake"


@pytest.mark.django_db(transaction=True)
def test_the_socket_folders_are_made_private_and_not_in_the_shared_temp_folder(
    wake_root: Path,
) -> None:
    with wakeup.Listener(wakeup.ORDERS):
        folder = wakeup._wake_dir(wakeup.ORDERS)
        for path in (wake_root, folder.parent, folder):
            info = os.lstat(path)
            assert stat.S_ISDIR(info.st_mode) and info.st_mode & 0o777 == 0o700
            assert info.st_uid == os.getuid()
    import store.settings  # the configured default, not this test's override

    assert not Path(store.settings.WAKEUP_DIR).is_relative_to(tempfile.gettempdir())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("planted", ["open_mode", "other_owner", "symlink"])
def test_a_folder_someone_else_prepared_is_not_used(wake_root: Path, planted: str) -> None:
    folder = wakeup._wake_dir(wakeup.ORDERS)
    wake_root.mkdir(mode=0o700)
    if planted == "symlink":
        elsewhere = wake_root.parent / "theirs"
        elsewhere.mkdir(mode=0o700)
        folder.parent.symlink_to(elsewhere)
    else:
        folder.parent.mkdir(mode=0o700)
        if planted == "open_mode":
            folder.parent.chmod(0o777)
        else:
            os.chown(folder.parent, 65534, 65534)  # nobody: the tests run as root here

    with pytest.raises(wakeup.UnsafeWakeFolder):
        wakeup.Listener(wakeup.ORDERS)

    assert not any(p.is_socket() for p in wake_root.rglob("*"))


@pytest.mark.django_db(transaction=True)
def test_a_sender_sends_nothing_into_a_folder_opened_up_after_the_listener_started(
    wake_root: Path,
) -> None:
    with wakeup.Listener(wakeup.ORDERS) as listener:
        folder = wakeup._wake_dir(wakeup.ORDERS)
        folder.chmod(0o777)  # someone else could now put their socket here

        wakeup.notify(wakeup.ORDERS, "42")

        assert listener.wait(0.5) == []
        folder.chmod(0o700)
        wakeup.notify(wakeup.ORDERS, "43")
        assert listener.wait(10.0) == ["43"]
