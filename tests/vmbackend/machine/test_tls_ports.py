"""The TLS ports a host forwards at run time (vmbackend/machine/tls_ports.py): the monitor's
command text and answers as data, and, on the tiny image, a forward added and removed on a running
QEMU and a file written through the guest agent (the real RabbitMQ image: tls/test_tls_slow.py)."""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.net import free_port
from vmbackend.machine import tls_ports
from vmbackend.machine.base import MachineError

USERNET = """Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[HOST_FORWARD]  15       127.0.0.1 40001       10.0.2.15  5671     0     0
  TCP[HOST_FORWARD]  14               * 40002       10.0.2.15 15671     0     0
  TCP[ESTABLISHED]   21       127.0.0.1 51234       10.0.2.15 15672     0     0
  UDP[236 sec]       20        10.0.2.2 53          10.0.2.15 55320     0     0
"""


def test_the_monitor_commands_name_the_netdev_the_bind_and_the_ports() -> None:
    assert tls_ports.add_command("127.0.0.1", 40001, 5671) == (
        "hostfwd_add net0 tcp:127.0.0.1:40001-:5671"
    )
    assert tls_ports.remove_command("::1", 40002) == "hostfwd_remove net0 tcp:::1:40002"


@pytest.mark.parametrize(
    ("command", "answer", "failed"),
    [
        ("hostfwd_add net0 tcp:127.0.0.1:1-:5671", "", False),
        ("hostfwd_add net0 tcp:127.0.0.1:1-:5671", "\r\n", False),
        (
            "hostfwd_add net0 tcp:127.0.0.1:1-:5671",
            "Could not set up host forwarding rule 'tcp:127.0.0.1:1-:5671'\r\n",
            True,
        ),
        (
            "hostfwd_remove net0 tcp:127.0.0.1:1",
            "host forwarding rule for tcp:127.0.0.1:1 removed\r\n",
            False,
        ),
        (
            "hostfwd_remove net0 tcp:127.0.0.1:1",
            "host forwarding rule for tcp:127.0.0.1:1 not found\r\n",
            True,
        ),
    ],
)
def test_a_monitor_sentence_is_a_failure_except_a_removal(
    command: str, answer: str, failed: bool
) -> None:
    assert tls_ports.hmp_failed(command, answer) is failed


def test_info_usernet_gives_the_host_forwards_only() -> None:
    assert tls_ports.forwarded(USERNET) == {40001: 5671, 40002: 15671}
    assert tls_ports.forwarded("") == {}


@given(
    st.dictionaries(st.integers(1, 65535), st.integers(1, 65535), max_size=6),
    st.sampled_from(["127.0.0.1", "*", "192.0.2.7"]),
)
def test_any_forwards_read_back_from_the_monitor_s_table(
    forwards: dict[int, int], source: str
) -> None:
    lines = ["Hub -1 (net0):", "  Protocol[State]    FD  Source Address  Port   Dest. Address"]
    lines += [
        f"  TCP[HOST_FORWARD]  {n + 9:>3} {source:>15} {host:>5} {'10.0.2.15':>15} {guest:>5}  0  0"
        for n, (host, guest) in enumerate(forwards.items())
    ]
    assert tls_ports.forwarded("\n".join(lines)) == forwards


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_only_the_issued_certificate_is_the_vm_s_own(served: bytes, issued: bytes) -> None:
    assert tls_ports.is_own(served, issued) is (bool(served) and served == issued)


def _answers(port: int) -> bool:
    """Whether something accepts a connection on the host's port and keeps it (slirp accepts a
    forwarded connection first and closes it when the guest refuses)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return bool(conn.recv(16))
    except OSError:
        return False


@pytest.mark.vm
def test_a_forward_added_at_run_time_answers_and_goes_away_when_removed(machine_factory) -> None:
    m = machine_factory()
    m.launch()
    m.wait_guest_agent(time.monotonic() + 600)
    m.wait_management(m.management_url(), time.monotonic() + 600)
    port = free_port()
    qmp_path = m.paths.qmp
    assert not _answers(port)
    tls_ports.forward(qmp_path, "127.0.0.1", port, 15672)  # the tiny image's HTTP server
    assert tls_ports.forwarded(tls_ports._hmp(qmp_path, "info usernet"))[port] == 15672
    assert _answers(port)
    with pytest.raises(MachineError, match="hostfwd_add"):  # the same port twice
        tls_ports.forward(qmp_path, "127.0.0.1", port, 15672)
    tls_ports.unforward(qmp_path, "127.0.0.1", port)
    assert not _answers(port)
    with pytest.raises(MachineError, match="not found"):
        tls_ports.unforward(qmp_path, "127.0.0.1", port)
    # No TLS listens in the tiny guest: the check fails, and its loopback forward is gone again.
    with pytest.raises(MachineError, match="TLS check of guest port 15672"):
        tls_ports.served_certificate(qmp_path, 15672)
    assert set(tls_ports.forwarded(tls_ports._hmp(qmp_path, "info usernet"))) == {
        m.spec.network.management_port,
        m.spec.network.amqp_port,
    } - {None}


@pytest.mark.vm
def test_a_guest_file_written_in_place_keeps_its_owner_and_mode(machine_factory) -> None:
    m = machine_factory()
    m.launch()
    m.wait_guest_agent(time.monotonic() + 600)
    setup = "umask 077; echo old > /tmp/f; chown 1:1 /tmp/f; chmod 0400 /tmp/f"
    assert m.guest_exec("/bin/sh", ["-c", setup])[0] == 0
    m.write_guest_file("/tmp/f", b"new contents\n")
    code, out = m.guest_exec("/bin/sh", ["-c", "stat -c '%u %a' /tmp/f; cat /tmp/f"])
    assert (code, out) == (0, b"1 400\nnew contents\n")
    m.write_guest_file("/tmp/missing", b"x")  # made by the agent: root's, 0600
    code, out = m.guest_exec("/bin/sh", ["-c", "stat -c '%u %a' /tmp/missing"])
    assert out.split()[0] == b"0"
