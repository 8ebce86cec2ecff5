"""What the API answers about the shop's objects, and how it finds them: only the token owner's
(anyone else's is the same 404 as one that does not exist, as on the pages), a page at a time."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar
from uuid import UUID

from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse

from orders.api.problems import ApiProblem, not_found
from orders.billing.offline_checkout import offline_payments_enabled
from orders.lib.urls import without_password
from orders.models import ApiToken, ConsoleCommand, Instance, Order, OutboxMessage
from store.models import Plan

M = TypeVar("M", bound=Model)
MAX_LIMIT = 100

JOB_KIND = {
    ConsoleCommand.Kind.RESTART: "restart",
    ConsoleCommand.Kind.ROTATE_PASSWORD: "rotate-password",
    ConsoleCommand.Kind.CHANGE_PLAN: "change-plan",
}


def token_of(request: HttpRequest) -> ApiToken:
    token: ApiToken = request.auth  # type: ignore[attr-defined]  # set by the library's auth
    return token


def writer(request: HttpRequest) -> ApiToken:
    """The request's token if it may change things; 403 for a read-only token."""
    token = token_of(request)
    if not token.can_write:
        raise ApiProblem(403, "This token is read-only.", kind="read-only-token")
    return token


def owned_order(request: HttpRequest, server_id: UUID) -> Order:
    order = (
        Order.objects.select_related("plan")
        .filter(public_id=server_id, user=token_of(request).user)
        .first()
    )
    if order is None:
        raise not_found("No such server.")
    return order


def instance_of(order: Order) -> Instance | None:
    try:
        return order.instance
    except Instance.DoesNotExist:
        return None


# -- pagination: keyset on the primary key, an opaque cursor, the same shape for every list -------


def _decode(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor.encode() + b"==").decode())
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiProblem(400, "The cursor is not one this API gave.", kind="bad-cursor") from exc


def _encode(pk: int) -> str:
    return base64.urlsafe_b64encode(str(pk).encode()).decode().rstrip("=")


def page(
    queryset: QuerySet[M], cursor: str | None, limit: int, *, newest_first: bool = True
) -> tuple[list[M], str | None]:
    """Up to `limit` rows after `cursor`, and the cursor of the next page (None: the last)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiProblem(400, f"limit must be between 1 and {MAX_LIMIT}.", kind="bad-limit")
    if cursor:
        after = _decode(cursor)
        queryset = queryset.filter(pk__lt=after) if newest_first else queryset.filter(pk__gt=after)
    rows = list(queryset.order_by("-pk" if newest_first else "pk")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (_encode(rows[-1].pk) if more and rows else None)


# -- representations ----------------------------------------------------------------------------


def plan_body(plan: Plan, available: bool) -> dict[str, Any]:
    fields = ("slug", "name", "memory_mb", "vcpus", "disk_gb", "rabbitmq_version")
    more = ("max_connections", "max_queues", "monthly_price_cents", "currency")
    return {name: getattr(plan, name) for name in fields + more} | {"available": available}


def server_body(request: HttpRequest, order: Order, payment_url: str | None = None) -> dict:
    instance = instance_of(order)
    serving = instance if instance and instance.is_ready and order.status in Order.SERVING else None
    down = bool(instance and instance.status == Instance.Status.LOST and instance.ran_once)
    if payment_url is None and order.status == Order.Status.PENDING_PAYMENT:
        if offline_payments_enabled():
            payment_url = reverse("orders:offline_checkout", args=[order.public_id])
    if payment_url is not None and order.status != Order.Status.PENDING_PAYMENT:
        payment_url = None
    return {
        "id": order.public_id,
        "plan": order.plan.slug,
        "status": order.status,
        "status_label": "Server down" if down else order.get_status_display(),
        "instance_status": instance.status if instance else None,
        "stage": instance.stage if instance else None,
        "created_at": order.created_at,
        "paid_at": order.paid_at,
        "payment_url": request.build_absolute_uri(payment_url) if payment_url else None,
        "management_url": without_password(serving.management_url) if serving else None,
        "amqp_url": without_password(serving.amqp_url) if serving else None,
    }


def job_status(command: ConsoleCommand) -> str:
    """sent is `pending` until the relay has published its message to the host, then `running`."""
    if command.status != ConsoleCommand.Status.SENT:
        return command.status
    unsent = OutboxMessage.objects.filter(
        instance_id=command.instance_id,
        sent_at__isnull=True,
        **{"body__options__request-id": str(command.request_id)},
    )
    return "pending" if unsent.exists() else "running"


def job_body(command: ConsoleCommand) -> dict[str, Any]:
    return {
        "id": command.request_id,
        "server": command.instance.order.public_id,
        "kind": JOB_KIND[ConsoleCommand.Kind(command.kind)],
        "status": job_status(command),
        "reason": command.reason,
        "created_at": command.created_at,
        "finished_at": command.finished_at,
        "from_plan": command.from_plan.slug if command.from_plan else None,
        "to_plan": command.to_plan.slug if command.to_plan else None,
    }


def jobs_of(user_id: int) -> QuerySet[ConsoleCommand]:
    return ConsoleCommand.objects.select_related("instance__order", "from_plan", "to_plan").filter(
        instance__order__user_id=user_id
    )
