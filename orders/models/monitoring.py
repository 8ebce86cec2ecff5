"""Metrics samples and rollups, alarms and their events (orders/monitoring/, docs/metrics.md)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from orders.models.instances import Instance
from orders.models.orders import _StateMachine


class MetricSample(models.Model):
    """One `instance.metrics` event as received: kept for RAW_RETENTION (24 h), then rolled up.

    The management API's fields are NULL in an unreachable sample (the host could not ask)."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="metric_samples")
    at = models.DateTimeField()  # the host's occurred_at (never in the future)
    reachable = models.BooleanField()
    messages_ready = models.BigIntegerField(null=True)
    messages_unacked = models.BigIntegerField(null=True)
    publish_rate = models.FloatField(null=True)
    deliver_rate = models.FloatField(null=True)
    ack_rate = models.FloatField(null=True)
    connections = models.BigIntegerField(null=True)
    channels = models.BigIntegerField(null=True)
    consumers = models.BigIntegerField(null=True)
    queues = models.BigIntegerField(null=True)
    mem_used = models.BigIntegerField(null=True)
    mem_limit = models.BigIntegerField(null=True)
    disk_free = models.BigIntegerField(null=True)
    disk_free_limit = models.BigIntegerField(null=True)
    mem_alarm = models.BooleanField(null=True)
    disk_alarm = models.BooleanField(null=True)
    uptime_s = models.BigIntegerField(null=True)
    cpu_percent = models.FloatField(default=0.0)
    rss_bytes = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # The graphs' query (an instance's points in a time window, and its latest point) and
            # the duplicate check: a redelivered event (same occurred_at) is stored once.
            models.UniqueConstraint(fields=["instance", "at"], name="metric_sample_instance_at"),
        ]
        indexes = [
            # rollup_and_prune: the raw points of all instances in a time range (roll-up) and the
            # ones older than RAW_RETENTION (prune).
            models.Index(fields=["at"], name="metric_sample_at"),
        ]

    def __str__(self) -> str:
        return f"{self.instance_id} @ {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def messages_queued(self) -> int | None:
        if self.messages_ready is None or self.messages_unacked is None:
            return None
        return self.messages_ready + self.messages_unacked


class MetricRollup(models.Model):
    """Averages of an instance's raw points over one 5-minute bucket, kept for 30 days.

    Averages over the reachable samples of the bucket (NULL when none was reachable);
    `max_messages_queued` keeps a short queue spike visible on the 7-day graph."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="metric_rollups")
    bucket = models.DateTimeField()  # start of the 5-minute bucket (UTC, aligned to 5 minutes)
    samples = models.PositiveIntegerField()
    reachable_samples = models.PositiveIntegerField()
    messages_queued = models.FloatField(null=True)
    max_messages_queued = models.BigIntegerField(null=True)
    publish_rate = models.FloatField(null=True)
    deliver_rate = models.FloatField(null=True)
    ack_rate = models.FloatField(null=True)
    connections = models.FloatField(null=True)
    mem_used = models.FloatField(null=True)
    mem_limit = models.FloatField(null=True)
    disk_free = models.FloatField(null=True)
    disk_free_limit = models.FloatField(null=True)
    cpu_percent = models.FloatField(null=True)

    class Meta:
        constraints = [
            # The 7-day graph's query (an instance's buckets in a window) and the roll-up's
            # replace-by-bucket (one row per instance and bucket).
            models.UniqueConstraint(fields=["instance", "bucket"], name="metric_rollup_bucket"),
        ]
        indexes = [
            # rollup_and_prune: buckets older than ROLLUP_RETENTION, and the newest bucket done.
            models.Index(fields=["bucket"], name="metric_rollup_bucket_time"),
        ]

    def __str__(self) -> str:
        return f"{self.instance_id} {self.bucket:%Y-%m-%d %H:%M}"


class AlarmKind(models.TextChoices):
    MEMORY = "memory", "Memory alarm"
    DISK = "disk", "Disk alarm"
    UNREACHABLE = "unreachable", "Server not answering"
    QUEUE_DEPTH = "queue_depth", "Messages queued above"
    CONNECTIONS = "connections", "Connections above"
    MESSAGE_RATE = "message_rate", "Publish rate above"


class AlarmState(models.TextChoices):
    OK = "ok", "OK"
    FIRING = "firing", "Firing"


class Alarm(_StateMachine):
    """A condition on an instance's samples (orders/monitoring/alarms.py evaluates it as samples
    arrive).

    Fires once when its condition has held for `duration_s`, clears once when the clear
    condition has held for `duration_s` (docs/metrics.md, Alarms). Three defaults per instance
    (memory, disk, unreachable); the customer adds thresholds (queue depth, connections, rate)."""

    Kind = AlarmKind
    State = AlarmState
    TRANSITIONS = {
        AlarmState.OK: frozenset({AlarmState.FIRING}),
        AlarmState.FIRING: frozenset({AlarmState.OK}),
    }
    DEFAULT_KINDS = (AlarmKind.MEMORY, AlarmKind.DISK, AlarmKind.UNREACHABLE)
    THRESHOLD_KINDS = (AlarmKind.QUEUE_DEPTH, AlarmKind.CONNECTIONS, AlarmKind.MESSAGE_RATE)

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="alarms")
    kind = models.CharField(max_length=20, choices=AlarmKind.choices)
    is_default = models.BooleanField(default=False)
    threshold = models.FloatField(null=True, blank=True)  # threshold kinds only
    duration_s = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=AlarmState.choices, default=AlarmState.OK)
    # Start of the current run of samples pointing the other way (holding while ok, clear while
    # firing); NULL when the last sample did not. The time of the newest sample evaluated.
    pending_since = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    fired_at = models.DateTimeField(null=True, blank=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-is_default", "kind", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=AlarmState.values), name="alarm_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=AlarmKind.values), name="alarm_kind_valid"
            ),
            # One of each default per instance (ensure_default_alarms may race with itself).
            models.UniqueConstraint(
                fields=["instance", "kind"],
                condition=models.Q(is_default=True),
                name="alarm_one_default_per_kind",
            ),
        ]
        # The evaluation's query (an instance's alarms) uses the instance foreign key's index.

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.status})"


class AlarmEvent(models.Model):
    """A fire or a clear, as shown on the order page and sent by email (kept ROLLUP_RETENTION)."""

    class Change(models.TextChoices):
        FIRED = "fired", "Fired"
        CLEARED = "cleared", "Cleared"

    alarm = models.ForeignKey(Alarm, on_delete=models.CASCADE, related_name="events")
    change = models.CharField(max_length=10, choices=Change.choices)
    at = models.DateTimeField()
    value = models.FloatField(null=True, blank=True)  # the sample's value that decided it

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # rollup_and_prune: events older than ROLLUP_RETENTION.
            models.Index(fields=["at"], name="alarm_event_at"),
        ]

    def __str__(self) -> str:
        return f"{self.alarm} {self.change} {self.at:%Y-%m-%d %H:%M}"
