"""A RabbitMQ management-API look-alike for tests: real HTTP on 127.0.0.1 (http.server in a
thread) that checks basic auth like RabbitMQ does (401 to anyone but a known user with the right
password) and keeps users and vhost limits in memory."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASSWORD = "s3cret-pa55word"  # noqa: S105 - a test password; tests check it never leaks


@dataclass
class Broker:
    """What the look-alike knows and saw."""

    users: dict[str, str] = field(default_factory=lambda: {"admin": PASSWORD})
    seen: list[tuple[str, str, str, object]] = field(
        default_factory=list
    )  # method, raw path, user, body
    limits: dict[str, int] = field(default_factory=dict)
    connections: dict[str, str] = field(default_factory=dict)  # AMQP connection name -> user
    overview: dict[str, object] = field(default_factory=lambda: {"management_version": "test"})
    unready: int = 0  # answer 503 to this many requests first
    delay: float = 0.0  # seconds before any answer
    put_delay: float = 0.0  # more seconds before a PUT's answer (a slow write)
    port: int = 0
    # GET api/overview's answer, and GET api/nodes/<name>'s by node name (metrics tests set them)
    overview: object = field(default_factory=lambda: {"management_version": "test"})
    nodes: dict[str, object] = field(default_factory=dict)

    def url(self, prefix: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"


def _handler(broker: Broker) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
            pass

        def _reply(self, status: int, body: object = None) -> None:
            data = (
                b""
                if body is None
                else (body if isinstance(body, bytes) else json.dumps(body).encode())
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _user(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return None
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user if broker.users.get(user) == password else None

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            user = self._user()
            broker.seen.append((self.command, self.path, user or "", body))
            time.sleep(broker.delay + (broker.put_delay if self.command == "PUT" else 0.0))
            if broker.unready > 0:
                broker.unready -= 1
                return self._reply(503, b"starting")
            if user is None:
                return self._reply(401, b'{"error":"not_authorised"}')
            route = self.path.split("/", 3)[1:]  # ["", "api", "users", "x"] without the first ""
            if self.command == "GET" and self.path.endswith("/api/overview"):
                return self._reply(200, broker.overview)
            if self.command == "GET" and route[:2] == ["api", "nodes"]:
                node = broker.nodes.get(urllib.parse.unquote(route[2]))
                if node is not None:
                    return self._reply(200, node)
            if self.command == "GET" and route[:2] == ["api", "connections?columns=name,user"]:
                conns = [{"name": n, "user": u} for n, u in broker.connections.items()]
                return self._reply(200, conns)
            if self.command == "DELETE" and route[:2] == ["api", "connections"]:
                if broker.connections.pop(urllib.parse.unquote(route[2]), None) is None:
                    return self._reply(404, b'{"error":"Object Not Found"}')
                return self._reply(204)
            if self.command == "GET" and self.path.endswith("/api/whoami"):
                return self._reply(200, {"name": user, "tags": ["administrator"]})
            if self.command == "GET" and self.path.endswith("/text"):
                return self._reply(200, b"<html>not json</html>")
            if self.command == "PUT" and route[:2] == ["api", "users"]:
                broker.users[urllib.parse.unquote(route[2])] = body["password"]
                return self._reply(201)
            if self.command == "DELETE" and route[:2] == ["api", "users"]:
                name = urllib.parse.unquote(route[2])
                if broker.users.pop(name, None) is None:
                    return self._reply(404, b'{"error":"Object Not Found"}')
                return self._reply(204)
            if self.command == "PUT" and route[:2] == ["api", "permissions"]:
                return self._reply(201)
            if self.command == "PUT" and route[:2] == ["api", "vhost-limits"]:
                broker.limits[route[2]] = body["value"]
                return self._reply(204)
            return self._reply(404, b'{"error":"Object Not Found"}')

        do_GET = do_PUT = do_DELETE = _handle  # noqa: N815 - http.server's names

    return Handler


@contextlib.contextmanager
def serve() -> Iterator[Broker]:
    """A look-alike on 127.0.0.1 (a free port) for the duration of the `with`."""
    state = Broker()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
