"""Seconds from the payment webhook to a working management URL, through the whole system.

Runs the real processes (web, relay, event worker, host daemon) as `python -m warren run` does,
against a private RabbitMQ vhost, and for each order measures from the signed
checkout.session.completed POST until the order page shows a management URL that answers
/api/overview with the credentials the page reveals. Warm-pool hits (WARREN_POOL, the next order
waits until the replacement pool VM is ready), restores from the saved state and cold boots run in
the same invocation; prints medians and their ratios, and each idle pool VM's RSS and CPU %
(QEMU's VmRSS and utime+stime over `--idle-seconds`, `--settle` seconds after it became ready,
measured before its order).

    .venv/bin/python bench/provisioning.py [--image rabbitmq-4.0] [--pool 3] [--restore 3] [--cold 1]

With the real image the pool runs with WARREN_CAPACITY=1: the claimed VM holds the only slot, so
the replacement pool VM boots only after the order is cancelled (never two real VMs at once).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import System, wait_until  # noqa: E402
from vmbackend.images import manifest  # noqa: E402
from vmbackend.machine.qemu import VMPaths  # noqa: E402
from vmbackend.tls import authority  # noqa: E402

PLAN_MEMORY_MB = 512  # the bunny plan's memory: the pool entry must match it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def private_vhost() -> tuple[str, str]:
    vhost = f"warren-bench-{uuid.uuid4().hex[:8]}"
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
    return vhost, f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


# The path of one order, as the processes' logs mark it (key=value, wall-clock times to the
# millisecond): (step name, process log, a pattern with the order's vm-id in it). Each step's
# time is from the previous mark to its own; "page" is this script's long poll answering, as
# the order page's does, and "check" the management URL answering with the page's credentials.
MARKS = (
    ("webhook", "web", "event=stripe_webhook .*order_id={order}"),
    ("relay", "relay", "event=outbox_sent .*vm_id={vm}"),
    ("claim", "vmbackend", "vm accepted .*vm_id={vm}"),
    ("ready", "vmbackend", "vm ready .*vm_id={vm}"),
    ("event", "events", "event=host_event type=instance.ready instance_id={vm}"),
)
STEPS = [name for name, _log, _pattern in MARKS] + ["page", "check"]
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def log_time(line: str) -> float | None:
    match = LOG_TIME.search(line)
    if not match:
        return None
    return (
        time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
    )


def step_times(system: System, order: str, vm: str, started: float, page: float, end: float):
    """Seconds per step of STEPS (None where a mark is missing from the logs)."""
    marks: list[float | None] = []
    for _name, log, pattern in MARKS:
        wanted = re.compile(pattern.format(order=order, vm=vm))
        found = [log_time(line) for line in system.log(log).splitlines() if wanted.search(line)]
        marks.append(next((t for t in found if t is not None), None))
    marks += [page, end]
    out: list[float | None] = []
    previous: float | None = started
    for mark in marks:
        out.append(None if mark is None or previous is None else mark - previous)
        previous = mark if mark is not None else None
    return out


def one_order(system: System, n: int, steps: list[list[float | None]] | None = None) -> float:
    user = f"bench{n}"
    system.create_customer(user, "bench-passphrase-123")
    session = system.login(user, "bench-passphrase-123")
    order_id = system.buy(session, "bunny")
    version = system.order_status(session, order_id)["version"]
    event = system.checkout_completed_event(order_id)
    started, wall_started = time.monotonic(), time.time()
    assert system.post_webhook(event).status_code == 200
    # As the order page does: a long poll on its status, asked again whenever it changes.
    while True:
        resp = session.get(
            f"{system.base_url}/orders/{order_id}/status/", params={"since": version}, timeout=60
        )
        resp.raise_for_status()
        state = resp.json()
        version = state["version"]
        if state["status"] == "ready":
            break
        if state["status"] in ("failed", "cancelled") or time.monotonic() - started > 900:
            raise RuntimeError(f"order {order_id} did not become ready: {state['status']}")
    page_at = time.time()

    def working_url() -> bool:
        match = re.search(
            r'id="management-url" href="([^"]+)"', system.order_page(session, order_id)
        )
        if not match:
            return False
        creds = system.reveal_credentials(session, order_id)
        try:  # https with TLS on: verified against the root the order page offers
            resp = requests.get(
                match.group(1) + "api/overview",
                auth=(creds["username"], creds["password"]),
                timeout=60,  # the first TLS handshake under TCG takes seconds: wait for it
                verify=system.env.get("WARREN_CA_CERT") or True,
            )
        except requests.exceptions.SSLError as exc:
            raise AssertionError(f"the management URL's certificate: {exc}") from exc
        return resp.status_code == 200

    wait_until(working_url, 60, f"order {order_id} to work", interval=0.05, system=system)
    elapsed = time.monotonic() - started
    if steps is not None:
        vm = re.search(rf"order_id={order_id} instance_id=([0-9a-f-]+)", system.log("web"))
        vm_id = vm.group(1) if vm else "-"
        steps.append(step_times(system, order_id, vm_id, wall_started, page_at, time.time()))
    system.cancel(session, order_id)
    wait_until(
        lambda: system.order_status(session, order_id)["status"] == "deleted",
        120,
        "the VM to be deleted",
        system=system,
    )
    return elapsed


def print_steps(mode: str, steps: list[list[float | None]]) -> None:
    for n, row in enumerate(steps, 1):
        cells = "  ".join(
            f"{name} {'-' if t is None else f'{t:.3f}'}" for name, t in zip(STEPS, row, strict=True)
        )
        print(f"  {mode} run {n} steps (s): {cells}", flush=True)
    medians = []
    for i, name in enumerate(STEPS):
        values = [row[i] for row in steps if row[i] is not None]
        medians.append(f"{name} {statistics.median(values):.3f}" if values else f"{name} -")
    print(f"  {mode} step medians (s): {'  '.join(medians)}", flush=True)


def tls_environment(folder: Path, host_id: str = "bench-host") -> dict[str, str]:
    authority.init_ca(folder / "root")
    authority.init_host(folder / "root", host_id, folder / "host")
    return {
        "WARREN_HOST_ID": host_id,
        "WARREN_TLS_DIR": str(folder / "host"),
        "WARREN_CA_CERT": str(folder / "root" / authority.ROOT_CERT),
    }


def ready_pool_vm(state_dir: Path, timeout: float = 1500) -> dict:
    """The ready pool VM's record (waits for one)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for path in sorted((state_dir / "vms").glob("pool-*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("status") == "ready":
                return record
        time.sleep(0.2)
    raise TimeoutError("no pool VM became ready")


