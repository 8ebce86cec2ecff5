"""The metrics sampler: every `metrics_interval` seconds one `instance.metrics` per ready VM.

A sample reads the VM's RabbitMQ management API (GET api/overview, then GET api/nodes/<node>)
with the VM's admin credentials as the record holds them at that moment (a changed password is
used from the next sample on), and QEMU's CPU time and resident memory from /proc on the host.

Threads: one sampler thread (`run`) and one daemon thread per VM's fetch, at most
`metrics_workers` of them fetching at once. A VM whose API does not answer within
`metrics_timeout` gives a sample with `reachable: false` at the end of the round, whatever its
fetcher still does; a VM whose previous fetch is still running is not asked again (so a VM that
answers one byte a second holds one fetcher, and a daemon thread never delays the daemon's exit). Nothing here touches the AMQP
connection: finished bodies go to `publish` (AmqpIO.offer_metrics), which the connection's thread
sends at its next tick. Parsing the answers is pure (`overview_fields`, `node_fields`) and never
raises: a field the answer lacks or gives as something else reads as 0 (overview counts and rates:
RabbitMQ leaves out `message_stats` until messages flow) or as absent (node fields).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbackend.host.boot import urls_for
from vmbackend.host.config import Config
from vmbackend.host.registry import Registry
from vmbackend.machine.base import MachineError
from vmbackend.machine.management_api import ManagementAPI, ManagementAPIError, quote
from vmbackend.protocol import messages
from vmbackend.protocol.messages import MAX_METRIC_FLOAT, MAX_METRIC_INT, Metrics

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1024 * 1024  # an overview or node answer of a busy broker is tens of KiB
MAX_NODE_NAME = 255
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
KIB = 1024

Publish = Callable[[dict[str, Any]], None]
PidOf = Callable[[str], int | None]
Fetch = Future[tuple[dict[str, Any], str]]


# -- the management API's answers, read without ever raising ---------------------------------------


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return min(max(int(value), 0), MAX_METRIC_INT)


def _rate(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number):
        return None
    return round(min(max(number, 0.0), MAX_METRIC_FLOAT), 3)


def _at(data: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def overview_fields(data: object) -> dict[str, Any]:
    """The overview's numbers as Metrics fields; 0 for what the answer lacks or garbles."""
    rates = {
        "publish_rate": ("message_stats", "publish_details", "rate"),
        "deliver_rate": ("message_stats", "deliver_get_details", "rate"),
        "ack_rate": ("message_stats", "ack_details", "rate"),
    }
    counts = {
        "messages_ready": ("queue_totals", "messages_ready"),
        "messages_unacked": ("queue_totals", "messages_unacknowledged"),
        "connections": ("object_totals", "connections"),
        "channels": ("object_totals", "channels"),
        "consumers": ("object_totals", "consumers"),
        "queues": ("object_totals", "queues"),
    }
    fields: dict[str, Any] = {name: _rate(_at(data, *path)) or 0.0 for name, path in rates.items()}
    fields.update({name: _count(_at(data, *path)) or 0 for name, path in counts.items()})
    return fields


def node_fields(data: object) -> dict[str, Any]:
    """The node's memory, disk, alarms and uptime as Metrics fields; None for what it lacks."""
    fields: dict[str, Any] = {
        name: _count(_at(data, name))
        for name in ("mem_used", "mem_limit", "disk_free", "disk_free_limit")
    }
    for name, key in (("mem_alarm", "mem_alarm"), ("disk_alarm", "disk_free_alarm")):
        value = _at(data, key)
        fields[name] = value if isinstance(value, bool) else None
    uptime_ms = _count(_at(data, "uptime"))
    fields["uptime_s"] = None if uptime_ms is None else uptime_ms // 1000
    return fields


def node_name(overview: object) -> str | None:
    name = _at(overview, "node")
    if isinstance(name, str) and 0 < len(name) <= MAX_NODE_NAME:
        return name
    return None


# -- QEMU on the host --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuReading:
    pid: int
    ticks: int  # utime + stime of every thread of the process
    at: float  # time.monotonic()


