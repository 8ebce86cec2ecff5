"""Alarms on an instance's metrics: defaults on every server, thresholds the customer sets.

Every instance has three default alarms (RabbitMQ's memory alarm, its disk alarm, the server not
answering); the customer adds thresholds on the order page: messages queued above N, connections
above N, publish rate above N, each for M minutes.

One state machine, `Alarm.TRANSITIONS` (ok -> firing -> ok), driven by the pure function `step`:

- while **ok**, an alarm fires once its condition has held on every sample for `duration_s`
  (from the first sample of the run to the current one);
- while **firing**, it clears once its *clear* condition has held for `duration_s`. For a
  threshold the clear condition is "at or below CLEAR_RATIO (90 %) of the threshold", so a value
  hovering at the threshold neither clears nor fires again (hysteresis twice over: the band and
  the duration). For the defaults it is the opposite of the condition.
- a sample that cannot tell (the server did not answer, so there is no queue depth) breaks the
  run in progress and changes nothing else: the "server not answering" alarm speaks for it.

Each change is one transaction: the compare-and-set on the alarm's status, its history row
(`AlarmEvent`), and the email after the commit (orders/core/emails.py). docs/metrics.md has the why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from orders.models import Alarm, AlarmEvent, Instance, MetricSample

log = logging.getLogger(__name__)

OK, FIRING = Alarm.State.OK, Alarm.State.FIRING
FIRED, CLEARED = AlarmEvent.Change.FIRED, AlarmEvent.Change.CLEARED
CLEAR_RATIO = 0.9
DEFAULT_DURATION_S = {
    Alarm.Kind.MEMORY: 60,
    Alarm.Kind.DISK: 60,
    Alarm.Kind.UNREACHABLE: 90,  # three missed 30-second samples
}
MAX_MINUTES = 24 * 60
MAX_THRESHOLD = 1e12  # the contract's bound on a sample's values


class AlarmError(Exception):
    """A customer's alarm that cannot be set (the message says why, for the page)."""


# -- the state machine, pure --------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    status: str
    pending_since: datetime | None
    change: str = ""  # FIRED, CLEARED or ""


def step(
    *,
    status: str,
    pending_since: datetime | None,
    at: datetime,
    holds: bool | None,
    clears: bool | None,
    duration: timedelta,
) -> Step:
    """The alarm after one sample at `at`. `holds`: its condition is true now (None: unknown);
    `clears`: its clear condition is true now. `pending_since` is the start of the run of
    samples pointing the other way (holding while ok, clearing while firing)."""
    towards = holds if status == OK else clears
    if not towards:  # False or unknown: a run in progress is broken
        return Step(status, None)
    start = pending_since or at
    if at - start < duration:
        return Step(status, start)
    if status == OK:
        return Step(FIRING, None, FIRED)
    return Step(OK, None, CLEARED)


def value_of(alarm: Alarm, sample: MetricSample) -> float | None:
    """The sample's number the alarm looks at (None: not known in this sample)."""
    if alarm.kind == Alarm.Kind.QUEUE_DEPTH:
        return sample.messages_queued
    if alarm.kind == Alarm.Kind.CONNECTIONS:
        return sample.connections
    if alarm.kind == Alarm.Kind.MESSAGE_RATE:
        return sample.publish_rate
    if alarm.kind == Alarm.Kind.MEMORY:
        return sample.mem_used
    if alarm.kind == Alarm.Kind.DISK:
        return sample.disk_free
    return None


def conditions(alarm: Alarm, sample: MetricSample) -> tuple[bool | None, bool | None]:
    """(holds, clears) of the alarm's condition in this sample; None where it cannot tell."""
    if alarm.kind == Alarm.Kind.UNREACHABLE:
        return (not sample.reachable, sample.reachable)
    if alarm.kind == Alarm.Kind.MEMORY:
        flag = sample.mem_alarm
        return (flag, None if flag is None else not flag)
    if alarm.kind == Alarm.Kind.DISK:
        flag = sample.disk_alarm
        return (flag, None if flag is None else not flag)
    value = value_of(alarm, sample)
    if value is None or alarm.threshold is None:
        return (None, None)
    return (value > alarm.threshold, value <= alarm.threshold * CLEAR_RATIO)


# -- evaluation as samples arrive ---------------------------------------------------------------


def ensure_default_alarms(instance: Instance) -> None:
    """Create the instance's default alarms that do not exist yet."""
    have = set(instance.alarms.filter(is_default=True).values_list("kind", flat=True))
    for kind in Alarm.DEFAULT_KINDS:
        if kind in have:
            continue
        try:
            # Race: two workers on the first samples of one instance; the unique constraint
            # keeps one, and the loser's savepoint is rolled back alone.
            with transaction.atomic():
                Alarm.objects.create(
                    instance=instance,
                    kind=kind,
                    is_default=True,
                    duration_s=DEFAULT_DURATION_S[kind],
                )
        except IntegrityError:
            pass


def evaluate(*, instance: Instance, sample: MetricSample) -> list[AlarmEvent]:
    """Run every alarm of the instance over its newest sample; returns the changes made.

    Called by orders/metrics.apply_metrics inside the sample's transaction, for samples newer
    than every other of the instance only (alarms move forward in time)."""
    alarms = list(instance.alarms.all())
    if not set(Alarm.DEFAULT_KINDS) <= {a.kind for a in alarms if a.is_default}:
        ensure_default_alarms(instance)  # the first sample of this instance (one query after)
        alarms = list(instance.alarms.all())
    changes = []
    for alarm in alarms:
        if alarm.evaluated_at is not None and sample.at <= alarm.evaluated_at:
            continue
        holds, clears = conditions(alarm, sample)
        after = step(
            status=alarm.status,
            pending_since=alarm.pending_since,
            at=sample.at,
            holds=holds,
            clears=clears,
            duration=timedelta(seconds=alarm.duration_s),
        )
        if after.change:
            event = _change(alarm, after, sample)
            if event is not None:
                changes.append(event)
        elif after.pending_since != alarm.pending_since:
            # Only a run that starts or breaks is written: a steady alarm costs no write.
            Alarm.objects.filter(pk=alarm.pk, status=alarm.status).update(
                pending_since=after.pending_since, evaluated_at=sample.at
            )
    return changes


