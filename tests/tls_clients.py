"""HTTPS with `requests` to a server's address while verifying its own TLS name (docs/tls.md):
what `curl --connect-to` does, for a server whose name does not resolve here."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter


class _NamedAdapter(HTTPAdapter):
    def __init__(self, name: str) -> None:
        self._name = name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(server_hostname=self._name, assert_hostname=self._name)
        super().init_poolmanager(*args, **kwargs)


def named_session(name: str) -> requests.Session:
    """A session whose https connections send `name` as SNI and verify the certificate for it,
    whatever host the URL names."""
    session = requests.Session()
    session.mount("https://", _NamedAdapter(name))
    return session
