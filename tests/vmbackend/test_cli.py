import json
import socket
import subprocess
import sys

from tests.vmbackend.daemon_helpers import ROOT


def _run(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "vmbackend", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_command_prints_usage():
    done = _run()
    assert done.returncode == 2
    assert "usage: python -m vmbackend" in done.stderr


def test_the_daemon_refuses_a_bad_config_with_the_setting_name(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WARREN_CAPACITY": "lots", "WARREN_STATE_DIR": str(tmp_path)}
    done = _run("daemon", env=env)
    assert done.returncode == 2
    assert "config error: capacity must be an integer" in done.stderr


def test_a_client_command_with_no_broker_prints_a_json_error_without_the_password():
    url = f"amqp://guest:hunter2-secret@127.0.0.1:{_closed_port()}/%2F"
    done = _run("--amqp-url", url, "list-vms")
    assert done.returncode == 1
    reply = json.loads(done.stdout)
    assert reply["execution-info"]["status"] == "error"
    assert "broker unreachable" in reply["execution-info"]["reason"]
    assert "hunter2" not in done.stdout + done.stderr


def test_client_arguments_are_checked_before_connecting():
    done = _run("stop-vm")
    assert done.returncode == 2
    assert "vm_id" in done.stderr


def test_image_commands_still_reach_the_image_tool():
    done = _run("image", "--help")
    assert done.returncode == 0
    assert "image" in done.stdout.lower()
