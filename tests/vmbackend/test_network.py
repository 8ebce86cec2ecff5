import subprocess
import uuid

import pytest

from vmbackend import network
from vmbackend.network import NetworkError


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


@pytest.mark.parametrize("addresses,expected", [
    (["127.0.0.1", "fe80::1", "10.0.2.15", "fd00::5"], "10.0.2.15"),
    (["10.1.2.3/24"], "10.1.2.3"),
    (["::1", "fe80::5054:ff:fe12:3456", "2001:db8::7"], "2001:db8::7"),
    (["127.0.0.1", "169.254.3.4", "fe80::1", "garbage"], None),
    ([], None),
])
def test_the_preferred_address_skips_loopback_and_link_local(addresses, expected):
    assert network.preferred_address(addresses) == expected


@pytest.fixture
def netns():
    name = f"wtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "add", "br-t", "type", "bridge"],
                       check=True, timeout=10)
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
