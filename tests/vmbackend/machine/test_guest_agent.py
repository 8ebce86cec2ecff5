"""The guest agent client against a stand-in agent on a real Unix socket (the protocol as qemu-ga
speaks it), plus address filtering. The real qemu-ga is exercised in test_machine.py."""

import base64
import json
import os
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmbackend.machine.guest_agent import (
    MAX_EXEC_OUTPUT,
    ExecResult,
    GuestAgent,
    GuestAgentError,
    GuestReplyError,
    parse_exec_pid,
    parse_exec_status,
    routable_addresses,
)


class FakeAgent:
    """Accepts one client at a time like QEMU's chardev; answers like qemu-ga."""

    def __init__(self, path, stale=b"", silent_for=0.0, exec_runs=2, status_reply=None):
        self.path = path
        # When set: guest-exec-status's `return` value, as a broken or hostile guest sends it.
        self.status_reply = status_reply
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
            if self.status_reply is not None:
                return json.dumps({"return": self.status_reply}).encode() + b"\n"
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


# -- malformed replies: typed errors (issue 20: a non-numeric exit code stopped a renewal round)
_B64 = base64.b64encode(b"ok\n").decode()


@pytest.mark.parametrize(
    "reply",
    [
        {"exited": True, "exitcode": "abc"},
        {"exited": True, "exitcode": "0"},
        {"exited": True, "exitcode": True},
        {"exited": True, "exitcode": 1.5},
        {"exited": True, "exitcode": 2**40},
        {"exited": "yes", "exitcode": 0},
        {"exitcode": 0},
        {"exited": True, "exitcode": 0, "out-data": 123},
        {"exited": True, "exitcode": 0, "out-data": "!!not base64!!"},
        {"exited": True, "exitcode": 0, "err-data": ["x"]},
        {"exited": True, "exitcode": 0, "out-data": "QUJD" * (MAX_EXEC_OUTPUT // 3 + 1)},
        [0],
        "exited",
    ],
)
def test_a_malformed_exec_status_is_a_typed_error_over_the_socket(sock_path, reply):
    agent = FakeAgent(sock_path, status_reply=reply)
    try:
        with GuestAgent(sock_path) as ga, pytest.raises(GuestReplyError, match="guest-exec-status"):
            ga.exec("/bin/true", timeout=5)
    finally:
        agent.close()


@pytest.mark.parametrize("reply", [{"pid": "42"}, {"pid": None}, {}, {"pid": -1}, [42], 42])
def test_a_malformed_exec_start_is_a_typed_error(reply):
    with pytest.raises(GuestReplyError, match="guest-exec"):
        parse_exec_pid(reply)


def test_well_formed_replies_still_parse():
    assert parse_exec_pid({"pid": 7}) == 7
    assert parse_exec_status({"exited": False}) is None
    assert parse_exec_status({"exited": True, "exitcode": 3, "out-data": _B64}) == ExecResult(
        3, b"ok\n", b""
    )
    assert parse_exec_status({"exited": True, "signal": 9}) == ExecResult(-1, b"", b"")
    assert issubclass(GuestReplyError, GuestAgentError)  # every caller's handler takes it


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
_status = st.fixed_dictionaries(
    {},
    optional={
        "exited": st.booleans() | _json,
        "exitcode": st.integers() | _json,
        "signal": st.integers(),
        "out-data": st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | _json,
        "err-data": st.text(max_size=16) | _json,
    },
)


@given(reply=_status | _json)
def test_any_status_reply_parses_or_is_a_typed_error(reply):
    try:
        result = parse_exec_status(reply)
    except GuestReplyError:
        return
    assert result is None or (type(result.exitcode) is int and isinstance(result.stdout, bytes))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reply=_status | _json)
def test_generated_replies_through_a_real_socket_parse_or_are_typed(sock_path, reply):
    """The client end to end: whatever the peer sends as a status, exec returns or raises
    GuestAgentError (GuestReplyError, or a timeout for a never-ending "running")."""
    if sock_path.exists():
        sock_path.unlink()
    agent = FakeAgent(sock_path, status_reply=reply)
    try:
        with GuestAgent(sock_path) as ga:
            try:
                result = ga.exec("/bin/true", timeout=0.6)
            except GuestAgentError:
                return
            assert type(result.exitcode) is int
    finally:
        agent.close()