def idle_usage(state_dir: Path, vm_id: str, seconds: float) -> tuple[float, float]:
    """(RSS MiB, CPU % of one core) of an idle VM's QEMU over `seconds`."""
    pid = int(VMPaths(state_dir / "machines" / vm_id).pidfile.read_text().strip())

    def cpu() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    before, started = cpu(), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu() - before, time.monotonic() - started
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss_kb / 1024, 100.0 * used / CLOCK_TICKS / wall


def measure(
    image: str,
    mode: str,
    runs: int,
    amqp_url: str,
    images_root: Path,
    idle_seconds: float = 20.0,
    usage: list[tuple[float, float]] | None = None,
    keep_logs: Path | None = None,
    settle: float = 0.0,
    tls: bool = True,
) -> list[float]:
    workdir = Path(tempfile.mkdtemp(prefix="wbench-"))
    env = {"WARREN_RESTORE": "0" if mode == "cold" else "1"}
    if tls:  # as `make run` does: a CA of its own, every VM gets a certificate (docs/tls.md)
        env.update(tls_environment(workdir / "tls"))
    if mode == "pool":
        env["WARREN_POOL"] = f"{image}:{PLAN_MEMORY_MB}:1"
        if image != "tiny":
            env["WARREN_CAPACITY"] = "1"  # never two real VMs at once
    host_id = env.get("WARREN_HOST_ID")
    system = System(workdir, amqp_url, images_root, image=image, host_id=host_id, extra_env=env)
    try:
        system.prepare()
        system.start_all()
        times: list[float] = []
        steps: list[list[float | None]] = []
        for n in range(runs):
            if mode == "pool":
                pool_vm = ready_pool_vm(workdir / "vmbackend")
                time.sleep(settle)  # a just-made VM is still settling (its cookie rotation)
                rss, cpu = idle_usage(workdir / "vmbackend", pool_vm["vm_id"], idle_seconds)
                print(f"  idle pool VM: RSS {rss:6.0f} MiB, CPU {cpu:5.1f} %", flush=True)
                if usage is not None:
                    usage.append((rss, cpu))
            seconds = one_order(system, n, steps)
            print(f"  {mode:7} run {n + 1}: {seconds:6.2f} s", flush=True)
            times.append(seconds)
        print_steps(mode, steps)
        return times
    finally:
        system.stop_all()
        for pid in system.qemu_pids():
            system.kill_pid(pid)
        if keep_logs is not None:  # each process's log, for a breakdown of the path
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, keep_logs / f"{mode}-{log.name}")
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", default="rabbitmq-4.0")
    parser.add_argument(
        "--cold", type=int, default=1, help="cold-boot orders (each ~2 min under TCG)"
    )
    parser.add_argument("--restore", type=int, default=3, help="orders served from the saved state")
    parser.add_argument("--pool", type=int, default=3, help="orders served by a warm pool VM")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle CPU sample length")
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy the processes' logs here"
    )
    parser.add_argument(
        "--no-tls", action="store_true", help="plain ports only (make run turns TLS on)"
    )
    parser.add_argument(
        "--settle", type=float, default=0.0, help="seconds a ready pool VM idles before sampling"
    )
    args = parser.parse_args()
    images_root = manifest.default_images_root()
    manifest.load(images_root, args.image)  # fails clearly when `make images` has not run
    vhost, amqp_url = private_vhost()
    usage: list[tuple[float, float]] = []
    results: dict[str, list[float]] = {}
    try:
        for mode, runs in (("pool", args.pool), ("restore", args.restore), ("cold", args.cold)):
            if runs:
                results[mode] = measure(
                    args.image,
                    mode,
                    runs,
                    amqp_url,
                    images_root,
                    args.idle_seconds,
                    usage,
                    args.keep_logs,
                    args.settle,
                    not args.no_tls,
                )
    finally:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60
        )
    tls = "off" if args.no_tls else "on"
    print(f"\npayment webhook -> working management URL, image={args.image}, TLS {tls}")
    medians = {mode: statistics.median(times) for mode, times in results.items()}
    for mode, times in results.items():
        print(
            f"  {mode:8} median {medians[mode]:7.2f} s  "
            f"(n={len(times)}, {min(times):.2f}-{max(times):.2f})"
        )
    for slow, fast in (("restore", "pool"), ("cold", "pool"), ("cold", "restore")):
        if slow in medians and fast in medians:
            print(f"  ratio {slow}/{fast}: {medians[slow] / medians[fast]:.1f}x")
    if usage:
        print(
            f"  idle pool VM: RSS median {statistics.median(u[0] for u in usage):.0f} MiB, "
            f"CPU median {statistics.median(u[1] for u in usage):.1f} % of one core "
            f"(n={len(usage)}, {args.idle_seconds:.0f} s each)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