def read_cpu(pid: int) -> tuple[int, int] | None:
    """(utime+stime, start time) of `pid` in clock ticks, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    try:
        return int(fields[11]) + int(fields[12]), int(fields[19])
    except (IndexError, ValueError):
        return None


def read_rss(pid: int) -> int | None:
    """VmRSS of `pid` in bytes, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * KIB
    return None


def _uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


class CpuMeter:
    """QEMU's CPU % per VM: ticks used since the previous reading over the time between them;
    the first reading of a pid (daemon start, a restarted QEMU) is the average since QEMU
    started. 100 = one core busy."""

    def __init__(self) -> None:
        self.last: dict[str, CpuReading] = {}

    def percent(self, vm_id: str, pid: int) -> float | None:
        reading = read_cpu(pid)
        now = time.monotonic()
        if reading is None:
            self.last.pop(vm_id, None)
            return None
        ticks, started = reading
        previous = self.last.get(vm_id)
        self.last[vm_id] = CpuReading(pid, ticks, now)
        if previous is not None and previous.pid == pid and now > previous.at:
            used, elapsed = (ticks - previous.ticks) / CLOCK_TICKS, now - previous.at
        else:
            used, elapsed = ticks / CLOCK_TICKS, _uptime() - started / CLOCK_TICKS
        if elapsed <= 0:
            return 0.0
        return _rate(100.0 * max(used, 0) / elapsed)

    def forget_others(self, vm_ids: set[str]) -> None:
        for vm_id in set(self.last) - vm_ids:
            del self.last[vm_id]


# -- one VM ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What one sample of one VM needs, copied from its record under the registry lock."""

    vm_id: str
    url: str
    user: str
    password: str

    def __repr__(self) -> str:  # never the password
        return f"Target({self.vm_id!r}, {self.url!r}, user={self.user!r})"


def fetch(target: Target, timeout: float) -> tuple[dict[str, Any], str]:
    """The RabbitMQ fields of one VM and "" (reachable), or ({}, why not). Never raises."""
    deadline = time.monotonic() + timeout
    api = ManagementAPI(target.url, target.user, target.password, timeout=timeout)
    try:
        overview = api.get("api/overview", max_bytes=MAX_ANSWER_BYTES)
        if not isinstance(overview, dict):
            return {}, "api/overview did not answer a JSON object"
    except (ManagementAPIError, ValueError, RecursionError) as exc:
        return {}, str(exc)[:300] or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a sample must never kill its fetcher
        return {}, f"{type(exc).__name__}: {str(exc)[:200]}"
    fields = overview_fields(overview)
    node = node_name(overview)
    left = deadline - time.monotonic()
    if node is not None and left > 0:  # the node's numbers are a bonus: absent when it fails
        try:
            answer = api.get(f"api/nodes/{quote(node)}", timeout=left, max_bytes=MAX_ANSWER_BYTES)
            fields.update(node_fields(answer))
        except Exception as exc:  # noqa: BLE001 - same as above
            log.debug("metrics node call failed vm_id=%s error=%s", target.vm_id, exc)
    return fields, ""


def is_instance_id(vm_id: str) -> bool:
    """Whether `vm_id` can be an event's instance_id (a UUID, as the shop's vm-ids are)."""
    try:
        uuid.UUID(vm_id)
    except ValueError:
        return False
    return True


# -- the sampler ---------------------------------------------------------------------------------------


