"""The `warren` command against the shop's live server (the real API, over HTTP), run as
customers run it: a separate process with its own config file. Exit codes included."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from orders.models import Alarm, ConsoleCommand, Order
from store.models import Plan
from tests.orders.api.conftest import make_customer
from warrencli import client as cli_client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(transactional_db: None, live_server: Any) -> Any:
    common = dict(vcpus=1, max_connections=100, max_queues=200, currency="usd")
    small = Plan.objects.create(
        slug="api-small", name="Small", memory_mb=512, disk_gb=4, monthly_price_cents=900, **common
    )
    Plan.objects.create(
        slug="api-large",
        name="Large",
        memory_mb=1024,
        disk_gb=8,
        monthly_price_cents=1900,
        **common,
    )
    return make_customer("carol", small)


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"WARREN_CONFIG": str(tmp_path / "cfg" / "config.json")}
    return subprocess.run(
        [sys.executable, "-m", "warrencli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def login(tmp_path: Path, url: str, token: str) -> None:
    done = run(tmp_path, "login", "--url", url, "--token", token)
    assert done.returncode == 0, done.stderr


def test_login_keeps_the_token_for_the_owner_only(tmp_path, shop, live_server):
    refused = run(tmp_path, "login", "--url", live_server.url, "--token", "wrn_nope")
    assert refused.returncode == 3 and not (tmp_path / "cfg").exists()
    login(tmp_path, live_server.url, shop.api.token)
    saved = tmp_path / "cfg" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text()) == {"url": live_server.url, "token": shop.api.token}


def test_lists_and_show_with_the_password(tmp_path, shop, live_server):
    login(tmp_path, live_server.url, shop.api.token)
    plans = run(tmp_path, "plans", "--json")
    assert [p["slug"] for p in json.loads(plans.stdout)] == ["api-small", "api-large"]
    servers = run(tmp_path, "servers")
    assert str(shop.order.public_id) in servers.stdout
    shown = run(tmp_path, "show", str(shop.order.public_id))
    assert shown.returncode == 0
    assert f"password: {shop.instance.admin_password}" in shown.stdout


def test_create_pays_offline_and_cancel(tmp_path, shop, live_server):
    login(tmp_path, live_server.url, shop.api.token)
    made = run(tmp_path, "create", "--plan", "api-large", "--pay-offline", "--json")
    assert made.returncode == 0, made.stderr
    server = json.loads(made.stdout)
    assert Order.objects.get(public_id=server["id"]).status == "paid"
    cancelled = run(tmp_path, "cancel", server["id"], "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] != "paid"


def test_an_action_whose_job_does_not_finish_gives_up_with_4(tmp_path, shop, live_server):
    login(tmp_path, live_server.url, shop.api.token)
    waited = run(
        tmp_path,
        "restart",
        str(shop.order.public_id),
        "--wait",
        "--timeout",
        "0.5",
        "--interval",
        "0.1",
    )
    assert waited.returncode == 4 and "gave up waiting" in waited.stderr
    assert ConsoleCommand.objects.filter(instance=shop.instance, status="sent").count() == 1


def test_a_failed_job_exits_1_and_a_done_one_0(tmp_path, shop, live_server):
    login(tmp_path, live_server.url, shop.api.token)
    assert run(tmp_path, "job", str(shop.job.request_id)).returncode == 0
    ConsoleCommand.objects.filter(pk=shop.job.pk).update(status="failed", reason="disk full")
    failed = run(tmp_path, "job", str(shop.job.request_id))
    assert failed.returncode == 1 and "disk full" in failed.stdout


def test_alarms_add_list_remove(tmp_path, shop, live_server):
    login(tmp_path, live_server.url, shop.api.token)
    server = str(shop.order.public_id)
    added = run(
        tmp_path,
        "alarms",
        "add",
        server,
        "--kind",
        "connections",
        "--threshold",
        "40",
        "--minutes",
        "2",
        "--json",
    )
    alarm = json.loads(added.stdout)
    assert run(tmp_path, "alarms", "list", server).stdout.count("Connections above 40") == 1
    assert run(tmp_path, "alarms", "remove", server, str(alarm["id"])).returncode == 0
    assert not Alarm.objects.filter(pk=alarm["id"]).exists()


def test_refusals_and_exit_codes(tmp_path, shop, live_server):
    assert run(tmp_path, "plans").returncode == 3  # not logged in
    assert run(tmp_path, "no-such-command").returncode == 2
    assert run(tmp_path, "alarms").returncode == 2
    login(tmp_path, live_server.url, shop.reader.token)
    read_only = run(tmp_path, "restart", str(shop.order.public_id))
    assert read_only.returncode == 3 and "read-only" in read_only.stderr
    login(tmp_path, live_server.url, shop.api.token)
    wrong = run(tmp_path, "change-plan", str(shop.order.public_id), "--plan", "nope", "--json")
    assert wrong.returncode == 1 and json.loads(wrong.stdout)["status"] == 422
    assert run(tmp_path, "show", "00000000-0000-0000-0000-000000000000").returncode == 1


def test_an_api_that_does_not_answer_is_5(tmp_path):
    config = tmp_path / "cfg" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "wrn_x"}))
    done = run(tmp_path, "plans")
    assert done.returncode == 5 and "cannot reach" in done.stderr


def test_a_lost_answer_is_retried_with_the_same_key(monkeypatch):
    """The first try answers 503, the second 201: both carried one Idempotency-Key."""
    keys: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            keys.append(self.headers["Idempotency-Key"])
            self.rfile.read(int(self.headers["Content-Length"]))
            status = 503 if len(keys) == 1 else 201
            body = (
                b'{"type":"about:blank","title":"x","status":503,"detail":""}'
                if status == 503
                else b'{"id": 1}'
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        login = cli_client.Login(url=f"http://127.0.0.1:{server.server_port}", token="wrn_x")
        answer = cli_client.Client(login, sleep=lambda s: None).post("/servers", {"plan": "x"})
    finally:
        server.shutdown()
    assert answer == {"id": 1}
    assert len(keys) == 2 and keys[0] == keys[1]


def test_a_url_that_is_not_http_is_refused(tmp_path):
    done = run(tmp_path, "login", "--url", "file:///etc/passwd", "--token", "wrn_x")
    assert done.returncode == 2
