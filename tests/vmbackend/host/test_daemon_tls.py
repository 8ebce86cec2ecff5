"""A daemon with TLS on (WARREN_TLS_DIR) end to end with the tiny image: the real daemon
subprocess, the real broker, real QEMU. The tiny image has no RabbitMQ, so its VM stays on plain
URLs; the host still gives it the four ports and its renewal thread runs without harm. The
RabbitMQ side (certificate in the guest, amqps/https verified, renewal) is test_tls_slow.py's."""

from pathlib import Path

import pytest

from tests.vmbackend.daemon_helpers import basic_auth_status, read_state, wait_host
from vmbackend.tls import authority

ADMIN = {"username": "warren-tls1", "password": "correct-horse-battery-9"}


@pytest.mark.vm
def test_a_tls_host_boots_a_vm_of_an_image_without_tls(daemons, client, tmp_path: Path) -> None:
    authority.init_ca(tmp_path / "root")
    authority.init_host(tmp_path / "root", "tls-host", tmp_path / "host")
    daemon = daemons.start(
        extra_env={"WARREN_TLS_DIR": str(tmp_path / "host"), "WARREN_TLS_CHECK_INTERVAL": "0.2"}
    )
    wait_host(client, daemon.host_id)
    reply = client.call(
        "create-vm",
        {
            "image": "tiny",
            "vm-id": "vm-tls-1",
            "memory-mb": 256,
            "admin": ADMIN,
            "plain-ports": False,
        },
    )
    assert reply["execution-info"]["status"] == "success", reply
    ready = client.wait_event("vm-tls-1", ("instance.ready", "instance.failed"), 240)
    assert ready["type"] == "instance.ready", ready
    assert ready["management_url"].startswith("http://127.0.0.1:")
    assert basic_auth_status(ready["management_url"], ADMIN["username"], ADMIN["password"]) == 200
    state = read_state(daemon.state_dir, "vm-tls-1")
    assert state is not None
    assert set(state["ports"]) == {"management", "amqp", "amqps", "https"}
    assert state["tls_cert"] == ""  # nothing to renew: the renewal thread leaves it alone
    log = daemon.log_path.read_text()  # its rounds (every 0.2 s) ran without an error
    assert "tls renewal round failed" not in log and "Traceback" not in log
    assert ADMIN["password"] not in log


def test_a_daemon_with_an_unusable_tls_folder_refuses_to_start(tmp_path: Path) -> None:
    """Fail at start, not at every customer's boot: an empty folder, a host key that is not the
    certificate's, an intermediate another root signed."""
    from vmbackend.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["daemon", "--tls-dir", str(tmp_path / "empty")]) == 2
    authority.init_ca(tmp_path / "root")
    authority.init_host(tmp_path / "root", "a", tmp_path / "a")
    authority.init_host(tmp_path / "root", "b", tmp_path / "b")
    (tmp_path / "a" / authority.HOST_KEY).write_bytes(
        (tmp_path / "b" / authority.HOST_KEY).read_bytes()
    )
    assert main(["daemon", "--tls-dir", str(tmp_path / "a")]) == 2
