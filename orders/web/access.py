"""Who may see an order: its owner only. Anyone else (another customer, staff) gets the same 404
as for an order that does not exist; staff look at orders in the admin. Every order view uses this.
"""

from uuid import UUID

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from orders.models import Instance, Order


class SignedInRequest(HttpRequest):
    """What @login_required hands a view: `user` is a User, never AnonymousUser (for mypy)."""

    user: User


def get_order(request: HttpRequest, public_id: UUID) -> Order:
    """The requesting customer's order, or 404 (also for other customers' and staff)."""
    return get_object_or_404(
        Order.objects.select_related("plan"), public_id=public_id, user=request.user
    )


def get_instance(order: Order) -> Instance | None:
    try:
        return order.instance
    except Instance.DoesNotExist:
        return None
