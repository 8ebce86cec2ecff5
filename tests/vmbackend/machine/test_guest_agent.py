"""The guest agent client against a stand-in agent on a real Unix socket (the protocol as qemu-ga
speaks it), plus address filtering. The real qemu-ga is exercised in test_machine.py."""

import base64
import json
import os
import socket
import threading
import time

import pytest

from vmbackend.machine.guest_agent import GuestAgent, GuestAgentError, routable_addresses


class FakeAgent:
    """Accepts one client at a time like QEMU's chardev; answers like qemu-ga."""

    def __init__(self, path, stale=b"", silent_for=0.0, exec_runs=2):
        self.path = path
        self.stale = stale
        self.silent_until = time.monotonic() + silent_for
        self.exec_runs = exec_runs
        self.requests = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(1)
        self.srv.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.srv.close()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.2)
                if self.stale:
                    conn.sendall(self.stale)
                buf = b""
                while not self.stop:
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    buf += data.replace(b"\xff", b"")
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if time.monotonic() < self.silent_until:
                            continue  # agent not started yet: the socket accepts, nobody answers
                        conn.sendall(self._answer(json.loads(line)))

    def _answer(self, req):
        self.requests.append(req)
        name, args = req["execute"], req.get("arguments", {})
        if name == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n"
        if name == "guest-ping":
            return b'{"return": {}}\n'
        if name == "guest-exec":
            self.stdin = base64.b64decode(args.get("input-data", ""))
            return b'{"return": {"pid": 42}}\n'
        if name == "guest-exec-status":
            self.exec_runs -= 1
            if self.exec_runs > 0:
                return b'{"return": {"exited": false}}\n'
            out = base64.b64encode(b"vm-1\n").decode()
            return (
                json.dumps({"return": {"exited": True, "exitcode": 0, "out-data": out}}).encode()
                + b"\n"
            )
        if name == "guest-network-get-interfaces":
            return json.dumps({"return": INTERFACES}).encode() + b"\n"
        return (
            json.dumps({"error": {"class": "CommandNotFound", "desc": f"{name} unknown"}}).encode()
            + b"\n"
        )


INTERFACES = [
    {
        "name": "lo",
        "ip-addresses": [
            {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
            {"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128},
        ],
    },
    {
        "name": "eth0",
        "hardware-address": "52:54:00:12:34:56",
        "ip-addresses": [
            {"ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fe12:3456%eth0", "prefix": 64},
            {"ip-address-type": "ipv6", "ip-address": "fec0::5054:ff:fe12:3456", "prefix": 64},
            {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24},
        ],
    },
    {
        "name": "eth1",
        "ip-addresses": [
            {"ip-address-type": "ipv4", "ip-address": "169.254.3.4", "prefix": 16},
            {"ip-address-type": "ipv4", "ip-address": "not-an-ip"},
            {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24},
        ],
    },
    {"name": "eth2"},
]


@pytest.fixture
def sock_path(tmp_path):
    return tmp_path / "qga.sock"


def test_routable_addresses_drop_loopback_link_local_and_junk():
    assert routable_addresses(INTERFACES) == ["10.0.2.15", "fec0::5054:ff:fe12:3456"]


@pytest.mark.parametrize("junk", [None, {}, "x", [1, "a"], [{"ip-addresses": "x"}]])
def test_routable_addresses_tolerate_malformed_replies(junk):
    assert routable_addresses(junk) == []


def test_it_syncs_past_stale_replies_and_runs_commands(sock_path):
    agent = FakeAgent(sock_path, stale=b'{"return": 12345}\n\xff{"return": 999}\n garbage\n')
    try:
        with GuestAgent(sock_path) as ga:
            ga.sync(timeout=3)
            ga.ping()
            assert ga.addresses() == ["10.0.2.15", "fec0::5054:ff:fe12:3456"]
        sync = agent.requests[0]
        assert sync["execute"] == "guest-sync-delimited"
        assert 0 < sync["arguments"]["id"] < 2**31
    finally:
        agent.close()


def test_exec_passes_stdin_and_waits_for_the_exit(sock_path):
    agent = FakeAgent(sock_path, exec_runs=3)
    try:
        with GuestAgent(sock_path) as ga:
            result = ga.exec("/bin/hostname", input_data=b'{"hostname": "vm-1"}', timeout=5)
        assert (result.exitcode, result.stdout) == (0, b"vm-1\n")
        assert agent.stdin == b'{"hostname": "vm-1"}'
        assert [r["execute"] for r in agent.requests].count("guest-exec-status") == 3
    finally:
        agent.close()


def test_an_error_reply_raises_with_the_agents_reason(sock_path):
    agent = FakeAgent(sock_path)
    try:
        with (
            GuestAgent(sock_path) as ga,
            pytest.raises(GuestAgentError, match="guest-bogus unknown"),
        ):
            ga.execute("guest-bogus")
    finally:
        agent.close()


def test_a_silent_agent_times_out_and_wait_retries_until_it_answers(sock_path):
    agent = FakeAgent(sock_path, silent_for=1.5)
    try:
        ga = GuestAgent(sock_path)
        with pytest.raises(GuestAgentError, match="not answering"):
            ga.sync(timeout=0.3)
        ga.wait(time.monotonic() + 10, attempt=0.5)
        ga.ping()
        ga.close()
    finally:
        agent.close()


def test_wait_gives_up_at_the_deadline_when_nothing_listens(sock_path):
    started = time.monotonic()
    with pytest.raises(GuestAgentError, match="did not answer"):
        GuestAgent(sock_path).wait(time.monotonic() + 0.5)
    assert time.monotonic() - started < 5


def test_a_long_socket_path_still_connects(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "x.sock"
    assert len(str(path)) > 108
    agent = _agent_bound_by_relative_name(path)
    try:
        with GuestAgent(path) as ga:
            ga.sync(timeout=3)
    finally:
        agent.close()


def _agent_bound_by_relative_name(path):  # the path itself is too long for bind()
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        return FakeAgent(path.name)
    finally:
        os.chdir(cwd)
