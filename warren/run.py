"""`python -m warren run`: the whole system on one machine, for development and small installs.

Prepares the database and the VM image (with visible progress), then supervises the web server,
the outbox relay, the event worker, the mail sender and one host daemon as child processes. A child that dies is
started again with a capped backoff; Ctrl-C (or SIGTERM) stops every child cleanly. VMs keep
running when the daemon stops (that is the daemon's contract) and are adopted on the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import environ

from vmbackend.host import config
from vmbackend.protocol import broker_users, messages, versions
from vmbackend.tls import authority
from vmbackend.tls.scope import Scope, ScopeError, scope_of
from warren import broker_setup

log = logging.getLogger("warren.run")

ROOT = Path(__file__).resolve().parent.parent
DEV_TLS_DIR = Path("~/.local/state/warren/tls")
STOP_TIMEOUT = 20.0
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Options:
    bind: str = "127.0.0.1"
    port: int = 8000
    image: str = ""  # empty: each plan's RabbitMQ version picks the image (build the default's)
    build_images: bool = True
    daemon: bool = True
    web_workers: int = 2
    web_threads: int = field(
        default_factory=lambda: int(os.environ.get("WARREN_WEB_THREADS", "16"))
    )


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    failures: int = 0
    start_after: float = 0.0
    started_at: float = 0.0
    pump: threading.Thread | None = field(default=None, repr=False)


def setup_commands(opts: Options, python: str = sys.executable) -> list[list[str]]:
    """One-off steps before the services start, in order."""
    steps = [
        [python, "manage.py", "migrate", "--noinput"],
        [python, "manage.py", "seed_plans"],
        [python, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
    ]
    if opts.build_images:
        steps.append([python, "-m", "vmbackend", "image", "build", "tiny"])
        if opts.image != "tiny":
            image = opts.image or versions.image_for(versions.DEFAULT_VERSION)
            steps.append([python, "-m", "vmbackend", "image", "build", image, "--distro", "debian"])
            steps.append([python, "-m", "vmbackend", "image", "snapshot", image])
    return steps


def service_commands(opts: Options, python: str = sys.executable) -> dict[str, list[str]]:
    """The long-running processes, by name."""
    services = {
        "web": [
            python,
            "-m",
            "gunicorn",
            "store.wsgi:application",
            "--bind",
            f"{opts.bind}:{opts.port}",
            # Threads (gthread): an order page's status request waits for its order to change
            # (a long poll, orders/web/order_wait.py) holding a thread, not a worker process.
            "--workers",
            str(opts.web_workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(opts.web_threads),
            "--access-logfile",
            "-",
            "--graceful-timeout",
            "10",
        ],
        "relay": [python, "manage.py", "relay_outbox"],
        "events": [python, "manage.py", "consume_events"],
        # Delivers the emails requests and workers queue (accounts/mail_queue.py).
        "mail": [python, "manage.py", "send_queued_mail"],
    }
    if opts.daemon:
        services["vmbackend"] = [python, "-m", "vmbackend", "daemon"]
    return services


def default_pool(opts: Options) -> str:
    """One ready server of what the cheapest demo plan (Bunny) orders: the image the shop will
    send, the default memory, vCPUs and disk (vmbackend/host/pool.py `fits`), plain ports open as
    the plan's are, and on a TLS host its certificate made while it fills, so a first order is a
    pool hit (tests/warren/test_run.py checks the plan and this entry match)."""
    image = opts.image or versions.image_for(versions.DEFAULT_VERSION)
    return f"{image}:{messages.MEMORY_MB[2]}:1"


def child_environment(opts: Options, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("WARREN_SITE_URL", f"http://{opts.bind}:{opts.port}")
    # A warm pool unless WARREN_POOL is set (empty: none): a newcomer's first server arrives in
    # about a second, at the cost of one idle VM's memory (README).
    env.setdefault("WARREN_POOL", default_pool(opts))
    if opts.image:
        env["WARREN_INSTANCE_IMAGE"] = opts.image
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dev_tls_environment(env: dict[str, str], base: Path = DEV_TLS_DIR) -> dict[str, str]:
    """TLS on the one-box system as in production: unless WARREN_TLS_DIR is in the environment
    (empty: plain ports only), a local root CA and this host's intermediate are made once under
    `base` (keys 0600; docs/tls.md), the daemon signs each VM's certificate with the
    intermediate and the shop offers the root for download."""
    if "WARREN_TLS_DIR" in env:
        return env
    base = base.expanduser()
    host_id = env.get("WARREN_HOST_ID") or config.default_host_id()
    root, host = base / "root", base / "hosts" / host_id
    passphrase = authority.passphrase_from_env(env)
    scope = Scope.from_env(env)
    if (root / authority.ROOT_CERT).exists() and scope_of(authority.load_root(root)) != scope:
        # A development root made before name constraints, or for another WARREN_VM_DOMAIN:
        # put it aside (kept, not deleted) and make one that fits; re-download the root.
        aside = Path(tempfile.mkdtemp(prefix=f"replaced-{time.strftime('%Y%m%d')}-", dir=base))
        root.rename(aside / "root")
        if (base / "hosts").exists():
            (base / "hosts").rename(aside / "hosts")
        log.warning("event=dev_ca_replaced reason=scope_changed kept=%s", aside)
    if not (root / authority.ROOT_KEY).exists():
        authority.init_ca(root, passphrase=passphrase, scope=scope)
    if not (host / authority.HOST_KEY).exists():
        authority.init_host(root, host_id, host, passphrase=passphrase, scope=scope)
    return {
        **env,
        "WARREN_TLS_DIR": str(host),
        "WARREN_CA_CERT": env.get("WARREN_CA_CERT") or str(root / authority.ROOT_CERT),
    }


def backoff(failures: int) -> float:
    return min(MAX_BACKOFF, 2.0 ** max(0, failures - 1))


class Supervisor:
    def __init__(
        self,
        services: dict[str, list[str]],
        env: dict[str, str],
        cwd: Path = ROOT,
        service_env: dict[str, dict[str, str]] | None = None,
    ):
        self.children = [Child(name, argv) for name, argv in services.items()]
        self.env = env
        self.service_env = service_env or {}  # per child: its own broker URL (broker_setup.py)
        self.cwd = cwd
        self.stopping = threading.Event()

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            child.argv,
            cwd=self.cwd,
            env={**self.env, **self.service_env.get(child.name, {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl-C in the terminal reaches only us; we stop children in order.
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        child.pump = threading.Thread(target=_pump, args=(child.name, child.proc), daemon=True)
        child.pump.start()
        log.info("event=started service=%s pid=%s", child.name, child.proc.pid)

    def poll_once(self, now: float) -> None:
        """Start what should run; notice what died and schedule its restart."""
        for child in self.children:
            if child.proc is None:
                if now >= child.start_after:
                    self.start(child)
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > 60:
                    child.failures = 0  # it stayed up: forget old crashes
                continue
            child.failures += 1
            delay = backoff(child.failures)
            log.warning("event=exited service=%s code=%s restart_in=%.0fs", child.name, code, delay)
            child.proc = None
            child.start_after = now + delay

    def stop(self) -> None:
        self.stopping.set()
        running = [(c, c.proc) for c in self.children if c.proc and c.proc.poll() is None]
        for child, proc in running:
            log.info("event=stopping service=%s pid=%s", child.name, proc.pid)
            proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for child, proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("event=killing service=%s pid=%s", child.name, proc.pid)
                proc.kill()
                proc.wait()
        for child, _proc in running:
            if child.pump:
                child.pump.join(timeout=2)
        log.info("event=stopped services=%d", len(running))

    def run(self) -> None:
        while not self.stopping.is_set():
            self.poll_once(time.monotonic())
            self.stopping.wait(0.5)


def _pump(name: str, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None  # Popen was given stdout=PIPE
    for raw in proc.stdout:
        sys.stdout.write(f"{name:>9} | {raw.decode(errors='replace')}")
        sys.stdout.flush()


def run_setup(opts: Options, env: dict[str, str]) -> None:
    for argv in setup_commands(opts):
        print(f"==> {' '.join(argv[1:])}", flush=True)
        started = time.monotonic()
        subprocess.run(argv, cwd=ROOT, env=env, check=True, stdin=subprocess.DEVNULL)
        print(f"    done in {time.monotonic() - started:.1f}s", flush=True)


def parse_args(argv: Sequence[str]) -> tuple[str, Options]:
    parser = argparse.ArgumentParser(prog="python -m warren")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="set up and run the whole system on this machine")
    run.add_argument("--bind", default=os.environ.get("WARREN_BIND", "127.0.0.1"))
    run.add_argument("--port", type=int, default=int(os.environ.get("WARREN_PORT", "8000")))
    run.add_argument(
        "--image",
        default=os.environ.get("WARREN_INSTANCE_IMAGE", ""),
        help="image every new instance boots (default: the one of its plan's RabbitMQ version; "
        "tiny for a seconds-fast demo)",
    )
    run.add_argument("--skip-image-build", action="store_true")
    run.add_argument("--no-daemon", action="store_true", help="do not run a host daemon here")
    args = parser.parse_args(list(argv))
    return args.command, Options(
        bind=args.bind,
        port=args.port,
        image=args.image,
        build_images=not args.skip_image_build,
        daemon=not args.no_daemon,
    )


def main(argv: Sequence[str]) -> int:
    # Ctrl-C must stop the setup steps too, however we were started: a background job of a
    # non-interactive shell inherits SIGINT ignored, and Python keeps that (the children then
    # start with the default again, since a Python-level handler is reset by exec).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One .env for every service: Django reads it itself, the host daemon only sees the
    # environment, so load it here where all children inherit it (real variables win).
    environ.Env.read_env(ROOT / ".env", overwrite=False)
    _, opts = parse_args(argv)
    env = child_environment(opts)
    try:
        if opts.daemon:
            env = dev_tls_environment(env)
        run_setup(opts, env)
        host_id = env.get("WARREN_HOST_ID") or config.default_host_id()
        service_env = broker_setup.service_environments(env, host_id)
    except subprocess.CalledProcessError as exc:
        log.error("event=setup_failed step=%r code=%s", " ".join(exc.cmd[1:]), exc.returncode)
        return 1
    except (authority.TLSError, ScopeError) as exc:
        log.error("event=setup_failed step=tls error=%s", exc)
        return 1
    except broker_users.BrokerAdminError as exc:
        log.error(
            "event=setup_failed step=broker_users error=%s (or set WARREN_BROKER_SHARED_USER "
            "for the shared development mode)",
            exc,
        )
        return 1
    except KeyboardInterrupt:
        return 130

    supervisor = Supervisor(service_commands(opts), env, service_env=service_env)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: supervisor.stopping.set())
    print(
        f"\nWarren is running: shop at http://{opts.bind}:{opts.port}/  "
        f"admin at http://{opts.bind}:{opts.port}/admin/ "
        "(create a staff user with: .venv/bin/python manage.py createsuperuser)\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    try:
        supervisor.run()
    finally:
        supervisor.stop()
    return 0
