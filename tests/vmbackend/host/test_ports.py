import random
import socket

import pytest

from vmbackend.host import ports


def _listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_it_allocates_distinct_free_ports_in_the_range():
    got = ports.allocate(2, used=[], bind_address="127.0.0.1", port_min=31000, port_max=31999)
    assert len(set(got)) == 2
    assert all(31000 <= p <= 31999 for p in got)
    assert all(ports.is_free("127.0.0.1", p) for p in got)


def test_it_skips_ports_other_vms_hold():
    got = ports.allocate(
        2, used=[31000, 31001], bind_address="127.0.0.1", port_min=31000, port_max=31003
    )
    assert sorted(got) == [31002, 31003]


def test_it_skips_a_port_something_else_listens_on():
    with _listener() as busy:
        port = busy.getsockname()[1]
        assert not ports.is_free("127.0.0.1", port)
        got = ports.allocate(1, used=[], bind_address="127.0.0.1", port_min=port, port_max=port + 1)
        assert got == [port + 1]


def test_it_says_so_when_the_range_is_exhausted():
    with pytest.raises(ports.NoFreePorts, match="31000-31001"):
        ports.allocate(2, used=[31001], bind_address="127.0.0.1", port_min=31000, port_max=31001)


def test_many_allocations_never_collide():
    used: list[int] = []
    rng = random.Random(7)
    for _ in range(20):
        used += ports.allocate(
            2, used=used, bind_address="127.0.0.1", port_min=32000, port_max=32039, rng=rng
        )
    assert len(used) == len(set(used)) == 40
    with pytest.raises(ports.NoFreePorts):
        ports.allocate(1, used=used, bind_address="127.0.0.1", port_min=32000, port_max=32039)


def test_a_port_with_only_time_wait_connections_is_free_again():
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU's hostfwd does
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end lingers in TIME_WAIT
        client.close()
    assert ports.is_free("127.0.0.1", port)
