"""The host daemons, as last heard in their heartbeats."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models


class Host(models.Model):
    """A host daemon, as last heard in its heartbeat."""

    host_id = models.CharField(max_length=100, unique=True)
    last_heartbeat_at = models.DateTimeField()
    capacity = models.PositiveIntegerField(default=0)
    running = models.PositiveIntegerField(default=0)
    free_slots = models.PositiveIntegerField(default=0)
    version = models.CharField(max_length=50, blank=True)
    # The host's warm pool as its last heartbeat told it (vmbackend/pool.py), "" without one.
    pool = models.CharField(max_length=2000, blank=True)
    # Set by mark_silent_hosts() when heartbeats stop; cleared by the next heartbeat.
    silent_since = models.DateTimeField(null=True, blank=True)
    # Resources from the last heartbeat (0: a daemon that does not report them: nothing is
    # placed on it by size). docs/fleet.md.
    memory_total_mb = models.PositiveBigIntegerField(default=0)
    memory_used_mb = models.PositiveBigIntegerField(default=0)
    vcpus_total = models.PositiveBigIntegerField(default=0)
    vcpus_used = models.PositiveBigIntegerField(default=0)
    disk_total_gb = models.PositiveBigIntegerField(default=0)
    disk_used_gb = models.PositiveBigIntegerField(default=0)
    # Staff: a draining host takes no new VMs (maintenance); its VMs keep running.
    draining = models.BooleanField(default=False)

    class Meta:
        ordering = ["host_id"]

    def __str__(self) -> str:
        return self.host_id

    def is_silent_at(self, now: datetime) -> bool:
        timeout = timedelta(seconds=settings.HOST_HEARTBEAT_TIMEOUT)
        return self.last_heartbeat_at < now - timeout