class Sampler:
    """Samples every ready VM of `registry` each `cfg.metrics_interval` seconds."""

    def __init__(self, cfg: Config, registry: Registry, pid_of: PidOf, publish: Publish) -> None:
        self.cfg = cfg
        self.registry = registry
        self.pid_of = pid_of
        self.publish = publish
        self.cpu = CpuMeter()
        self.slots = threading.BoundedSemaphore(cfg.metrics_workers)
        self.lock = threading.Lock()
        self.in_flight: dict[str, Fetch] = {}  # a VM's fetch that has not ended yet
        self.unreachable: set[str] = set()  # to log a change of reachability once

    def targets(self) -> list[Target]:
        """The ready VMs nobody works on, with the URL the host reaches and the credentials
        they have now."""
        found = []
        with self.registry.lock:
            for record in self.registry.records.values():
                if not self.registry.is_unattended_ready(record):
                    continue  # a stop/restart/... in progress: a gap, not a false alarm
                if not is_instance_id(record.vm_id):
                    continue  # a VM made by hand as "vm-1" is no shop instance: no samples
                try:
                    probe = urls_for(self.cfg, record, record.ip_addresses)[2]
                except (MachineError, KeyError) as exc:
                    log.warning(
                        "metrics skipped host_id=%s vm_id=%s error=%s",
                        self.cfg.host_id,
                        record.vm_id,
                        exc,
                    )
                    continue
                found.append(
                    Target(record.vm_id, probe, record.admin_username, record.admin_password)
                )
        return found

    def run(self, stop: threading.Event) -> None:
        """The sampler thread: a round now, then one every interval until `stop`."""
        next_round = time.monotonic()
        while not stop.is_set():
            try:
                self.sample_round()
            except Exception:  # noqa: BLE001 - metrics are best-effort; the thread goes on
                log.exception("metrics round failed host_id=%s", self.cfg.host_id)
            next_round += self.cfg.metrics_interval
            now = time.monotonic()
            if next_round < now:  # a round longer than the interval: skip, do not pile up
                next_round = now + self.cfg.metrics_interval
            if stop.wait(next_round - now):
                break

    def sample_round(self) -> list[dict[str, Any]]:
        """Sample every ready VM once (at most `metrics_timeout` + a little); the bodies it
        handed to `publish`."""
        targets = self.targets()
        self.cpu.forget_others({t.vm_id for t in targets})
        started: dict[str, Fetch] = {}
        for target in targets:
            with self.lock:
                if target.vm_id in self.in_flight:
                    continue  # its last fetch still hangs: unreachable again, no new thread
                job = self._start(target)
                self.in_flight[target.vm_id] = job
            job.add_done_callback(functools.partial(self._done, target.vm_id))
            started[target.vm_id] = job
        if started:
            wait_futures(list(started.values()), timeout=self.cfg.metrics_timeout + 0.5)
        bodies = []
        for target in targets:
            job_or_none = started.get(target.vm_id)
            if job_or_none is not None and job_or_none.done() and not job_or_none.cancelled():
                fields, error = job_or_none.result()
            else:
                if job_or_none is not None:
                    job_or_none.cancel()  # still queued: never run it late
                fields, error = {}, f"no answer within {self.cfg.metrics_timeout:g} s"
            bodies.append(self._body(target, fields, error))
        for body in bodies:
            self.publish(body)
        return bodies

    def _start(self, target: Target) -> Fetch:
        """`fetch(target)` in a daemon thread once a slot is free (a ThreadPoolExecutor's threads
        would hold up the interpreter's exit while a VM trickles its answer)."""
        job: Fetch = Future()

        def run() -> None:
            with self.slots:
                if job.set_running_or_notify_cancel():  # False: the round gave up on it
                    job.set_result(fetch(target, self.cfg.metrics_timeout))

        threading.Thread(target=run, name=f"metrics-{target.vm_id}", daemon=True).start()
        return job

    def _done(self, vm_id: str, job: Fetch) -> None:
        with self.lock:
            if self.in_flight.get(vm_id) is job:
                del self.in_flight[vm_id]

    def _body(self, target: Target, fields: dict[str, Any], error: str) -> dict[str, Any]:
        pid = self.pid_of(target.vm_id)
        cpu = self.cpu.percent(target.vm_id, pid) if pid else None
        rss = read_rss(pid) if pid else None
        reachable = not error
        self._log_reachability(target, reachable, error)
        sample = Metrics(reachable=reachable, cpu_percent=cpu, rss_bytes=rss, **fields)
        return messages.metrics_event(
            instance_id=target.vm_id, host_id=self.cfg.host_id, metrics=sample
        )

    def _log_reachability(self, target: Target, reachable: bool, error: str) -> None:
        if reachable and target.vm_id in self.unreachable:
            self.unreachable.discard(target.vm_id)
            log.info(
                "metrics reachable again host_id=%s vm_id=%s instance_id=%s",
                self.cfg.host_id,
                target.vm_id,
                target.vm_id,
            )
        elif not reachable and target.vm_id not in self.unreachable:
            self.unreachable.add(target.vm_id)
            log.warning(
                "metrics unreachable host_id=%s vm_id=%s instance_id=%s error=%s",
                self.cfg.host_id,
                target.vm_id,
                target.vm_id,
                error,
            )
