"""Storing, rolling up and pruning the instances' metrics (orders/monitoring/metrics.py), on the
database the run uses (SQLite by default; PostgreSQL with DATABASE_URL=postgres://...)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orders.messaging.consumer import EventConsumer
from orders.messaging.host_events import handle_message
from orders.models import AlarmEvent, Instance, MetricRollup, MetricSample
from orders.monitoring import metrics
from vmbackend.protocol import messages
from vmbackend.protocol.messages import Metrics

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def sample(**values: Any) -> Metrics:
    base: dict[str, Any] = {
        "reachable": True,
        "messages_ready": 10,
        "messages_unacked": 2,
        "publish_rate": 5.0,
        "deliver_rate": 4.0,
        "ack_rate": 4.0,
        "connections": 3,
        "channels": 6,
        "consumers": 2,
        "queues": 4,
        "mem_used": 100 * 2**20,
        "mem_limit": 400 * 2**20,
        "disk_free": 3 * 2**30,
        "disk_free_limit": 50 * 2**20,
        "mem_alarm": False,
        "disk_alarm": False,
        "uptime_s": 3600,
        "cpu_percent": 7.5,
        "rss_bytes": 300 * 2**20,
    }
    return Metrics(**(base | values))


@pytest.fixture
def ready(instance: Instance) -> Instance:
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.READY, host_id="host-a", ready_at=T0
    )
    instance.refresh_from_db()
    return instance


@pytest.fixture
def instance_factory(plan: Any) -> Any:
    """Another customer's ready instance on host-a."""
    from django.contrib.auth import get_user_model

    from orders.models import Order
    from tests.orders.conftest import provision

    def make() -> Instance:
        user = get_user_model().objects.create_user(f"u{Order.objects.count()}", "u@example.com")
        made = provision(Order.objects.create(user=user, plan=plan))
        assert made is not None
        Instance.objects.filter(pk=made.pk).update(
            status=Instance.Status.READY, host_id="host-a", ready_at=T0
        )
        return made

    return make


def fill(
    instance: Instance, start: datetime, end: datetime, every: timedelta, **values: Any
) -> int:
    """Raw points from `start` (inclusive) to `end` (exclusive), written in bulk."""
    rows, at = [], start
    while at < end:
        rows.append(metrics.build_sample(instance, at, sample(**values)))
        at += every
    MetricSample.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


# -- storing ------------------------------------------------------------------------------------


def test_a_sample_is_stored_once_and_a_redelivery_is_a_duplicate(ready):
    assert metrics.record_sample(instance=ready, at=T0, metrics=sample()) is not None
    assert metrics.record_sample(instance=ready, at=T0, metrics=sample(connections=99)) is None
    assert MetricSample.objects.get().connections == 3


def test_every_field_of_the_contract_is_stored_in_its_column(ready):
    """MANAGEMENT_FIELDS is the contract's own list (vmbackend/messages.py): a field added there
    is stored, or this fails on the missing column."""
    values = {name: 1 for name in messages.METRIC_INTS} | {
        name: 2.5 for name in messages.METRIC_FLOATS
    }
    values |= dict.fromkeys(messages.METRIC_BOOLS, True)
    metrics.record_sample(instance=ready, at=T0, metrics=sample(**values))
    row = MetricSample.objects.get()
    assert {name: getattr(row, name) for name in metrics.MANAGEMENT_FIELDS} == values


def test_an_unreachable_sample_keeps_no_rabbitmq_numbers(ready):
    stored = metrics.record_sample(
        instance=ready, at=T0, metrics=sample(reachable=False, messages_ready=5)
    )
    row = MetricSample.objects.get()
    assert stored is not None and row.reachable is False
    assert (row.messages_ready, row.mem_used, row.mem_alarm) == (None, None, None)
    assert (row.cpu_percent, row.rss_bytes) == (7.5, 300 * 2**20)


