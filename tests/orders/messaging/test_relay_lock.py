"""One outbox relay at a time (orders/messaging/relay_lock.py): real relay processes, killed with
SIGKILL, on the database the tests run on (SQLite file or PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from orders.messaging.relay_lock import AdvisoryLock, FileLock, relay_lock
from tests.orders.conftest import get_all
from vmbackend.protocol import topology

ROOT = Path(__file__).resolve().parents[3]
TAKEOVER_TIMEOUT = 60


class Worker:
    """A `manage.py relay_outbox` process whose log lines are collected as they come."""

    def __init__(self, env: dict[str, str], url: str):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "relay_outbox", "--url", url, "--poll", "0.2"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def logged(self, needle: str) -> bool:
        return any(needle in line for line in self.lines)

    def wait_for(self, needle: str, timeout: float = TAKEOVER_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.logged(needle):
                return
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} never logged:\n{''.join(self.lines)[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def worker_env(request, tmp_path) -> Iterator[dict[str, str]]:
    """The environment of a relay process on a database this test can also write to."""
    # One secrets key for every process of this test (a server database requires it).
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "store.settings",
        "WARREN_SECRETS_KEYS": Fernet.generate_key().decode(),
    }
    if connection.vendor == "postgresql":
        request.getfixturevalue("transactional_db")  # rows the processes can see (committed)
        settings = connection.settings_dict
        env["DATABASE_URL"] = (
            f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
        )
        yield env
        _wait_for_sessions_to_end()
        return
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--skip-checks", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    yield env


def _wait_for_sessions_to_end() -> None:
    """The killed relays' sessions (and their advisory lock) end a moment after them."""
    for _ in range(300):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid ="
                " l.database WHERE l.locktype = 'advisory'"
                " AND d.datname = current_database()"
            )
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.1)
    raise AssertionError("a killed relay's advisory lock outlived it by 30 s")


def _enqueue(env: dict[str, str], n: int) -> None:
    """A create-vm row written by another process (the shop's web, in real life)."""
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from orders.core.provisioning import enqueue; "
            f"enqueue(routing_key='create-vm', body={{'version': 1, 'command': 'create-vm', 'n': {n}}})",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )


def _published(channel, expected: int) -> list[bytes]:
    bodies: list[bytes] = []
    deadline = time.monotonic() + TAKEOVER_TIMEOUT
    while len(bodies) < expected and time.monotonic() < deadline:
        bodies += [body for _, _, body in get_all(channel, topology.CREATE_QUEUE)]
        time.sleep(0.2)
    time.sleep(1.0)  # anything published twice would arrive now
    return bodies + [body for _, _, body in get_all(channel, topology.CREATE_QUEUE)]


def test_one_relay_at_a_time_and_the_second_takes_over_when_the_first_dies(
    worker_env, amqp, orders_amqp_url
):
    first = Worker(worker_env, orders_amqp_url)
    second = None
    try:
        first.wait_for("event=relay_connected")
        second = Worker(worker_env, orders_amqp_url)
        second.wait_for("event=relay_waiting_for_lock")

        _enqueue(worker_env, 1)
        assert len(_published(amqp, 1)) == 1  # exactly once: the second relay only waits
        assert not second.logged("event=relay_connected")

        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
        second.wait_for("event=relay_connected")
        _enqueue(worker_env, 2)
        (body,) = _published(amqp, 1)
        assert b'"n":2' in body.replace(b" ", b"")
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_the_lock_is_held_by_one_holder_at_a_time(db, tmp_path):
    """Two holders in one process (two files / two sessions) exclude each other like two
    processes do."""
    if connection.vendor == "postgresql":
        one, two = AdvisoryLock(), AdvisoryLock()
    else:
        assert relay_lock().try_acquire()  # the in-memory test database: nothing to lock
        one, two = (
            FileLock(str(tmp_path / "x.relay-lock")),
            FileLock(str(tmp_path / "x.relay-lock")),
        )
    try:
        assert one.try_acquire()
        assert not two.try_acquire()
        assert one.still_held()
        one.release()
        assert two.try_acquire()
    finally:
        one.release()
        two.release()
