"""vmbackend/machine/management_api.py against a small management-API look-alike on 127.0.0.1
(tests/vmbackend/management_server.py: real HTTP, checks basic auth). No mocks."""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vmbackend.management_server import PASSWORD, Broker, serve
from vmbackend.machine.management_api import ManagementAPI, ManagementAPIError


@pytest.fixture
def broker() -> Iterator[Broker]:
    with serve() as state:
        yield state


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_it_logs_in_with_basic_auth_and_reads_json(broker):
    api = ManagementAPI(broker.url(), "admin", PASSWORD)
    assert api.get("api/overview") == {"management_version": "test"}
    assert api.whoami() == "admin"
    assert broker.seen[0][:3] == ("GET", "/api/overview", "admin")


def test_a_wrong_password_is_an_error_with_context_but_without_the_password(broker):
    api = ManagementAPI(broker.url(), "admin", "wrong-" + PASSWORD)
    with pytest.raises(ManagementAPIError) as err:
        api.get("api/overview")
    assert err.value.status == 401
    message = str(err.value)
    assert "GET /api/overview" in message and "'admin'" in message and "401" in message
    assert PASSWORD not in message and "wrong-" not in message
    assert api.request("GET", "api/overview").status == 401  # request() returns any status


def test_nothing_listening_is_the_same_error_type_without_the_password():
    api = ManagementAPI(f"http://127.0.0.1:{_closed_port()}/", "admin", PASSWORD, timeout=2)
    with pytest.raises(ManagementAPIError) as err:
        api.request("GET", "api/overview")
    assert err.value.status is None
    assert "unreachable" in str(err.value) and PASSWORD not in str(err.value)
    assert PASSWORD not in repr(api)


def test_a_slow_answer_times_out(broker):
    broker.delay = 2.0
    api = ManagementAPI(broker.url(), "admin", PASSWORD, timeout=0.2)
    with pytest.raises(ManagementAPIError, match="unreachable: timed out"):
        api.get("api/overview")
    with pytest.raises(ManagementAPIError, match="timed out"):
        ManagementAPI(broker.url(), "admin", PASSWORD).put(
            "api/users/x", {"password": "p"}, timeout=0.2
        )


def test_a_non_json_answer_is_an_error(broker):
    with pytest.raises(ManagementAPIError, match="not JSON"):
        ManagementAPI(broker.url(), "admin", PASSWORD).get("text")


def test_users_permissions_and_limits_reach_the_server_quoted(broker):
    api = ManagementAPI(broker.url(), "admin", PASSWORD)
    api.set_user("new/admin", "pw-1")
    api.set_permissions("new/admin")
    api.set_vhost_limit("max-connections", 7)
    assert broker.users["new/admin"] == "pw-1"
    calls = [(method, path, body) for method, path, _, body in broker.seen]
    assert calls == [
        ("PUT", "/api/users/new%2Fadmin", {"password": "pw-1", "tags": "administrator"}),
        (
            "PUT",
            "/api/permissions/%2F/new%2Fadmin",
            {"configure": ".*", "write": ".*", "read": ".*"},
        ),
        ("PUT", "/api/vhost-limits/%2F/max-connections", {"value": 7}),
    ]
    assert ManagementAPI(broker.url(), "new/admin", "pw-1").whoami() == "new/admin"


def test_a_refused_put_names_the_call_but_not_the_password_it_carried(broker):
    api = ManagementAPI(broker.url(), "nobody", "x")
    with pytest.raises(ManagementAPIError) as err:
        api.set_user("someone", "the-new-password")
    assert err.value.status == 401
    assert "PUT /api/users/someone" in str(err.value)
    assert "the-new-password" not in str(err.value)


def test_deleting_a_missing_user_is_done_unless_asked_otherwise(broker):
    api = ManagementAPI(broker.url(), "admin", PASSWORD)
    broker.users["old"] = "x"
    api.delete_user("old")
    api.delete_user("old")  # already gone: fine
    assert "old" not in broker.users
    with pytest.raises(ManagementAPIError) as err:
        api.delete("api/users/old", missing_ok=False)
    assert err.value.status == 404


