import socket
import threading

import pytest

from vmbackend.machine import qmp


def test_a_missing_socket_is_a_qmp_failure(tmp_path):
    with pytest.raises(qmp.QMPFailure, match="not reachable"):
        qmp.command(tmp_path / "qmp.sock", "query-status", timeout=1)


def test_a_socket_that_never_greets_times_out(tmp_path):
    path = tmp_path / "qmp.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    held = []
    t = threading.Thread(target=lambda: held.append(srv.accept()), daemon=True)
    t.start()
    try:
        with pytest.raises(qmp.QMPFailure, match="handshake"):
            qmp.command(path, "query-status", timeout=0.5)
    finally:
        t.join(2)
        for conn, _ in held:
            conn.close()
        srv.close()