def test_samples_of_other_hosts_and_unknown_or_ended_instances_are_not_stored(ready):
    apply = metrics.apply_metrics
    assert apply(instance_id=ready.public_id, host_id="host-b", at=T0, metrics=sample()) == (
        "other_host"
    )
    assert (
        apply(instance_id=uuid.uuid4(), host_id="host-a", at=T0, metrics=sample())
        == "unknown_instance"
    )
    Instance.objects.filter(pk=ready.pk).update(status=Instance.Status.DELETING)
    assert apply(instance_id=ready.public_id, host_id="host-a", at=T0, metrics=sample()) == (
        "ignored"
    )
    assert MetricSample.objects.count() == 0


def test_a_late_sample_is_stored_for_the_graphs_but_not_evaluated(ready):
    apply = metrics.apply_metrics
    kw = {"instance_id": ready.public_id, "host_id": "host-a", "metrics": sample()}
    assert apply(at=T0, **kw) == "recorded"
    assert apply(at=T0 - timedelta(seconds=30), **kw) == "stored_late"
    assert apply(at=T0, **kw) == "duplicate"
    assert MetricSample.objects.count() == 2


def test_a_metrics_event_never_touches_the_seq_record(ready):
    Instance.objects.filter(pk=ready.pk).update(last_event_seq=41)
    body = messages.metrics_event(
        instance_id=str(ready.public_id), host_id="host-a", metrics=sample()
    )
    assert handle_message(json.dumps(body).encode()) == "recorded"
    assert handle_message(json.dumps(body).encode()) == "duplicate"
    ready.refresh_from_db()
    assert ready.last_event_seq == 41
    assert MetricSample.objects.filter(instance=ready).count() == 1


# -- roll-up ------------------------------------------------------------------------------------


def test_bucket_start_is_aligned_to_five_minutes():
    assert metrics.bucket_start(datetime(2026, 1, 1, 10, 7, 59, 9, tzinfo=UTC)) == datetime(
        2026, 1, 1, 10, 5, tzinfo=UTC
    )
    assert metrics.bucket_start(datetime(2026, 1, 1, 10, 5, tzinfo=UTC)) == datetime(
        2026, 1, 1, 10, 5, tzinfo=UTC
    )


def _raw(at: datetime, **values: Any) -> dict[str, Any]:
    row = {name: None for name in metrics.ROLLUP_RAW}
    return row | {"instance_id": 1, "at": at, "reachable": True, "cpu_percent": 0.0} | values


def test_rollup_math_averages_the_reachable_points_of_each_bucket():
    rows = [
        _raw(T0, messages_ready=10, messages_unacked=0, publish_rate=2.0, cpu_percent=10.0),
        _raw(T0 + timedelta(seconds=30), messages_ready=30, messages_unacked=10, publish_rate=4.0),
        _raw(T0 + timedelta(seconds=60), reachable=False, cpu_percent=20.0),
        _raw(T0 + timedelta(minutes=5), messages_ready=7, messages_unacked=0, connections=2),
        _raw(T0 + timedelta(minutes=5), instance_id=2, reachable=False),
    ]
    first, second, other = metrics.rollup_rows(rows)
    assert (first.instance_id, first.bucket) == (1, T0)
    assert (first.samples, first.reachable_samples) == (3, 2)
    assert first.messages_queued == 25.0  # (10 + 40) / 2
    assert first.max_messages_queued == 40
    assert first.publish_rate == 3.0
    assert first.cpu_percent == 10.0  # over all three points: (10 + 0 + 20) / 3
    assert first.connections is None  # no point knew it
    assert (second.bucket, second.messages_queued, second.connections) == (
        T0 + timedelta(minutes=5),
        7.0,
        2.0,
    )
    assert (other.instance_id, other.reachable_samples, other.messages_queued) == (2, 0, None)


def test_rollup_writes_each_complete_bucket_once(ready):
    fill(ready, T0, T0 + timedelta(minutes=20), timedelta(seconds=30))
    # At 12:21 (with the 60 s grace): 12:00, 12:05, 12:10 are complete; 12:15 ends at 12:20
    # but is rolled up only at 12:21 or later.
    assert metrics.rollup(T0 + timedelta(minutes=20, seconds=30)) == 3
    assert metrics.rollup(T0 + timedelta(minutes=20, seconds=30)) == 0
    assert metrics.rollup(T0 + timedelta(minutes=21)) == 1
    buckets = list(MetricRollup.objects.order_by("bucket").values_list("bucket", "samples"))
    assert buckets == [(T0 + timedelta(minutes=5 * i), 10) for i in range(4)]


