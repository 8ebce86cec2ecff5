"""Plans, servers, their actions and the jobs those start. Each operation calls the service the
order page calls (checkout, offline payment, cancellation, the console) and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from uuid import UUID

from django.http import HttpRequest
from ninja import Router, Status

from orders.api import present, schemas
from orders.api.problems import ApiProblem, not_found
from orders.billing.cancellation import cancel_order
from orders.billing.checkout import CheckoutError, start_checkout
from orders.billing.offline_checkout import (
    OfflinePaymentError,
    complete_offline_payment,
    offline_payments_enabled,
)
from orders.console import commands as console
from orders.fleet import rooms
from orders.lib.urls import without_password
from orders.models import Order
from store.models import Plan

router = Router()
Start = Callable[[Order, UUID], console.Started]
P = schemas.Problem
ERRORS = schemas.ERROR_CODES


@router.get("/plans", response={200: schemas.PlanPage, ERRORS: P}, tags=["plans"])
def list_plans(request: HttpRequest, cursor: str = "", limit: int = 50) -> dict:
    """The plans on sale, each saying whether a host has room for it now."""
    plans, after = present.page(
        Plan.objects.filter(is_active=True), cursor, limit, newest_first=False
    )
    items = [present.plan_body(plan, rooms.plan_available(plan)) for plan in plans]
    return {"items": items, "next_cursor": after}


@router.get("/servers", response={200: schemas.ServerPage, ERRORS: P}, tags=["servers"])
def list_servers(request: HttpRequest, cursor: str = "", limit: int = 50) -> dict:
    mine = Order.objects.select_related("plan", "instance").filter(
        user=present.token_of(request).user
    )
    orders, after = present.page(mine, cursor, limit)
    return {"items": [present.server_body(request, o) for o in orders], "next_cursor": after}


@router.post("/servers", response={201: schemas.ServerOut, ERRORS: P}, tags=["servers"])
def create_server(request: HttpRequest, body: schemas.ServerCreate) -> Status[dict]:
    """Order a server: pay at `payment_url`, or (development, no Stripe) `pay_offline`."""
    token = present.writer(request)
    plan = Plan.objects.filter(slug=body.plan, is_active=True).first()
    if plan is None:
        raise ApiProblem(422, f"No plan {body.plan!r} is on sale.", kind="no-such-plan")
    if body.pay_offline and not offline_payments_enabled():
        raise ApiProblem(409, "Offline payment is for development only.", kind="offline-off")
    if not rooms.plan_available(plan):
        raise ApiProblem(409, f"{plan.name} is sold out right now.", kind="sold-out")
    try:
        order, payment_url = start_checkout(user=token.user, plan=plan)
    except CheckoutError as exc:
        raise ApiProblem(503, str(exc), kind="payment-provider") from exc
    if body.pay_offline:
        try:
            complete_offline_payment(order=order)
        except OfflinePaymentError as exc:
            raise ApiProblem(502, "The payment did not go through.", kind="payment") from exc
        order = Order.objects.select_related("plan").get(pk=order.pk)
    return Status(201, present.server_body(request, order, payment_url))


@router.get("/servers/{server_id}", response={200: schemas.ServerOut, ERRORS: P}, tags=["servers"])
def get_server(request: HttpRequest, server_id: UUID) -> dict:
    return present.server_body(request, present.owned_order(request, server_id))


@router.post(
    "/servers/{server_id}/cancel",
    response={200: schemas.ServerOut, ERRORS: P},
    tags=["servers"],
)
def cancel_server(request: HttpRequest, server_id: UUID) -> dict:
    """Cancel the order: the subscription ends and the server is deleted."""
    present.writer(request)
    order = present.owned_order(request, server_id)
    if not order.can_cancel:
        raise ApiProblem(409, "This server is already cancelled.", kind="not-cancellable")
    try:
        order = cancel_order(order=order, reason="Cancelled by the customer (API)")
    except CheckoutError as exc:  # Stripe refused to end the subscription: nothing changed
        raise ApiProblem(503, str(exc), kind="payment-provider") from exc
    return present.server_body(request, order)


@router.get(
    "/servers/{server_id}/credentials",
    response={200: schemas.CredentialsOut, ERRORS: P},
    tags=["servers"],
)
def get_credentials(request: HttpRequest, server_id: UUID) -> dict:
    """The admin user and password: read-write tokens only (the password commands the broker,
    which a token made for dashboards should not)."""
    present.writer(request)
    order = present.owned_order(request, server_id)
    instance = present.instance_of(order)
    if instance is None or not instance.is_ready:
        raise not_found("No credentials yet: the server is not ready.")
    console.mark_password_shown(instance=instance)  # a rotation's one-time notice is over
    return {
        "username": instance.admin_username,
        "password": instance.admin_password,
        "management_url": without_password(instance.management_url),
        "amqp_url": without_password(instance.amqp_url),
    }


# -- actions: each one a console command, which is the job -----------------------------------


def _start(request: HttpRequest, server_id: UUID, start: Start) -> dict:
    present.writer(request)
    order = present.owned_order(request, server_id)
    request_id = uuid.uuid4()  # repeats are the Idempotency-Key's business (middleware)
    try:
        started = start(order, request_id)
    except console.ConsoleError as exc:
        raise ApiProblem(409, str(exc), kind="action-refused") from exc
    return present.job_body(present.jobs_of(order.user_id).get(pk=started.command.pk))


def _restart(order: Order, request_id: UUID) -> console.Started:
    return console.request_restart(order=order, request_id=request_id)


def _rotate(order: Order, request_id: UUID) -> console.Started:
    return console.request_password_rotation(order=order, request_id=request_id)


def _change_to(slug: str) -> Start:
    def change(order: Order, request_id: UUID) -> console.Started:
        try:
            plan = console.chosen_plan(slug)
        except console.ConsoleError as exc:
            raise ApiProblem(422, str(exc), kind="no-such-plan") from exc
        return console.request_plan_change(order=order, request_id=request_id, plan=plan)

    return change


ACTION = {202: schemas.JobOut, ERRORS: P}


@router.post("/servers/{server_id}/restart", response=ACTION, url_name="restart", tags=["jobs"])
def restart(request: HttpRequest, server_id: UUID) -> Status[dict]:
    return Status(202, _start(request, server_id, _restart))


@router.post(
    "/servers/{server_id}/rotate-password", response=ACTION, url_name="rotate", tags=["jobs"]
)
def rotate_password(request: HttpRequest, server_id: UUID) -> Status[dict]:
    return Status(202, _start(request, server_id, _rotate))


@router.post(
    "/servers/{server_id}/change-plan", response=ACTION, url_name="change_plan", tags=["jobs"]
)
def change_plan(request: HttpRequest, server_id: UUID, body: schemas.PlanChange) -> Status[dict]:
    return Status(202, _start(request, server_id, _change_to(body.plan)))


@router.get("/servers/{server_id}/jobs", response={200: schemas.JobPage, ERRORS: P}, tags=["jobs"])
def list_jobs(request: HttpRequest, server_id: UUID, cursor: str = "", limit: int = 50) -> dict:
    order = present.owned_order(request, server_id)
    jobs = present.jobs_of(order.user_id).filter(instance__order=order)
    rows, after = present.page(jobs, cursor, limit)
    return {"items": [present.job_body(c) for c in rows], "next_cursor": after}


@router.get("/jobs/{job_id}", response={200: schemas.JobOut, ERRORS: P}, tags=["jobs"])
def get_job(request: HttpRequest, job_id: UUID) -> dict:
    command = present.jobs_of(present.token_of(request).user.pk).filter(request_id=job_id).first()
    if command is None:
        raise not_found("No such job.")
    return present.job_body(command)
