"""Reads from a guest are bounded in size as well as time (issue 20): a management API that
answers without end, or trickles, and a guest agent socket that never ends its reply, end in the
clients' own errors with the host's memory untouched. Real peers: an HTTP server on loopback and
a Unix socket in a temporary folder."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vmbackend.machine.guest_agent import GuestAgent, GuestAgentError
from vmbackend.machine.management_api import ManagementAPI, ManagementAPIError

LIMIT = 256 * 1024


class Endless(BaseHTTPRequestHandler):
    """/endless: a chunked body that never ends; /long: a Content-Length far over the limit;
    /trickle: a few bytes now and then, each read well inside the socket timeout."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return None

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        chunk = b"[" + b"1," * 32 * 1024
        sent = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if self.path.endswith("/long"):
                self.send_header("Content-Length", str(10**12))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while sent < 10**9:
                if self.path.endswith("/long"):
                    self.wfile.write(chunk)
                elif self.path.endswith("/trickle"):
                    time.sleep(0.1)
                    self.wfile.write(b"2\r\n1,\r\n")
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the client hung up: what it is meant to do
            pass


@pytest.fixture
def endless() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", ["api/endless", "api/long"])
def test_an_endless_management_answer_is_an_error_at_the_limit(endless, path):
    api = ManagementAPI(endless, "admin", "pw-not-shown-123", timeout=30, max_answer=LIMIT)
    with pytest.raises(ManagementAPIError, match=f"longer than {LIMIT} bytes") as caught:
        api.get(path)
    assert "pw-not-shown-123" not in str(caught.value)


def test_the_default_limit_holds_too(endless):
    api = ManagementAPI(endless, "admin", "pw-123456789012", timeout=30)
    with pytest.raises(ManagementAPIError, match="longer than 8388608 bytes"):
        api.get("api/endless")


def test_a_trickling_answer_ends_at_the_timeout_as_a_whole(endless):
    """Each read comes within the socket's timeout; the answer as a whole does not."""
    api = ManagementAPI(endless, "admin", "pw-123456789012", timeout=0.5)
    with pytest.raises(ManagementAPIError, match="not complete in time"):
        api.get("api/trickle")


def _endless_agent(path: Path, stop: threading.Event, reply: bytes) -> threading.Thread:
    """A guest agent socket that answers any request with `reply` repeated without end."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(0.2)

    def serve() -> None:
        with srv:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(4096)
                    try:
                        while not stop.is_set():
                            conn.sendall(reply * 4096)
                    except OSError:
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "reply",
    [
        b"x",  # never the sync byte: the sync's look for it must end
        b'\xff{"return": ',  # the sync byte, then a line that never ends
    ],
)
def test_an_endless_guest_agent_reply_is_an_error_at_the_limit(short_tmp, reply):
    stop = threading.Event()
    path = short_tmp / "ga.sock"
    thread = _endless_agent(path, stop, reply)
    agent = GuestAgent(path, max_reply=LIMIT)
    try:
        with pytest.raises(GuestAgentError, match=f"longer than {LIMIT} bytes"):
            agent.sync(timeout=30)
        assert agent._buf == b"" and agent._sock is None  # dropped, not kept
    finally:
        stop.set()
        thread.join(5)