# -- bounded ------------------------------------------------------------------------------------


def test_the_tables_stay_bounded_over_weeks_of_samples(ready, instance_factory):
    """33 simulated days of two instances, a sample every 2 minutes, the job every 6 hours."""
    second = instance_factory()
    every = timedelta(minutes=2)
    start = T0
    now = start
    for _ in range(33 * 4):
        end = now + timedelta(hours=6)
        for inst in (ready, second):
            fill(inst, now, end, every)
        now = end
        metrics.rollup_and_prune(now)
        raw_per_instance = MetricSample.objects.filter(instance=ready).count()
        assert raw_per_instance <= 24 * 30 + 1  # 24 h of 2-minute points
    # Exactly the last 24 hours of raw points, per instance.
    assert MetricSample.objects.filter(instance=ready).count() == 24 * 30
    assert MetricSample.objects.order_by("at").first().at == now - timedelta(hours=24)
    # Roll-ups: every 5-minute bucket of the last 30 days, and none older.
    per_instance = MetricRollup.objects.filter(instance=ready)
    assert per_instance.order_by("bucket").first().bucket >= now - timedelta(days=30)
    assert per_instance.count() <= 30 * 288
    assert per_instance.count() >= 30 * 288 - 1  # the newest, in its grace minute
    assert MetricRollup.objects.count() == 2 * per_instance.count()


def test_alarm_history_is_pruned_after_thirty_days(ready):
    from orders.models import Alarm

    alarm = Alarm.objects.create(instance=ready, kind=Alarm.Kind.DISK, duration_s=60)
    AlarmEvent.objects.create(alarm=alarm, change="fired", at=T0)
    AlarmEvent.objects.create(alarm=alarm, change="cleared", at=T0 + timedelta(days=20))
    counts = metrics.prune(T0 + timedelta(days=31))
    assert counts["alarm_events_deleted"] == 1
    assert list(AlarmEvent.objects.values_list("change", flat=True)) == ["cleared"]


def test_the_prune_command_rolls_up_and_prunes(ready):
    from django.utils import timezone

    now = timezone.now()
    fill(ready, now - timedelta(hours=30), now, timedelta(minutes=1))
    out = StringIO()
    call_command("prune_metrics", stdout=out)
    counts = dict(item.split("=") for item in out.getvalue().split())
    # 6 hours of minute points are past 24 h (one more if the clock passed a minute meanwhile).
    assert int(counts["raw_deleted"]) in (360, 361)
    assert MetricSample.objects.count() == 30 * 60 - int(counts["raw_deleted"])
    assert MetricRollup.objects.count() >= 24 * 12 - 1


def test_the_event_worker_runs_the_job_once_per_interval(ready):
    from django.utils import timezone

    now = timezone.now()
    fill(
        ready,
        now - timedelta(hours=25),
        now - timedelta(hours=24, minutes=30),
        timedelta(minutes=1),
    )
    consumer = EventConsumer(maintenance_interval=3600)
    counts = consumer.maintain(channel=None)  # type: ignore[arg-type] - no wait needed
    assert counts is not None and counts["raw_deleted"] == 30
    assert consumer.maintain(channel=None) is None  # type: ignore[arg-type]
    assert MetricSample.objects.count() == 0


# -- reading for the graphs ---------------------------------------------------------------------


