"""`python -m warren run`: what it starts, how it restarts a crashed service, how Ctrl-C stops it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from django.contrib.auth import get_user_model

from orders.core.provisioning import create_vm_body
from orders.models import Order
from store.management.commands.seed_plans import seed_plans
from store.models import Plan
from tests.e2e.harness import wait_until
from tests.net import free_port
from tests.orders.conftest import provision
from vmbackend.host import config, pool, rules
from vmbackend.host.state import READY
from vmbackend.protocol import messages
from vmbackend.tls import authority
from vmbackend.tls.scope import scope_of
from warren.run import (
    ROOT,
    Options,
    Supervisor,
    backoff,
    child_environment,
    dev_tls_environment,
    service_commands,
    setup_commands,
)

pytestmark = pytest.mark.django_db(databases=[])


def test_it_runs_every_service_the_system_needs():
    services = service_commands(Options(port=8123))
    assert set(services) == {"web", "relay", "events", "mail", "vmbackend"}
    assert "127.0.0.1:8123" in services["web"]
    assert "vmbackend" not in service_commands(Options(daemon=False))


def test_it_builds_the_sold_image_and_its_saved_state_before_starting():
    steps = [" ".join(argv[1:]) for argv in setup_commands(Options())]
    assert steps.index("manage.py migrate --noinput") < steps.index("manage.py seed_plans")
    assert "-m vmbackend image build rabbitmq-4.0 --distro debian" in steps  # the default version's
    assert "-m vmbackend image snapshot rabbitmq-4.0" in steps
    steps = [" ".join(argv[1:]) for argv in setup_commands(Options(image="rabbitmq-3.10"))]
    assert "-m vmbackend image snapshot rabbitmq-3.10" in steps
    assert not any("image" in s for s in setup_commands(Options(build_images=False)))


def test_the_plans_pick_the_image_unless_one_is_forced():
    assert "WARREN_INSTANCE_IMAGE" not in child_environment(Options(), base={})
    assert child_environment(Options(image="tiny"), base={})["WARREN_INSTANCE_IMAGE"] == "tiny"


def test_a_warm_pool_of_the_sold_image_is_on_unless_warren_pool_is_set():
    assert child_environment(Options(), base={})["WARREN_POOL"] == "rabbitmq-4.0:512:1"
    assert child_environment(Options(image="tiny"), base={})["WARREN_POOL"] == "tiny:512:1"
    assert child_environment(Options(), base={"WARREN_POOL": ""})["WARREN_POOL"] == ""  # off
    custom = {"WARREN_POOL": "rabbitmq-4.0:1024:2"}
    assert child_environment(Options(), base=custom)["WARREN_POOL"] == "rabbitmq-4.0:1024:2"


@pytest.mark.django_db
@pytest.mark.parametrize("image", ["", "tiny"])
def test_the_cheapest_demo_plan_is_a_pool_hit(image: str, settings, tmp_path: Path):
    """The first order a newcomer places (the cheapest plan) claims the default pool VM: the
    create-vm the shop sends for it fits the pool VM the daemon makes from `warren run`'s
    environment, on a TLS host (amqps forwarded) as on a plain one."""
    settings.INSTANCE_IMAGE = image
    seed_plans()
    plans = Plan.objects.filter(is_active=True).order_by("monthly_price_cents")
    assert plans[0].slug == "bunny"
    base = {"WARREN_HOST_ID": "h1", "WARREN_STATE_DIR": str(tmp_path)}
    cfg = config.load(env=child_environment(Options(image=image), base=base))
    (entry,) = cfg.pool
    pool_vm = rules.new_record(cfg, pool.new_pool_command(entry))
    pool_vm.pool, pool_vm.status, pool_vm.ports = True, READY, {"amqp": 1, "amqps": 2}
    user = get_user_model().objects.create_user("newcomer", "n@example.com")
    hits = []
    for plan in plans[:2]:  # the cheapest, and the next as the control: it misses
        instance = provision(Order.objects.create(user=user, plan=plan))
        assert instance is not None
        cmd = messages.parse(json.dumps(create_vm_body(instance=instance)).encode())
        assert isinstance(cmd, messages.CreateVM)
        hits.append(pool.fits(pool_vm, cmd))
    assert hits == [True, False]


def test_restart_backoff_grows_and_is_capped():
    assert [backoff(n) for n in (1, 2, 3)] == [1, 2, 4]
    assert backoff(50) == 30


def test_a_crashed_service_is_started_again_and_stop_ends_everything():
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    supervisor = Supervisor({"crash": crash, "sleeper": sleeper}, dict(os.environ))
    now = time.monotonic()
    supervisor.poll_once(now)
    crash_child, sleeper_child = supervisor.children
    first_pid = crash_child.proc.pid
    crash_child.proc.wait(timeout=10)
    supervisor.poll_once(now + 0.1)  # notices the exit, schedules a restart
    assert crash_child.proc is None and crash_child.failures == 1
    supervisor.poll_once(now + 0.1 + backoff(1))
    assert crash_child.proc is not None and crash_child.proc.pid != first_pid
    supervisor.stop()
    assert sleeper_child.proc.poll() is not None


@pytest.mark.vm
def test_the_one_command_serves_the_shop_and_ctrl_c_stops_every_process(
    tmp_path: Path, amqp_url: str
):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "WARREN_POOL"},  # the default pool
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_STATE_DIR": str(tmp_path / "vmbackend"),
        "WARREN_HOST_ID": "run-test",
        "WARREN_HEARTBEAT_INTERVAL": "1",
        # The mail service prints what it delivers (the queue's worker, not the web server).
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warren",
            "run",
            "--port",
            str(port),
            "--image",
            "tiny",
            "--skip-image-build",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=2).ok, 120, "the shop")
        assert "Bunny" in requests.get(f"http://127.0.0.1:{port}/", timeout=5).text
        for username in ("first", "second"):  # the second tells the first by mail
            _signup(f"http://127.0.0.1:{port}", username, "same@example.com")
        wait_until(lambda: _queued(tmp_path / "db.sqlite3") == 0, 60, "the mail service")
        # The warm pool is on by default: one ready server of what the cheapest plan orders,
        # as the host's heartbeat tells staff.
        wait_until(
            lambda: "tiny 512 MiB: 1/1 ready" in _host_pool(tmp_path / "db.sqlite3", "run-test"),
            180,
            "the default warm pool",
        )
        children = _children(proc.pid)
        assert len(children) >= 5, (
            "web, relay, event worker, mail and daemon run under the supervisor"
        )
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        assert alive == [], "every service stopped with the supervisor"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = proc.stdout.read().decode()
    assert "event=stopped" in output
    assert "mail | Subject: Another Warren account uses your email address" in output
    assert "mail | To: same@example.com" in output


def _signup(site: str, username: str, email: str) -> None:
    session = requests.Session()
    session.get(f"{site}/accounts/signup/", timeout=10).raise_for_status()
    password = "correct-horse-battery-42"
    response = session.post(
        f"{site}/accounts/signup/",
        data={
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "username": username,
            "email": email,
            "password1": password,
            "password2": password,
        },
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, response.text[:500]


def _host_pool(db: Path, host_id: str) -> str:
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT pool FROM orders_host WHERE host_id = ?", (host_id,)).fetchone()
        return str(row[0]) if row else ""


def _queued(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM accounts_queuedemail").fetchone()[0])


def test_ctrl_c_stops_the_setup_even_when_started_with_sigint_ignored(tmp_path: Path):
    """A background job of a non-interactive shell starts with SIGINT ignored; Ctrl-C must
    still stop `warren run`, here while its first setup step runs."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        # Should the setup not stop, the services must not reach any real broker.
        "WARREN_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warren",
            "run",
            "--port",
            str(free_port()),
            "--image",
            "tiny",
            "--skip-image-build",
            "--no-daemon",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None
        step = next(line for line in iter(proc.stdout.readline, b"") if line.startswith(b"==> "))
        assert step.startswith(b"==> manage.py migrate"), step
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.terminate()  # stops the services cleanly, should the setup have finished
            proc.wait(timeout=30)
    assert "event=started" not in proc.stdout.read().decode()


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(status.parent.name))
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_the_one_box_system_gets_its_own_ca_once_and_reuses_it(tmp_path: Path):
    env = dev_tls_environment({"WARREN_HOST_ID": "box-1"}, base=tmp_path)
    host = Path(env["WARREN_TLS_DIR"])
    issuer = authority.load_issuer(
        host
    )  # the daemon's check: key, certificate and root belong together
    assert env["WARREN_CA_CERT"] == str(tmp_path / "root" / authority.ROOT_CERT)
    assert issuer.root.subject == authority.load_issuer(host).root.subject
    assert (host / authority.HOST_KEY).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "root" / authority.ROOT_KEY).stat().st_mode & 0o777 == 0o600
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = dev_tls_environment({"WARREN_HOST_ID": "box-1"}, base=tmp_path)
    assert again == env
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_operator_tls_folder_or_an_empty_one_is_left_alone(tmp_path: Path):
    assert dev_tls_environment({"WARREN_TLS_DIR": ""}, base=tmp_path) == {"WARREN_TLS_DIR": ""}
    given = {"WARREN_TLS_DIR": "/etc/warren/tls", "WARREN_CA_CERT": "/etc/warren/ca.pem"}
    assert dev_tls_environment(given, base=tmp_path) == given
    assert list(tmp_path.iterdir()) == []


