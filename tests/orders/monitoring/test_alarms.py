"""Alarms (orders/monitoring/alarms.py): the state machine alone, as a property over random samples,
and through apply_metrics with the database and the owner's emails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.models import Alarm, AlarmEvent, Instance
from orders.monitoring import alarms, metrics
from orders.monitoring.alarms import (
    CLEARED,
    FIRED,
    FIRING,
    OK,
    AlarmError,
    add_alarm,
    remove_alarm,
    step,
)
from tests.orders.monitoring.test_metrics import sample

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


# -- the state machine, pure ---------------------------------------------------------------------


def run(values: list[tuple[int, float | None]], threshold: float, duration: timedelta) -> list[str]:
    """Feed (seconds since T0, value) samples through `step` for "above threshold"; the
    changes per sample ("" for none)."""
    status, pending, changes = OK, None, []
    for seconds, value in values:
        holds = None if value is None else value > threshold
        clears = None if value is None else value <= threshold * alarms.CLEAR_RATIO
        after = step(
            status=status,
            pending_since=pending,
            at=T0 + timedelta(seconds=seconds),
            holds=holds,
            clears=clears,
            duration=duration,
        )
        status, pending = after.status, after.pending_since
        changes.append(after.change)
    return changes


def test_it_fires_when_the_condition_held_for_the_duration_and_not_before():
    samples = [(0, 150), (30, 150), (59, 150), (60, 150), (90, 150)]
    assert run(samples, 100, MINUTE) == ["", "", "", FIRED, ""]


def test_a_dip_restarts_the_run():
    samples = [(0, 150), (30, 50), (60, 150), (90, 150), (120, 150)]
    assert run(samples, 100, MINUTE) == ["", "", "", "", FIRED]


def test_a_value_hovering_at_the_threshold_fires_once_and_does_not_clear():
    samples = [(30 * i, 101 if i % 2 else 99) for i in range(40)]
    # 101/99/101...: never above for a whole minute with a duration: nothing at all.
    assert set(run(samples, 100, MINUTE)) == {""}
    # Without a duration it fires once, and 99 is not at or below 90: it never clears.
    assert run(samples, 100, timedelta(0)).count(FIRED) == 1
    assert CLEARED not in run(samples, 100, timedelta(0))


def test_it_clears_once_below_the_clear_threshold_for_the_duration():
    samples = [(0, 150), (60, 150), (90, 95), (120, 95), (180, 80), (210, 80), (240, 80)]
    assert run(samples, 100, MINUTE) == ["", FIRED, "", "", "", "", CLEARED]


def test_an_unknown_value_breaks_a_run_and_changes_nothing():
    samples = [(0, 150), (30, None), (60, 150), (90, 150), (120, 150)]
    assert run(samples, 100, MINUTE) == ["", "", "", "", FIRED]
    assert run([(0, 150), (60, 150), (90, None), (300, None)], 100, MINUTE) == [
        "",
        FIRED,
        "",
        "",
    ]


samples_strategy = st.lists(
    st.tuples(st.integers(1, 120), st.one_of(st.none(), st.integers(0, 200))),
    max_size=80,
)


@given(steps=samples_strategy, duration=st.integers(0, 300))
def test_fires_and_clears_alternate_and_match_the_conditions(steps, duration):
    """Two fires always have a clear between them; each change happens exactly when its
    condition has held since a sample after the previous change for the duration."""
    threshold = 100
    times, now = [], 0
    for gap, _ in steps:
        now += gap
        times.append(now)
    values = [v for _, v in steps]
    changes = run(list(zip(times, values, strict=True)), threshold, timedelta(seconds=duration))

    made = [c for c in changes if c]
    assert made == [FIRED, CLEARED] * (len(made) // 2) + [FIRED] * (len(made) % 2)

    def holds(i: int, want: str) -> bool:
        v = values[i]
        if v is None:
            return False
        return v > threshold if want == FIRED else v <= threshold * alarms.CLEAR_RATIO

    previous = -1  # index of the last change
    want = FIRED
    for i, change in enumerate(changes):
        # The condition has held on every sample j..i (after the previous change) for the duration.
        held_long_enough = any(
            all(holds(k, want) for k in range(j, i + 1)) and times[i] - times[j] >= duration
            for j in range(previous + 1, i + 1)
        )
        if change:
            assert change == want and held_long_enough
            previous, want = i, CLEARED if want == FIRED else FIRED
        else:
            assert not held_long_enough


# -- through the database -----------------------------------------------------------------------


@pytest.fixture
def ready(instance: Instance) -> Instance:
    Instance.objects.filter(pk=instance.pk).update(
        status=Instance.Status.READY, host_id="host-a", ready_at=T0
    )
    instance.refresh_from_db()
    return instance


def feed(instance: Instance, start: int, *samples: dict[str, Any], every: int = 30) -> list[str]:
    out = []
    for i, values in enumerate(samples):
        at = T0 + timedelta(seconds=start + every * i)
        out.append(
            metrics.apply_metrics(
                instance_id=instance.public_id, host_id="host-a", at=at, metrics=sample(**values)
            )
        )
    return out


@pytest.mark.django_db(transaction=True)
def test_every_instance_gets_the_default_alarms_with_its_first_sample(ready):
    feed(ready, 0, {})
    kinds = set(ready.alarms.values_list("kind", "is_default", "status"))
    assert kinds == {
        ("memory", True, "ok"),
        ("disk", True, "ok"),
        ("unreachable", True, "ok"),
    }
    feed(ready, 30, {})
    assert ready.alarms.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_server_not_answering_fires_once_and_clears_once_with_emails(ready, mailoutbox):
    down = {"reachable": False}
    feed(ready, 0, {}, down, down, down)  # down at 30, 60, 90: 60 s so far
    alarm = ready.alarms.get(kind=Alarm.Kind.UNREACHABLE)
    assert alarm.status == OK and mailoutbox == []
    feed(ready, 120, down, down, down, down)  # 90 s at 120: fires; more samples change nothing
    alarm.refresh_from_db()
    assert alarm.status == FIRING and alarm.fired_at == T0 + timedelta(seconds=120)
    assert len(mailoutbox) == 1
    assert "Alarm: Server not answering" in mailoutbox[0].subject
    assert mailoutbox[0].to == ["alice@example.com"]
    assert "fired at 1 Nov 2026, 12:02 UTC" in mailoutbox[0].body

    feed(ready, 240, {}, down, {}, {}, {}, {})  # up at 240, down 270, up 300..390: clears at 390
    alarm.refresh_from_db()
    assert alarm.status == OK and alarm.cleared_at == T0 + timedelta(seconds=390)
    assert [m.subject.split(":")[0] for m in mailoutbox] == ["Alarm", "Cleared"]
    history = list(AlarmEvent.objects.order_by("at").values_list("change", "at"))
    assert history == [
        ("fired", T0 + timedelta(seconds=120)),
        ("cleared", T0 + timedelta(seconds=390)),
    ]


@pytest.mark.django_db(transaction=True)
def test_rabbitmqs_memory_alarm_fires_after_a_minute(ready, mailoutbox):
    feed(ready, 0, {"mem_alarm": True}, {"mem_alarm": True}, {"mem_alarm": True})
    alarm = ready.alarms.get(kind=Alarm.Kind.MEMORY)
    assert alarm.status == FIRING
    assert "Value then: 100.0 MiB" in mailoutbox[0].body


@pytest.mark.django_db(transaction=True)
def test_a_queue_depth_alarm_fires_and_clears_with_hysteresis(ready, mailoutbox):
    feed(ready, 0, {})
    alarm = add_alarm(instance=ready, kind=Alarm.Kind.QUEUE_DEPTH, threshold=1000, minutes=1)
    # queued = ready + 2 unacked. Hovering around 1000 with dips never fires.
    feed(ready, 30, *[{"messages_ready": 1100 if i % 2 else 900} for i in range(10)])
    alarm.refresh_from_db()
    assert alarm.status == OK
    feed(ready, 330, *[{"messages_ready": 1500}] * 3)
    alarm.refresh_from_db()
    assert alarm.status == FIRING
    # Back at the threshold (950 > 900, the clear level): still firing, no email.
    feed(ready, 420, *[{"messages_ready": 950}] * 5)
    alarm.refresh_from_db()
    assert alarm.status == FIRING
    feed(ready, 570, *[{"messages_ready": 10}] * 3)
    alarm.refresh_from_db()
    assert alarm.status == OK
    subjects = [m.subject for m in mailoutbox]
    assert subjects == [
        "Alarm: Messages queued above 1000 for 1 min on your RabbitMQ server (Test small)",
        "Cleared: Messages queued above 1000 for 1 min on your RabbitMQ server (Test small)",
    ]
    assert "Value then: 1502" in mailoutbox[0].body


@pytest.mark.django_db(transaction=True)
def test_a_broken_mail_server_does_not_undo_the_change(ready, settings, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens
    feed(ready, 0, *[{"disk_alarm": True}] * 3)
    alarm = ready.alarms.get(kind=Alarm.Kind.DISK)
    assert alarm.status == FIRING
    assert AlarmEvent.objects.filter(alarm=alarm, change="fired").count() == 1


@pytest.mark.django_db
def test_the_customers_thresholds_are_checked(ready, settings):
    settings.ALARMS_PER_SERVER = 5
    with pytest.raises(AlarmError, match="Choose"):
        add_alarm(instance=ready, kind="memory", threshold=1, minutes=1)
    with pytest.raises(AlarmError, match="threshold"):
        add_alarm(instance=ready, kind="connections", threshold=-1, minutes=1)
    with pytest.raises(AlarmError, match="duration"):
        add_alarm(instance=ready, kind="connections", threshold=1, minutes=0)
    for n in range(settings.ALARMS_PER_SERVER):
        add_alarm(instance=ready, kind="connections", threshold=n, minutes=1)
    with pytest.raises(AlarmError, match="At most"):
        add_alarm(instance=ready, kind="connections", threshold=100, minutes=1)
    # The same alarm again is the one there (a repeated click), even at the limit.
    assert add_alarm(instance=ready, kind="connections", threshold=1, minutes=1).threshold == 1


@pytest.mark.django_db
def test_only_the_customers_own_alarms_can_be_removed(ready):
    alarms.ensure_default_alarms(ready)
    default = ready.alarms.get(kind="memory")
    mine = add_alarm(instance=ready, kind="message_rate", threshold=50, minutes=2)
    assert alarms.describe(mine) == "Publish rate above 50/s for 2 min"
    assert remove_alarm(instance=ready, alarm_id=default.pk) is False
    assert remove_alarm(instance=ready, alarm_id=mine.pk) is True
    assert remove_alarm(instance=ready, alarm_id=mine.pk) is False


@pytest.mark.django_db(transaction=True)
def test_two_workers_with_the_same_sample_store_it_once_and_fire_once(ready, mailoutbox):
    """A redelivered sample applied by two workers at once (PostgreSQL: real row locks; SQLite
    serialises the writers): one row, one fire, one email."""
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need a server database (SQLite serialises them)")
    feed(ready, 0, {"disk_alarm": True}, {"disk_alarm": True})  # 30 s of a 60 s duration
    barrier = threading.Barrier(2)
    results: list[str] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.extend(feed(ready, 60, {"disk_alarm": True}))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) in (["duplicate", "recorded"], ["recorded", "recorded"])
    assert ready.metric_samples.count() == 3
    assert AlarmEvent.objects.filter(alarm__kind="disk", change="fired").count() == 1
    assert len(mailoutbox) == 1