def test_graph_points_per_range(ready):
    """8 days of 5-minute points, the job run once a day, then the last hour every 30 s."""
    now = T0 + timedelta(days=8)
    moment = now - timedelta(days=8)
    while moment < now - timedelta(hours=1):
        after = min(moment + timedelta(days=1), now - timedelta(hours=1))
        fill(ready, moment, after, timedelta(minutes=5), messages_ready=4)
        moment = after
        metrics.rollup_and_prune(moment)
    fill(ready, now - timedelta(hours=1), now, timedelta(seconds=30), messages_ready=9)

    hour = metrics.graph_points(ready, "1h", now)
    assert len(hour) == 120  # every raw point
    assert hour[-1].values["messages_queued"] == 11
    assert hour[-1].values["messages_ready"] == 9
    day = metrics.graph_points(ready, "24h", now)
    assert len(day) == 24 * 12  # 5-minute averages of the raw points
    assert day[0].values["messages_queued"] == 6 and day[-1].values["messages_queued"] == 11
    week = metrics.graph_points(ready, "7d", now)
    assert len(week) == 7 * 48  # 30-minute averages of the roll-ups (and the newest raw points)
    assert week[0].values["messages_queued"] == 6
    assert week[-1].values["messages_queued"] == 11
    assert all(p.values["messages_ready"] is None for p in week)


def test_downsample_averages_known_values_only():
    pts = [
        metrics.Point(T0, {"a": 1.0}),
        metrics.Point(T0 + timedelta(minutes=1), {"a": None}),
        metrics.Point(T0 + timedelta(minutes=2), {"a": 3.0}),
        metrics.Point(T0 + timedelta(minutes=6), {"a": None}),
    ]
    out = metrics.downsample(pts, timedelta(minutes=5))
    assert [(p.at, p.values["a"]) for p in out] == [(T0, 2.0), (T0 + timedelta(minutes=5), None)]


def test_unreachable_since_is_the_start_of_the_current_outage(ready):
    for i, reachable in enumerate([True, False, True, False, False, False]):
        metrics.record_sample(
            instance=ready, at=T0 + timedelta(seconds=30 * i), metrics=sample(reachable=reachable)
        )
    latest = metrics.latest_sample(ready)
    assert metrics.unreachable_since(ready, latest) == T0 + timedelta(seconds=90)
    metrics.record_sample(instance=ready, at=T0 + timedelta(minutes=5), metrics=sample())
    assert metrics.unreachable_since(ready, metrics.latest_sample(ready)) is None


# -- any sample the contract allows -------------------------------------------------------------

_INT = st.one_of(st.none(), st.integers(0, messages.MAX_METRIC_INT))
_FLOAT = st.one_of(st.none(), st.floats(0, messages.MAX_METRIC_FLOAT))
_BOOL = st.one_of(st.none(), st.booleans())
any_metrics = st.builds(
    Metrics,
    reachable=st.booleans(),
    **{name: _INT for name in messages.METRIC_INTS},
    **{name: _FLOAT for name in messages.METRIC_FLOATS},
    **{name: _BOOL for name in messages.METRIC_BOOLS},
    cpu_percent=_FLOAT,
    rss_bytes=_INT,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(samples=st.lists(any_metrics, min_size=1, max_size=4))
@example(
    samples=[
        Metrics(
            reachable=True,
            messages_ready=messages.MAX_METRIC_INT,
            messages_unacked=messages.MAX_METRIC_INT,
            mem_used=messages.MAX_METRIC_INT,
            publish_rate=messages.MAX_METRIC_FLOAT,
        )
    ]
)
def test_any_sample_within_the_contract_is_stored_rolled_up_and_drawn(ready, samples):
    """Bounds at their extremes (2^63-1 messages ready and unacked: a sum the roll-up's column
    cannot hold) never make the worker fail, the roll-up or the page."""
    from orders.monitoring import alarms, metrics_page

    MetricSample.objects.all().delete()
    MetricRollup.objects.all().delete()
    alarms.add_alarm(instance=ready, kind="queue_depth", threshold=1e12, minutes=1)
    for i, one in enumerate(samples):
        at = T0 + timedelta(seconds=30 * i)
        assert (
            metrics.apply_metrics(instance_id=ready.public_id, host_id="host-a", at=at, metrics=one)
            == "recorded"
        )
    metrics.rollup(T0 + timedelta(minutes=10))
    assert MetricRollup.objects.count() >= 1
    page = metrics_page.metrics_context(ready, "1h", now=T0 + timedelta(minutes=3))
    assert len(page["graphs"]) == 5
    ready.alarms.all().delete()
