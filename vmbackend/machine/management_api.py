"""A small client for a VM's RabbitMQ management HTTP API (what the host asks of the guest).

One `ManagementAPI` per (base URL, user): every call has a timeout, every failure raises
`ManagementAPIError` naming the call (method, path, user, HTTP status and the start of the
answer), and no message ever holds the password. Paths are relative to the base URL
("api/overview"); names in paths are quoted here, so a user "a/b" cannot reach another resource.

Used by the Machine (readiness, vhost limits, the admin swap after a restore); metrics, password
rotation and TLS are meant to use it too.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TIMEOUT = 5.0  # seconds for one request
# Seconds for one write that makes a VM someone's (a user, its permissions): a write goes through
# RabbitMQ's metadata store to disk, and under TCG on a busy host it took more than TIMEOUT
# (2026-12-08, load 12-15: every restore's admin swap timed out at its PUT); the deadline of
# the whole step still bounds it.
WRITE_TIMEOUT = 30.0
# Bytes of one answer at most (api/connections with ~80,000 connections): a guest is not
# trusted, and an endless answer must end in an error, not in the host's memory (issue 20).
MAX_ANSWER = 8 * 1024 * 1024
CHUNK = 64 * 1024
POLL = 0.25  # seconds between attempts while waiting
ERROR_BODY = 200  # characters of an unexpected answer kept in the error
RUNTIME_KEYS = ("rabbitmq_version", "erlang_version", "node")  # instance.ready's runtime
RUNTIME_CHARS = 100


class ManagementAPIError(Exception):
    """A management API call failed: nothing answered, or not with the expected status.

    `status` is the HTTP status, or None when nothing (or no valid HTTP) answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def quote(name: str) -> str:
    """One path segment: "/" becomes %2F (the default vhost is "/")."""
    return urllib.parse.quote(name, safe="")