def _change(alarm: Alarm, after: Step, sample: MetricSample) -> AlarmEvent | None:
    """ok -> firing or firing -> ok: one transaction (status, history row, email after commit)."""
    moment = {"fired_at" if after.change == FIRED else "cleared_at": sample.at}
    with transaction.atomic():
        # Compare-and-set on the status we read: a second worker with the same alarm changes
        # it once; the loser writes nothing.
        if not alarm.move_to(after.status, pending_since=None, evaluated_at=sample.at, **moment):
            return None
        event = AlarmEvent.objects.create(
            alarm=alarm, change=after.change, at=sample.at, value=value_of(alarm, sample)
        )
        transaction.on_commit(lambda: notify(alarm=alarm, event=event))
    log.warning(
        "event=alarm_%s alarm_id=%s kind=%s instance_id=%s value=%s",
        after.change,
        alarm.pk,
        alarm.kind,
        alarm.instance.public_id,
        event.value,
    )
    return event


def notify(*, alarm: Alarm, event: AlarmEvent) -> None:
    """The owner's email about one change. After the commit: a mail server down never undoes
    (or repeats) the change; the change stays on the order page either way."""
    from orders.core.emails import send_order_email

    order = alarm.instance.order
    try:
        send_order_email(
            order=order,
            kind=f"alarm_{event.change}",
            context={
                "alarm": alarm,
                "description": describe(alarm),
                "event": event,
                "value": format_value(alarm, event.value),
            },
        )
    except Exception as exc:  # noqa: BLE001 - an email must never stop the event worker
        log.error(
            "event=alarm_email_failed alarm_id=%s order_id=%s error=%s",
            alarm.pk,
            order.public_id,
            type(exc).__name__,
        )


# -- the customer's alarms ----------------------------------------------------------------------


def add_alarm(*, instance: Instance, kind: str, threshold: float, minutes: int) -> Alarm:
    """A customer threshold: `kind` one of Alarm.THRESHOLD_KINDS, above `threshold` for
    `minutes`. The same alarm again returns the existing one. Raises AlarmError with the reason."""
    if kind not in Alarm.THRESHOLD_KINDS:
        raise AlarmError("Choose what the alarm watches.")
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise AlarmError(f"The threshold must be between 0 and {MAX_THRESHOLD:.0e}.")
    if not 1 <= minutes <= MAX_MINUTES:
        raise AlarmError(f"The duration must be between 1 and {MAX_MINUTES} minutes.")
    with transaction.atomic():
        # Race: two adds at once (tabs, a script) would each count one alarm fewer than the
        # limit and both insert; the instance's row lock makes them take turns.
        Instance.objects.select_for_update().filter(pk=instance.pk).first()
        same = instance.alarms.filter(
            is_default=False, kind=kind, threshold=threshold, duration_s=minutes * 60
        ).first()
        if same is not None:  # a repeated click (or a second tab): the alarm once
            return same
        limit = settings.ALARMS_PER_SERVER
        if instance.alarms.filter(is_default=False).count() >= limit:
            raise AlarmError(f"At most {limit} alarms per server; remove one first.")
        alarm = Alarm.objects.create(
            instance=instance, kind=kind, threshold=threshold, duration_s=minutes * 60
        )
    log.info(
        "event=alarm_added alarm_id=%s kind=%s instance_id=%s", alarm.pk, kind, instance.public_id
    )
    return alarm


def remove_alarm(*, instance: Instance, alarm_id: int) -> bool:
    """Remove one of the customer's own alarms of this instance (never a default)."""
    deleted, _ = Alarm.objects.filter(pk=alarm_id, instance=instance, is_default=False).delete()
    return bool(deleted)


def describe(alarm: Alarm) -> str:
    """ "Messages queued above 1000 for 5 min", "Memory alarm"."""
    if alarm.kind not in Alarm.THRESHOLD_KINDS:
        return alarm.get_kind_display()
    threshold = format_value(alarm, alarm.threshold)
    minutes = alarm.duration_s // 60
    return f"{alarm.get_kind_display()} {threshold} for {minutes} min"


def format_value(alarm: Alarm, value: float | None) -> str:
    if value is None:
        return "-"
    if alarm.kind in (Alarm.Kind.MEMORY, Alarm.Kind.DISK):
        return human_bytes(value)
    if alarm.kind == Alarm.Kind.MESSAGE_RATE:
        return f"{value:g}/s"
    return f"{value:g}"


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns


def alarms_context(instance: Instance, now: datetime | None = None) -> dict[str, object]:
    """What orders/_alarms.html shows: every alarm with its state and times, the last changes."""
    alarms = list(instance.alarms.all())
    history = AlarmEvent.objects.filter(alarm__instance=instance).select_related("alarm")[:20]
    return {
        "alarms": [{"alarm": a, "description": describe(a)} for a in alarms],
        "alarm_history": [
            {"event": e, "description": describe(e.alarm), "value": format_value(e.alarm, e.value)}
            for e in history
        ],
        "alarm_kinds": [(k.value, k.label) for k in Alarm.THRESHOLD_KINDS],
        "now": now or timezone.now(),
    }
