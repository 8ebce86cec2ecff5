import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.vmbackend.daemon_helpers import (
    Daemons,
    clean_broker,
    qemu_pids,
    read_state,
    wait_host,
)
from vmbackend.client import Client
from vmbackend.host import network
from vmbackend.host.network import NetworkError


def test_tap_names_fit_ifnamsiz_and_are_stable():
    name = network.tap_name("0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10")
    assert len(name) <= 15 and name.startswith("wt")
    assert name == network.tap_name("0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10")
    assert name != network.tap_name("another")


def test_macs_are_qemu_range_stable_and_unique_among_taken():
    mac = network.mac_for("vm-1")
    assert mac.startswith("52:54:00:") and len(mac) == 17
    assert network.mac_for("vm-1") == mac
    other = network.mac_for("vm-1", taken=[mac])
    assert other != mac and other.startswith("52:54:00:")


def test_many_vms_get_distinct_macs():
    taken: list[str] = []
    for i in range(300):
        taken.append(network.mac_for(f"vm-{i}", taken=taken))
    assert len(set(taken)) == 300


@pytest.mark.parametrize(
    "addresses,expected",
    [
        (["127.0.0.1", "fe80::1", "10.0.2.15", "fd00::5"], "10.0.2.15"),
        (["10.1.2.3/24"], "10.1.2.3"),
        (["::1", "fe80::5054:ff:fe12:3456", "2001:db8::7"], "2001:db8::7"),
        (["127.0.0.1", "169.254.3.4", "fe80::1", "garbage"], None),
        ([], None),
    ],
)
def test_the_preferred_address_skips_loopback_and_link_local(addresses, expected):
    assert network.preferred_address(addresses) == expected


@pytest.fixture
def netns():
    name = f"wtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "add", "br-t", "type", "bridge"],
            check=True,
            timeout=10,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


def test_a_tap_is_created_on_the_bridge_and_removed(netns):
    tap = network.tap_name("vm-net-1")
    network.create_tap(tap, "br-t", netns=netns)
    assert network.link_exists(tap, netns)
    assert network.bridge_of(tap, netns) == "br-t"
    network.create_tap(tap, "br-t", netns=netns)  # idempotent: a resumed boot calls it again
    assert network.bridge_of(tap, netns) == "br-t"
    network.delete_tap(tap, netns=netns)
    assert not network.link_exists(tap, netns)
    network.delete_tap(tap, netns=netns)  # deleting twice is fine (cleanup path)


def test_a_missing_bridge_is_a_clear_error(netns):
    with pytest.raises(NetworkError, match="bridge br-none does not exist"):
        network.create_tap("wtx", "br-none", netns=netns)
    assert not network.link_exists("wtx", netns)


def _in_ns(ns, *cmd, check=True):
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], check=check, timeout=30, capture_output=True, text=True
    )


@pytest.fixture
def bridged_netns():
    """A private network namespace with bridge br-t (192.168.77.1/24), a DHCP server on it, and a
    relay from its own 127.0.0.1:5672 to the host's broker through a Unix socket (so a daemon run
    inside the namespace reaches the broker while the VMs' traffic stays in the namespace)."""
    ns = f"wbr-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="wbr-"))
    procs: list[subprocess.Popen] = []
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        _in_ns(ns, "ip", "link", "set", "lo", "up")
        _in_ns(ns, "ip", "link", "add", "br-t", "type", "bridge")
        _in_ns(ns, "ip", "addr", "add", "192.168.77.1/24", "dev", "br-t")
        _in_ns(ns, "ip", "link", "set", "br-t", "up")
        (work / "leases").touch()
        (work / "udhcpd.conf").write_text(
            "start 192.168.77.100\nend 192.168.77.150\ninterface br-t\n"
            f"lease_file {work}/leases\npidfile {work}/udhcpd.pid\n"
            "option subnet 255.255.255.0\noption lease 3600\n"
        )
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, "busybox", "udhcpd", "-f", str(work / "udhcpd.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        sock = work / "amqp.sock"
        procs.append(
            subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{sock},fork", "TCP:127.0.0.1:5672,connect-timeout=5"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "socat",
                    "TCP-LISTEN:5672,bind=127.0.0.1,fork,reuseaddr",
                    f"UNIX-CONNECT:{sock}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        yield ns
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=10)
        shutil.rmtree(work, ignore_errors=True)


PROBE = """
import base64, sys, urllib.request, urllib.error
url, user, password = sys.argv[1:4]
token = base64.b64encode(f"{user}:{password}".encode()).decode()
req = urllib.request.Request(url + "api/overview", headers={"Authorization": "Basic " + token})
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


@pytest.mark.vm
def test_bridge_mode_boots_a_vm_on_a_tap_and_uses_the_guest_address(
    bridged_netns, amqp_url, tmp_path, tiny_images_root
):
    ns = bridged_netns
    clean_broker(amqp_url)
    pool = Daemons(tmp_path, amqp_url, tiny_images_root)
    admin = {"username": "warren-bridge", "password": "bridge-password-123"}
    try:
        daemon = pool.start(
            netns=ns, extra_env={"WARREN_NETWORK": "bridge", "WARREN_BRIDGE": "br-t"}
        )
        with Client(amqp_url) as client:
            client.watch_events("#")
            wait_host(client, daemon.host_id)
            reply = client.call(
                "create-vm", {"image": "tiny", "vm-id": "vm-br-1", "memory-mb": 256, "admin": admin}
            )
            assert reply["execution-info"]["status"] == "success"
            ready = client.wait_event("vm-br-1", ("instance.ready", "instance.failed"), 240)
            assert ready["type"] == "instance.ready", ready
            url = ready["management_url"]
            assert url.startswith("http://192.168.77.") and url.endswith(":15672/")
            guest_ip = url.split("//")[1].split(":")[0]
            assert guest_ip in ready["ip_addresses"]
            assert ready["amqp_url"] == f"amqp://warren-bridge@{guest_ip}:5672/"

            probe = [sys.executable, "-c", PROBE, url]
            assert _in_ns(ns, *probe, admin["username"], admin["password"]).stdout.strip() == "200"
            assert _in_ns(ns, *probe, "guest", "guest").stdout.strip() == "401"

            state = read_state(daemon.state_dir, "vm-br-1")
            tap, mac = state["tap"], state["mac"]
            assert state["ports"] == {}
            assert network.bridge_of(tap, ns) == "br-t"
            (pid,) = qemu_pids(daemon.state_dir)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert f"ifname={tap}" in cmdline and f"mac={mac}" in cmdline
            assert not network.link_exists(tap)  # the tap lives only in the test's namespace

            done = client.call("delete-vm", {"vm-id": "vm-br-1"}, timeout=60)
            assert done["response"]["status"] == "deleted"
            assert not network.link_exists(tap, ns)
            assert qemu_pids(daemon.state_dir) == []
            assert json.dumps(ready).count(admin["password"]) == 0
    finally:
        pool.cleanup()