class ManagementAPI:
    """The management API at `base_url` (http://host:port/), as `user`."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        *,
        timeout: float = TIMEOUT,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// URLs, not {base_url!r}")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.user = user
        self._password = password
        self.timeout = timeout
        self.max_answer = max_answer
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/") + "/"

    def __repr__(self) -> str:
        return f"ManagementAPI({self.base_url!r}, user={self.user!r})"

    def _what(self, method: str, path: str) -> str:
        return f"{method} {self._prefix}{path} as {self.user!r} at {self._host}:{self._port}"

    # -- one request ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> Response:
        """One request, whatever the status; ManagementAPIError only when nothing (valid) answers,
        or the answer is longer than `max_bytes` (default `max_answer`) or takes longer than the
        timeout as a whole (not only between two reads: a guest may trickle)."""
        seconds = self.timeout if timeout is None else timeout
        limit = self.max_answer if max_bytes is None else max_bytes
        deadline = time.monotonic() + seconds
        conn = http.client.HTTPConnection(self._host, self._port, timeout=seconds)
        token = base64.b64encode(f"{self.user}:{self._password}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Connection": "close"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, self._body(resp, limit, deadline, method, path))
        except (OSError, http.client.HTTPException) as exc:
            raise ManagementAPIError(
                f"{self._what(method, path)}: unreachable: {exc or type(exc).__name__}"
            ) from exc
        finally:
            conn.close()

    def _body(
        self, resp: http.client.HTTPResponse, limit: int, deadline: float, method: str, path: str
    ) -> bytes:
        """The answer's body, read in chunks: at most `limit` bytes, done by `deadline`."""
        parts: list[bytes] = []
        size = 0
        while chunk := resp.read1(CHUNK):
            size += len(chunk)
            if size > limit:
                raise ManagementAPIError(
                    f"{self._what(method, path)}: answer longer than {limit} bytes",
                    status=resp.status,
                )
            if time.monotonic() > deadline:
                raise ManagementAPIError(
                    f"{self._what(method, path)}: answer not complete in time", status=resp.status
                )
            parts.append(chunk)
        return b"".join(parts)

    def _expect(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (),
        timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> Response:
        resp = self.request(method, path, body, timeout=timeout, max_bytes=max_bytes)
        if not (200 <= resp.status < 300 or resp.status in ok):
            raise ManagementAPIError(
                f"{self._what(method, path)}: answered {resp.status} {resp.body[:ERROR_BODY]!r}",
                status=resp.status,
            )
        return resp

    def get(self, path: str, *, timeout: float | None = None, max_bytes: int | None = None) -> Any:
        """GET `path` as JSON; ManagementAPIError unless it answers 2xx with JSON."""
        resp = self._expect("GET", path, timeout=timeout, max_bytes=max_bytes)
        try:
            return resp.json()
        except ValueError as exc:
            raise ManagementAPIError(
                f"{self._what('GET', path)}: not JSON: {resp.body[:ERROR_BODY]!r}",
                status=resp.status,
            ) from exc

    def put(self, path: str, body: Any, *, timeout: float | None = None) -> None:
        """PUT `body` as JSON; ManagementAPIError unless it answers 2xx."""
        self._expect("PUT", path, body, timeout=timeout)

    def delete(self, path: str, *, missing_ok: bool = True, timeout: float | None = None) -> None:
        """DELETE `path`; a 404 counts as done when `missing_ok`."""
        self._expect("DELETE", path, ok=(404,) if missing_ok else (), timeout=timeout)

    # -- waiting --------------------------------------------------------------------------------
    def wait_until_ok(
        self, path: str, deadline: float, *, check: Callable[[], None] | None = None
    ) -> None:
        """Until GET `path` answers 200; ManagementAPIError at `deadline` (a time.monotonic()
        value) with the last answer. `check` runs before every attempt (it may raise: e.g. the
        VM died); each attempt's timeout is cut to what is left."""
        started = time.monotonic()
        last = "no answer"
        while time.monotonic() < deadline:
            if check is not None:
                check()
            left = deadline - time.monotonic()
            try:
                status = self.request("GET", path, timeout=max(0.2, min(self.timeout, left))).status
                if status == 200:
                    return
                last = f"HTTP {status}"
            except ManagementAPIError as exc:
                cause = exc.__cause__
                last = (str(cause) or type(cause).__name__) if cause is not None else str(exc)
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        raise ManagementAPIError(
            f"{self._what('GET', path)}: no 200 within "
            f"{time.monotonic() - started:.0f} s (last: {last})"
        )

    # -- RabbitMQ resources ---------------------------------------------------------------------
    def whoami(self) -> str:
        """The name these credentials log in as (GET api/whoami)."""
        answer = self.get("api/whoami")
        name = answer.get("name") if isinstance(answer, dict) else None
        if not isinstance(name, str):
            raise ManagementAPIError(f"{self._what('GET', 'api/whoami')}: no name in the answer")
        return name

    def set_user(self, name: str, password: str, *, tags: str = "administrator") -> None:
        """Create or replace user `name` (the password goes in the body, never in a message)."""
        self.put(f"api/users/{quote(name)}", {"password": password, "tags": tags})

    def delete_user(self, name: str) -> None:
        """Remove user `name`; already gone counts as done."""
        self.delete(f"api/users/{quote(name)}")

    def set_permissions(
        self,
        user: str,
        *,
        vhost: str = "/",
        configure: str = ".*",
        write: str = ".*",
        read: str = ".*",
    ) -> None:
        self.put(
            f"api/permissions/{quote(vhost)}/{quote(user)}",
            {"configure": configure, "write": write, "read": read},
        )

    def set_vhost_limit(self, name: str, value: int, *, vhost: str = "/") -> None:
        """One vhost limit, e.g. ("max-connections", 100)."""
        self.put(f"api/vhost-limits/{quote(vhost)}/{quote(name)}", {"value": int(value)})

    def connections(self) -> list[dict[str, Any]]:
        """The node's AMQP connections (GET api/connections), each {"name", "user", ...}."""
        answer = self.get("api/connections?columns=name,user")
        if not isinstance(answer, list):
            raise ManagementAPIError(f"{self._what('GET', 'api/connections')}: not a list")
        return [c for c in answer if isinstance(c, dict)]

    def close_connection(self, name: str) -> None:
        """Close one AMQP connection (DELETE api/connections/<name>); already gone counts."""
        self.delete(f"api/connections/{quote(name)}")

    def close_connections_of(self, user: str) -> int:
        """Close every AMQP connection `user` has (after a password change: the old password's
        sessions must not go on). Returns how many were closed."""
        names = [
            c["name"]
            for c in self.connections()
            if c.get("user") == user and isinstance(c.get("name"), str)
        ]
        for name in names:
            self.close_connection(name)
        return len(names)

    def runtime(self) -> dict[str, str]:
        """What the node runs, from GET api/overview: rabbitmq_version, erlang_version, node
        (each a string of at most RUNTIME_CHARS; missing or odd values are left out)."""
        answer = self.get("api/overview")
        if not isinstance(answer, dict):
            return {}
        return {
            key: answer[key]
            for key in RUNTIME_KEYS
            if isinstance(answer.get(key), str) and 0 < len(answer[key]) <= RUNTIME_CHARS
        }
