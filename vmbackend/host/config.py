"""The daemon's one configuration object, read from the environment and command-line flags.

Every setting has a safe default for a single development host; nothing else in `vmbackend`
reads `os.environ` for daemon settings, with one exception: `machine.accel.choose` reads
WARREN_ACCEL itself when asked for "auto", so the tools that run QEMU without a Config (`python -m
vmbackend image snapshot`, the benches, the tests) honour it too; the daemon passes its `accel`
from here, read from the same variable, so both agree.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmbackend.host.config_values import (  # ConfigError and BROKER_USER_RE: part of this API
    BROKER_USER_RE as BROKER_USER_RE,
)
from vmbackend.host.config_values import (
    ConfigError as ConfigError,
)
from vmbackend.host.config_values import (
    _bool,
    _boot_seconds,
    _broker_ca,
    _choice,
    _float,
    _int,
    _metrics_interval,
    _pool,
    _port_range,
    _senders,
)
from vmbackend.host.pool import PoolEntry
from vmbackend.machine.base import Driver
from vmbackend.machine.drivers import DRIVERS, driver_for
from vmbackend.protocol.capacity import DEFAULT_CPU_OVERCOMMIT, default_cpus, default_disk_gb
from vmbackend.protocol.server_names import DEFAULT_VM_DOMAIN
from vmbackend.tls.scope import ScopeError, validate_domain

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
# The broker users whose commands change VMs (docs/security.md): the shop's by default. Any
# host's user may publish into this host's queue (replies need the default exchange), so a
# command from a user not listed is refused. A shared development user is listed explicitly.
DEFAULT_COMMAND_SENDERS = "warren-shop"
HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
BRIDGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
NETWORK_MODES = ("user", "bridge")
ACCELS = ("auto", "kvm", "tcg")
# Seconds from QEMU launch to a ready management API. A RabbitMQ 4.0 cold boot under TCG took
# 656 s on a loaded 2-core host (docs/images.md), past the old 600: a slow but healthy first boot
# then failed the customer's new VM, and a heal's attempt was thrown away. 1500 s is the cold-boot
# allowance the image snapshot and the slow tier already use (docs/vmbackend.md).
BOOT_DEADLINE = 1500


HOST_MEMORY_RESERVE_MB = 1024  # kept for the host itself (daemon, QEMU's own overhead, page cache)


def default_host_memory_mb(meminfo: str | None = None) -> int:
    """The memory this host may give its VMs when WARREN_HOST_MEMORY_MB is not set: MemTotal of
    /proc/meminfo minus HOST_MEMORY_RESERVE_MB (0 when unreadable: then no resize grows memory)."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return 0
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    if not match:
        return 0
    return max(0, int(match.group(1)) // 1024 - HOST_MEMORY_RESERVE_MB)


@dataclass(frozen=True)
class Config:
    host_id: str
    amqp_url: str
    capacity: int
    image_dir: Path
    state_dir: Path
    bind_address: str
    advertised_host: str
    port_min: int
    port_max: int
    network: str
    bridge: str
    accel: str
    boot_deadline: float
    heartbeat_interval: float
    stop_timeout: float
    # Start new VMs from the image's saved state when it matches (seconds instead of minutes);
    # off: always cold boot (for comparison, or when a saved state is suspected bad).
    restore: bool = True
    # Self-healing (vmbackend/host/healing.py): a ready VM whose QEMU exits on its own is started again
    # from its disk, at most `restart_burst` times within `restart_interval` seconds (systemd's
    # StartLimitBurst/StartLimitIntervalSec); `restart_delay` doubles between failed attempts;
    # `watch_interval` is how often the watcher looks at every ready VM's QEMU.
    restart_burst: int = 3
    restart_interval: float = 900.0
    restart_delay: float = 5.0
    watch_interval: float = 0.5
    # Metrics (vmbackend/host/sampler.py): one instance.metrics per ready VM every `metrics_interval`
    # seconds (0: off), each VM's management API given `metrics_timeout` seconds, by at most
    # `metrics_workers` fetcher threads at once.
    metrics_interval: float = 30.0
    metrics_timeout: float = 5.0
    metrics_workers: int = 8
    # Memory (MiB) all of this host's VMs together may have: a resize-vm that would pass it is
    # refused. Default: the host's memory minus HOST_MEMORY_RESERVE_MB.
    host_memory_mb: int = field(default_factory=default_host_memory_mb)
    # The rest of the host's capacity (vmbackend/protocol/capacity.py, docs/fleet.md): its cores (times
    # `cpu_overcommit` gives the vCPUs it may sell) and the disk GB its VMs may have (default:
    # the free space of the state dir's filesystem at start, minus 10 %). A create-vm that does
    # not fit next to the VMs already here is declined (host queue) or left to another host.
    host_cpus: int = field(default_factory=default_cpus)
    cpu_overcommit: float = DEFAULT_CPU_OVERCOMMIT
    host_disk_gb: int = field(default_factory=lambda: default_disk_gb(Path.home()))
    # Seconds this host stops taking from the shared create-vm queue after it had to put back a
    # request that does not fit it (the request goes to another host meanwhile).
    fallback_pause: float = 5.0
    # TLS (docs/tls.md): the host's intermediate CA folder (None: no TLS, plain ports only),
    # how long a VM's certificate lasts, how long before its end it is renewed, and how often
    # the daemon looks.
    tls_dir: Path | None = None
    tls_cert_days: float = 90.0
    tls_renew_before_days: float = 30.0
    tls_check_interval: float = 3600.0
    # Each VM's certificate names `<short-id>.<vm_domain>` (vmbackend/protocol/server_names.py);
    # the CA's name constraint must permit it.
    vm_domain: str = DEFAULT_VM_DOMAIN
    # The machine driver: `qemu` (the product), or `simulated` (vmbackend/machine/simulated.py: VMs
    # without QEMU for load tests; boot seconds `low-high` and a failure rate).
    driver: str = "qemu"
    sim_boot_seconds: tuple[float, float] = (1.0, 3.0)
    sim_failure_rate: float = 0.0
    # The warm pool (vmbackend/host/pool.py): ready VMs per (image, memory) kept for create-vm to
    # claim; empty: no pool. A pool VM older than `pool_recycle` seconds is replaced.
    pool: tuple[PoolEntry, ...] = ()
    pool_recycle: float = 21600.0
    # The broker users (user_id, validated by the broker) whose mutating commands this host
    # obeys; list-vms is answered for anyone who may publish to the exchange.
    command_senders: tuple[str, ...] = (DEFAULT_COMMAND_SENDERS,)
    # The CA (PEM file) an amqps:// amqp_url is verified against; "": the system's CAs.
    broker_ca: str = ""

    def machines(self) -> Driver:
        """The driver that makes this host's VMs: the one place `driver` is looked at."""
        return driver_for(
            self.driver,
            accel=self.accel,
            sim_boot_seconds=self.sim_boot_seconds,
            sim_failure_rate=self.sim_failure_rate,
        )

    def redacted_amqp_url(self) -> str:
        """The AMQP URL with its password replaced, for logs."""
        return redact_url(self.amqp_url)


# (setting name, environment variable); the flag is --setting-name.
_SETTINGS: tuple[tuple[str, str], ...] = (
    ("host_id", "WARREN_HOST_ID"),
    ("amqp_url", "WARREN_AMQP_URL"),
    ("capacity", "WARREN_CAPACITY"),
    ("image_dir", "WARREN_IMAGE_DIR"),
    ("state_dir", "WARREN_STATE_DIR"),
    ("bind_address", "WARREN_BIND_ADDRESS"),
    ("advertised_host", "WARREN_ADVERTISED_HOST"),
    ("port_range", "WARREN_PORT_RANGE"),
    ("network", "WARREN_NETWORK"),
    ("bridge", "WARREN_BRIDGE"),
    ("accel", "WARREN_ACCEL"),
    ("boot_deadline", "WARREN_BOOT_DEADLINE"),
    ("heartbeat_interval", "WARREN_HEARTBEAT_INTERVAL"),
    ("stop_timeout", "WARREN_STOP_TIMEOUT"),
    ("restore", "WARREN_RESTORE"),
    ("restart_burst", "WARREN_RESTART_BURST"),
    ("restart_interval", "WARREN_RESTART_INTERVAL"),
    ("restart_delay", "WARREN_RESTART_DELAY"),
    ("watch_interval", "WARREN_WATCH_INTERVAL"),
    ("metrics_interval", "WARREN_METRICS_INTERVAL"),
    ("metrics_timeout", "WARREN_METRICS_TIMEOUT"),
    ("metrics_workers", "WARREN_METRICS_WORKERS"),
    ("host_memory_mb", "WARREN_HOST_MEMORY_MB"),
    ("host_cpus", "WARREN_HOST_CPUS"),
    ("cpu_overcommit", "WARREN_CPU_OVERCOMMIT"),
    ("host_disk_gb", "WARREN_HOST_DISK_GB"),
    ("fallback_pause", "WARREN_FALLBACK_PAUSE"),
    ("tls_dir", "WARREN_TLS_DIR"),
    ("tls_cert_days", "WARREN_TLS_CERT_DAYS"),
    ("tls_renew_before_days", "WARREN_TLS_RENEW_BEFORE_DAYS"),
    ("tls_check_interval", "WARREN_TLS_CHECK_INTERVAL"),
    ("vm_domain", "WARREN_VM_DOMAIN"),
    ("driver", "WARREN_DRIVER"),
    ("sim_boot_seconds", "WARREN_SIM_BOOT_SECONDS"),
    ("sim_failure_rate", "WARREN_SIM_FAILURE_RATE"),
    ("pool", "WARREN_POOL"),
    ("pool_recycle", "WARREN_POOL_RECYCLE"),
    ("command_senders", "WARREN_COMMAND_SENDERS"),
    ("broker_ca", "WARREN_BROKER_CA"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per setting; a flag overrides its environment variable."""
    for name, env in _SETTINGS:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, help=f"(env {env})"
        )


def redact_url(url: str) -> str:
    """`amqp://user:secret@host/` -> `amqp://user:***@host/`."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def default_host_id() -> str:
    """This machine's short host name (the host id when WARREN_HOST_ID is not set)."""
    return socket.gethostname().split(".")[0] or "host"


def load(env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None) -> Config:
    """Build the Config: flag, else environment variable, else default."""
    env = os.environ if env is None else env
    given: dict[str, str] = {}
    for name, var in _SETTINGS:
        flag = getattr(flags, name, None) if flags is not None else None
        if flag is not None:
            given[name] = str(flag)
        elif env.get(var):
            given[name] = env[var]

    host_id = given.get("host_id") or default_host_id()
    if not HOST_ID_RE.fullmatch(host_id):
        raise ConfigError("host_id must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}")

    amqp_url = given.get("amqp_url", DEFAULT_AMQP_URL)
    if not amqp_url.startswith(("amqp://", "amqps://")):
        raise ConfigError("amqp_url must start with amqp:// or amqps://")

    bind_address = given.get("bind_address", "127.0.0.1")
    try:
        ipaddress.ip_address(bind_address)
    except ValueError:
        raise ConfigError(f"bind_address must be an IP address, got {bind_address!r}") from None

    network = given.get("network", "user")
    if network not in NETWORK_MODES:
        raise ConfigError(f"network must be one of {', '.join(NETWORK_MODES)}, got {network!r}")
    bridge = given.get("bridge", "warren0")
    if not BRIDGE_RE.fullmatch(bridge):
        raise ConfigError(f"bridge must be a network interface name, got {bridge!r}")
    accel = given.get("accel", "auto")
    if accel not in ACCELS:
        raise ConfigError(f"accel must be one of {', '.join(ACCELS)}, got {accel!r}")

    port_min, port_max = _port_range(given.get("port_range", "20000-29999"))
    image_dir = Path(given.get("image_dir", "~/.cache/warren/images")).expanduser()
    state_dir = Path(
        given.get("state_dir") or Path("~/.local/state/warren/vmbackend") / host_id
    ).expanduser()

    # Fractions of a day are allowed (a test's certificate lasts minutes); at most 825 days,
    # what browsers accept for a server certificate.
    tls_cert_days = _float("tls_cert_days", given.get("tls_cert_days", "90"), 0.0005, 825)
    tls_renew_before_days = _float(
        "tls_renew_before_days", given.get("tls_renew_before_days", "30"), 0, 825
    )
    if tls_renew_before_days >= tls_cert_days:
        raise ConfigError(
            f"tls_renew_before_days ({tls_renew_before_days:g}) must be less than "
            f"tls_cert_days ({tls_cert_days:g})"
        )
    tls_dir = Path(given["tls_dir"]).expanduser() if given.get("tls_dir") else None
    try:
        vm_domain = validate_domain(given.get("vm_domain") or DEFAULT_VM_DOMAIN)
    except ScopeError as exc:
        raise ConfigError(str(exc)) from exc

    return Config(
        host_id=host_id,
        amqp_url=amqp_url,
        capacity=_int("capacity", given.get("capacity", "2"), 0, 1000),
        image_dir=image_dir,
        state_dir=state_dir,
        bind_address=bind_address,
        advertised_host=given.get("advertised_host", bind_address),
        port_min=port_min,
        port_max=port_max,
        network=network,
        bridge=bridge,
        accel=accel,
        boot_deadline=_float(
            "boot_deadline", given.get("boot_deadline", str(BOOT_DEADLINE)), 1, 86400
        ),
        heartbeat_interval=_float(
            "heartbeat_interval", given.get("heartbeat_interval", "15"), 0.1, 3600
        ),
        stop_timeout=_float("stop_timeout", given.get("stop_timeout", "30"), 0, 3600),
        restore=_bool("restore", given.get("restore", "1")),
        restart_burst=_int("restart_burst", given.get("restart_burst", "3"), 0, 100),
        restart_interval=_float(
            "restart_interval", given.get("restart_interval", "900"), 1, 7 * 86400
        ),
        restart_delay=_float("restart_delay", given.get("restart_delay", "5"), 0, 3600),
        watch_interval=_float("watch_interval", given.get("watch_interval", "0.5"), 0.05, 60),
        metrics_interval=_metrics_interval(given.get("metrics_interval", "30")),
        metrics_timeout=_float("metrics_timeout", given.get("metrics_timeout", "5"), 0.1, 60),
        metrics_workers=_int("metrics_workers", given.get("metrics_workers", "8"), 1, 64),
        host_memory_mb=(
            _int("host_memory_mb", given["host_memory_mb"], 0, 2**40)
            if "host_memory_mb" in given
            else default_host_memory_mb()
        ),
        host_cpus=_int("host_cpus", given.get("host_cpus", str(default_cpus())), 0, 100_000),
        cpu_overcommit=_float("cpu_overcommit", given.get("cpu_overcommit", "4"), 0.1, 64),
        host_disk_gb=(
            _int("host_disk_gb", given["host_disk_gb"], 0, 2**40)
            if "host_disk_gb" in given
            else default_disk_gb(state_dir)
        ),
        fallback_pause=_float("fallback_pause", given.get("fallback_pause", "5"), 0, 3600),
        tls_dir=tls_dir,
        vm_domain=vm_domain,
        tls_cert_days=tls_cert_days,
        tls_renew_before_days=tls_renew_before_days,
        tls_check_interval=_float(
            "tls_check_interval", given.get("tls_check_interval", "3600"), 0.1, 86400
        ),
        driver=_choice("driver", given.get("driver", "qemu"), DRIVERS),
        sim_boot_seconds=_boot_seconds(given.get("sim_boot_seconds", "1-3")),
        sim_failure_rate=_float("sim_failure_rate", given.get("sim_failure_rate", "0"), 0, 1),
        pool=_pool(given.get("pool", "")),
        pool_recycle=_float("pool_recycle", given.get("pool_recycle", "21600"), 60, 30 * 86400),
        command_senders=_senders(given.get("command_senders", DEFAULT_COMMAND_SENDERS)),
        broker_ca=_broker_ca(given.get("broker_ca", "")),
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse `daemon` flags (used by the CLI)."""
    parser = argparse.ArgumentParser(prog="python -m vmbackend daemon")
    add_arguments(parser)
    return parser.parse_args(list(argv))
