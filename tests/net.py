"""Loopback ports for tests and bench scripts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port that nothing listens on at the moment of the call.

    The port is given back before returning, so the caller can bind it (or use it as a port
    nobody answers on); on a busy host another socket may take it first, which tests accept."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
