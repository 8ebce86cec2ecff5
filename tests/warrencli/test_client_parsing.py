"""What the CLI reads that someone else wrote: its config file and the API's error bodies."""

from __future__ import annotations

import io
import os
import urllib.error
from email.message import Message

from hypothesis import given
from hypothesis import strategies as st

from warrencli import client


@given(st.binary(max_size=200))
def test_any_config_file_is_a_login_or_not_logged_in(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(content)
    os.environ["WARREN_CONFIG"] = str(path)
    try:
        login = client.Login.load()
    except client.NotLoggedIn:
        return
    finally:
        del os.environ["WARREN_CONFIG"]
    assert isinstance(login.url, str) and isinstance(login.token, str)


@given(st.binary(max_size=200), st.sampled_from([400, 401, 404, 422, 500]))
def test_any_error_body_becomes_an_api_error(body, status):
    headers = Message()
    exc = urllib.error.HTTPError("http://x/", status, "Reason", headers, io.BytesIO(body))
    error = client._api_error(exc)
    assert error.status == status
    assert isinstance(error.problem, dict) and "title" in error.problem


def test_a_problem_body_is_kept():
    body = b'{"type": "t", "title": "Conflict", "status": 409, "detail": "busy"}'
    exc = urllib.error.HTTPError("http://x/", 409, "Conflict", Message(), io.BytesIO(body))
    error = client._api_error(exc)
    assert error.problem["detail"] == "busy" and "409 Conflict: busy" in str(error)
