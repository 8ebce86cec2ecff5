"""A server's metrics series and its alarms, from orders/monitoring (the order page's services)."""

from __future__ import annotations

from uuid import UUID

from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Status

from orders.api import present, schemas
from orders.api.problems import ApiProblem, not_found
from orders.models import Alarm, Instance
from orders.monitoring import metrics, metrics_page
from orders.monitoring.alarms import AlarmError, add_alarm, describe, remove_alarm

router = Router(tags=["monitoring"])
P = schemas.Problem
ERRORS = schemas.ERROR_CODES


def _measured(request: HttpRequest, server_id: UUID) -> Instance:
    """The owner's server, when it has metrics (as on the order page); else 404."""
    order = present.owned_order(request, server_id)
    instance = present.instance_of(order)
    if instance is None or not metrics_page.shows_metrics(order, instance):
        raise not_found("No metrics for this server (it has not run yet, or it has ended).")
    return instance


def _alarm_body(alarm: Alarm) -> dict:
    return {
        "id": alarm.pk,
        "kind": alarm.kind,
        "description": describe(alarm),
        "is_default": alarm.is_default,
        "threshold": alarm.threshold,
        "minutes": alarm.duration_s // 60,
        "status": alarm.status,
        "fired_at": alarm.fired_at,
        "cleared_at": alarm.cleared_at,
    }


@router.get("/servers/{server_id}/metrics", response={200: schemas.MetricsOut, ERRORS: P})
def get_metrics(request: HttpRequest, server_id: UUID, range: str = metrics.DEFAULT_RANGE) -> dict:
    """The series the order page draws: `1h` and `24h` from the samples, `7d` from roll-ups."""
    instance = _measured(request, server_id)
    if range not in metrics.RANGES:
        raise ApiProblem(400, f"range is one of {', '.join(metrics.RANGES)}.", kind="bad-range")
    points = metrics.graph_points(instance, range, timezone.now())
    return {"range": range, "points": [{"at": p.at, "values": p.values} for p in points]}


@router.get("/servers/{server_id}/alarms", response={200: schemas.AlarmPage, ERRORS: P})
def list_alarms(request: HttpRequest, server_id: UUID, cursor: str = "", limit: int = 50) -> dict:
    instance = _measured(request, server_id)
    rows, after = present.page(instance.alarms.all(), cursor, limit, newest_first=False)
    return {"items": [_alarm_body(a) for a in rows], "next_cursor": after}


@router.post("/servers/{server_id}/alarms", response={201: schemas.AlarmOut, ERRORS: P})
def create_alarm(request: HttpRequest, server_id: UUID, body: schemas.AlarmCreate) -> Status[dict]:
    """A threshold alarm; the same alarm again answers the existing one."""
    present.writer(request)
    instance = _measured(request, server_id)
    try:
        alarm = add_alarm(
            instance=instance, kind=body.kind, threshold=body.threshold, minutes=body.minutes
        )
    except AlarmError as exc:
        raise ApiProblem(422, str(exc), kind="alarm-refused") from exc
    return Status(201, _alarm_body(alarm))


@router.delete("/servers/{server_id}/alarms/{alarm_id}", response={204: None, ERRORS: P})
def delete_alarm(request: HttpRequest, server_id: UUID, alarm_id: int) -> Status[None]:
    """Remove one of your alarms (the three defaults stay)."""
    present.writer(request)
    instance = _measured(request, server_id)
    if not remove_alarm(instance=instance, alarm_id=alarm_id):
        raise not_found("No such alarm of yours (the defaults cannot be removed).")
    return Status(204, None)