def test_a_dev_ca_without_name_constraints_or_for_another_domain_is_replaced(tmp_path: Path):
    """A development root made before name constraints (or for another WARREN_VM_DOMAIN) is
    put aside, not deleted, and a constrained one takes its place."""
    root_key, old_root = authority.create_root()
    bare = (
        x509.CertificateBuilder()
        .subject_name(old_root.subject)
        .issuer_name(old_root.subject)
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(old_root.not_valid_before_utc)
        .not_valid_after(old_root.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    authority.write_secret(tmp_path / "root" / authority.ROOT_KEY, authority.key_pem(root_key))
    (tmp_path / "root" / authority.ROOT_CERT).write_bytes(authority.cert_pem(bare))
    env = dev_tls_environment({"WARREN_HOST_ID": "box-1"}, base=tmp_path)
    issuer = authority.load_issuer(Path(env["WARREN_TLS_DIR"]))
    assert scope_of(issuer.root) == scope_of(issuer.cert) == authority.DEFAULT_SCOPE
    (kept,) = tmp_path.glob("replaced-*/root/ca.pem")
    assert kept.read_bytes() == authority.cert_pem(bare)
    moved = dev_tls_environment(
        {"WARREN_HOST_ID": "box-1", "WARREN_VM_DOMAIN": "vm.example.org"}, base=tmp_path
    )
    scope = scope_of(authority.load_issuer(Path(moved["WARREN_TLS_DIR"])).cert)
    assert scope is not None and scope.domain == "vm.example.org"