def test_a_base_url_with_a_path_prefix_is_kept(broker):
    ManagementAPI(broker.url("/mgmt"), "admin", PASSWORD).request("GET", "api/overview")
    assert broker.seen[-1][1] == "/mgmt/api/overview"


def test_only_http_urls():
    with pytest.raises(ValueError, match="only http"):
        ManagementAPI("file:///etc/passwd", "admin", PASSWORD)


def test_wait_until_ok_returns_once_the_api_answers_200(broker):
    broker.unready = 3
    ManagementAPI(broker.url(), "admin", PASSWORD).wait_until_ok(
        "api/overview", time.monotonic() + 30
    )
    assert len(broker.seen) == 4


def test_wait_until_ok_gives_up_at_the_deadline_with_the_last_answer(broker):
    api = ManagementAPI(broker.url(), "admin", "not-the-" + PASSWORD)
    with pytest.raises(ManagementAPIError, match=r"no 200 within .*\(last: HTTP 401\)") as err:
        api.wait_until_ok("api/overview", time.monotonic() + 0.5)
    assert PASSWORD not in str(err.value)


def test_wait_until_ok_says_why_when_nothing_listens():
    api = ManagementAPI(f"http://127.0.0.1:{_closed_port()}/", "admin", PASSWORD)
    with pytest.raises(ManagementAPIError, match=r"last: .*[Cc]onnection refused"):
        api.wait_until_ok("api/overview", time.monotonic() + 0.5)


def test_wait_until_ok_runs_the_check_before_every_attempt_and_lets_it_fail(broker):
    broker.unready = 100
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the VM died")

    with pytest.raises(RuntimeError, match="the VM died"):
        ManagementAPI(broker.url(), "admin", PASSWORD).wait_until_ok(
            "api/overview", time.monotonic() + 30, check=check
        )
    assert len(broker.seen) == 2


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.text(min_size=1, max_size=20))
def test_any_user_name_stays_one_path_segment(broker, name):
    broker.seen.clear()
    ManagementAPI(broker.url(), "admin", PASSWORD).set_user(name, "pw")
    path = broker.seen[-1][1]
    prefix, _, segment = path.rpartition("/")
    assert prefix == "/api/users"
    assert urllib.parse.unquote(segment) == name
    assert broker.users[name] == "pw"


# -- the console (issue 11): closing a user's connections, what the node runs ---------------------


def test_closing_a_users_connections_leaves_the_others(broker):
    broker.connections = {
        "127.0.0.1:50001 -> 10.0.2.15:5672": "admin",
        "127.0.0.1:50002 -> 10.0.2.15:5672": "admin",
        "127.0.0.1:50003 -> 10.0.2.15:5672": "app",
    }
    api = ManagementAPI(broker.url(), "admin", PASSWORD)

    assert api.close_connections_of("admin") == 2

    assert broker.connections == {"127.0.0.1:50003 -> 10.0.2.15:5672": "app"}
    deletes = [path for method, path, _u, _b in broker.seen if method == "DELETE"]
    assert deletes == [
        "/api/connections/127.0.0.1%3A50001%20-%3E%2010.0.2.15%3A5672",
        "/api/connections/127.0.0.1%3A50002%20-%3E%2010.0.2.15%3A5672",
    ]
    assert api.close_connections_of("admin") == 0


def test_the_runtime_is_read_from_the_overview_and_odd_values_are_left_out(broker):
    api = ManagementAPI(broker.url(), "admin", PASSWORD)
    assert api.runtime() == {}
    broker.overview = {
        "management_version": "4.0.5",
        "rabbitmq_version": "4.0.5",
        "erlang_version": "26.2.5",
        "node": "rabbit@test",
    }
    assert api.runtime() == {
        "rabbitmq_version": "4.0.5",
        "erlang_version": "26.2.5",
        "node": "rabbit@test",
    }
    broker.overview = {"rabbitmq_version": 4, "erlang_version": "e" * 101, "node": "rabbit@x"}
    assert api.runtime() == {"node": "rabbit@x"}
