"""The API over HTTP (urllib): the saved login, requests with an Idempotency-Key on every POST,
one retry for a lost answer or a rate limit, and errors as the API's problem documents."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT = 30.0  # seconds per request
RETRIES = 3  # a lost answer, a 5xx or a 429 is tried again, with the same Idempotency-Key


class NotLoggedIn(Exception):
    """No saved login: `warren login` first."""


class BadUrl(Exception):
    """The shop's URL is not http(s)."""


class Unreachable(Exception):
    """The API did not answer (network, DNS, TLS)."""


class ApiError(Exception):
    """The API answered with a problem document (RFC 9457)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


def config_path() -> Path:
    """$WARREN_CONFIG, else $XDG_CONFIG_HOME/warren/config.json (~/.config by default)."""
    if os.environ.get("WARREN_CONFIG"):
        return Path(os.environ["WARREN_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "warren" / "config.json"


@dataclass(frozen=True)
class Login:
    url: str
    token: str

    def save(self) -> Path:
        """Written 0600 from its creation (never readable by others, not even for a moment)."""
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"url": self.url, "token": self.token}, out)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls) -> Login:
        path = config_path()
        try:
            data = json.loads(path.read_text())
            return cls(url=str(data["url"]), token=str(data["token"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NotLoggedIn(f"not logged in ({path}): run `warren login`") from exc


class Client:
    def __init__(self, login: Login, *, sleep: Any = time.sleep) -> None:
        if urllib.parse.urlsplit(login.url).scheme not in ("http", "https"):
            raise BadUrl(f"not an http(s) URL: {login.url!r}")
        self.base = login.url.rstrip("/") + "/api/v1"
        self.token = login.token
        self.sleep = sleep

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if method == "POST":
            # One key for every try of this request: a retry after a lost answer is not a second
            # server or a second restart (the API replays the first answer).
            headers["Idempotency-Key"] = str(uuid.uuid4())
            headers["Content-Type"] = "application/json"
            data = json.dumps(body if body is not None else {}).encode()
        for attempt in range(RETRIES + 1):
            request = urllib.request.Request(  # noqa: S310 - http(s) only, checked in __init__
                self.base + path, data=data, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
                    raw = response.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                error = _api_error(exc)
                retry = exc.code == 429 or exc.code >= 500 or (exc.code == 409 and _busy(error))
                if not retry or attempt == RETRIES:
                    raise error from None
                self.sleep(_retry_after(exc, attempt))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == RETRIES:
                    raise Unreachable(f"{self.base}: {getattr(exc, 'reason', exc)}") from None
                self.sleep(2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        problem = json.loads(exc.read() or b"{}")
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    problem.setdefault("title", exc.reason)
    problem.setdefault("detail", "")
    return ApiError(exc.code, problem)


def _busy(error: ApiError) -> bool:
    """409 because the first try with this key is still running (not a refusal)."""
    return str(error.problem.get("type", "")).endswith("/key-in-use")


def _retry_after(exc: urllib.error.HTTPError, attempt: int) -> float:
    try:
        return min(60.0, max(0.0, float(exc.headers.get("Retry-After", ""))))
    except ValueError:
        return float(2**attempt)
