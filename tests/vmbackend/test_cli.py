import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.net import free_port
from tests.vmbackend.daemon_helpers import (
    ROOT,
    basic_auth_status,
    qemu_pids,
    wait_host,
)
from vmbackend.client import Client
from vmbackend.protocol import messages
from vmbackend.tls import authority
from vmbackend.tls.scope import Scope, parse_networks, scope_of


def _run(*args, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "vmbackend", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    url = f"amqp://guest:hunter2-secret@127.0.0.1:{free_port()}/%2F"
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


def test_the_console_commands_need_the_vms_host():
    done = _run("resize-vm", "vm-1", "--memory-mb", "512", "--vcpus", "1", "--disk-gb", "4")
    assert done.returncode == 2
    assert "resize-vm goes to the VM's host: give --host" in done.stderr


def test_the_console_commands_reach_the_host_and_the_password_comes_from_stdin(daemons, amqp_url):
    daemon = daemons.start()
    with Client(amqp_url) as client:
        wait_host(client, daemon.host_id)
    env = {**os.environ, "WARREN_AMQP_URL": amqp_url}
    resize = _run(
        "--host",
        daemon.host_id,
        "resize-vm",
        "vm-none",
        "--memory-mb",
        "512",
        "--vcpus",
        "1",
        "--disk-gb",
        "4",
        env=env,
    )
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmbackend",
            "--host",
            daemon.host_id,
            "set-admin-password",
            "vm-none",
            "--username",
            "warren-1",
        ],
        cwd=ROOT,
        env=env,
        input="short\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmbackend",
            "--host",
            daemon.host_id,
            "set-admin-password",
            "vm-none",
            "--username",
            "warren-1",
        ],
        cwd=ROOT,
        env=env,
        input="a-long-enough-password-42\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Parsed and served by the daemon: no such VM there (a bad password is refused first).
    assert json.loads(resize.stdout)["execution-info"]["reason"] == "unknown vm-id"
    assert json.loads(bad.stdout)["execution-info"]["reason"] == (
        f"options.admin.password must be {messages.PASSWORD_RULE}"
    )
    assert json.loads(good.stdout)["execution-info"]["reason"] == "unknown vm-id"
    assert (resize.returncode, bad.returncode, good.returncode) == (1, 1, 1)
    assert "a-long-enough-password-42" not in good.stdout + good.stderr + daemon.log_text()


def test_image_commands_still_reach_the_image_tool():
    done = _run("image", "--help")
    assert done.returncode == 0
    assert "image" in done.stdout.lower()


@pytest.mark.vm
def test_the_cli_drives_a_vm_from_create_to_delete(daemons, amqp_url):
    daemon = daemons.start()
    with Client(amqp_url) as client:
        wait_host(client, daemon.host_id)
    env = dict(os.environ, WARREN_AMQP_URL=amqp_url)

    done = _run(
        "create-vm", "--image", "tiny", "--memory-mb", "256", "--wait-ready", env=env, timeout=400
    )
    assert done.returncode == 0, done.stdout + done.stderr
    decoder = json.JSONDecoder()
    reply, end = decoder.raw_decode(done.stdout)
    ready, _ = decoder.raw_decode(done.stdout[end:].lstrip())
    vm_id = reply["response"]["vm-id"]
    assert ready["type"] == "instance.ready" and ready["instance_id"] == vm_id
    assert (
        basic_auth_status(
            ready["management_url"],
            reply["response"]["admin-username"],
            reply["response"]["admin-password"],
        )
        == 200
    )

    listed = json.loads(_run("list-vms", env=env).stdout)
    assert [(vm["vm-id"], vm["status"]) for vm in listed] == [(vm_id, "ready")]

    stopped = json.loads(_run("stop-vm", vm_id, "--kill", env=env).stdout)
    assert stopped["response"] == {"vm-id": vm_id, "status": "stopped"}
    assert qemu_pids(daemon.state_dir) == []

    unknown = _run("--host", daemon.host_id, "start-vm", "no-such-vm", env=env)
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["execution-info"]["reason"] == "unknown vm-id"

    deleted = _run("delete-vm", vm_id, env=env)
    assert deleted.returncode == 0
    assert json.loads(deleted.stdout)["response"]["status"] == "deleted"
    assert json.loads(_run("list-vms", env=env).stdout) == []


def test_tls_init_ca_takes_the_domain_and_networks_from_the_environment(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "WARREN_VM_DOMAIN": "Servers.Example.ORG",
        "WARREN_VM_NETWORKS": "198.51.100.0/24, 2001:db8::/32",
    }
    env.pop("WARREN_CA_PASSPHRASE", None)
    run = [sys.executable, "-m", "vmbackend", "tls"]
    made = subprocess.run([*run, "init-ca", str(tmp_path / "ca")], env=env, capture_output=True)
    assert made.returncode == 0, made.stderr
    host = subprocess.run(
        [*run, "host", str(tmp_path / "ca"), "host-a", str(tmp_path / "host")],
        env=env,
        capture_output=True,
    )
    assert host.returncode == 0, host.stderr
    assert b"warning" not in host.stderr
    issuer = authority.load_issuer(tmp_path / "host")
    expected = Scope("servers.example.org", parse_networks("198.51.100.0/24,2001:db8::/32"))
    assert scope_of(issuer.root) == scope_of(issuer.cert) == expected
    bad = subprocess.run(
        [*run, "init-ca", str(tmp_path / "other")],
        env={**env, "WARREN_VM_DOMAIN": "localhost"},
        capture_output=True,
    )
    assert bad.returncode == 1 and b"WARREN_VM_DOMAIN" in bad.stderr
    assert not (tmp_path / "other").exists()
