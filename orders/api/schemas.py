"""The API's request and response bodies (pydantic, through django-ninja): the OpenAPI schema is
made from these, and every answer is checked against them before it leaves."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from ninja import Field, Schema

JobKind = Literal["restart", "rotate-password", "change-plan"]
JobStatus = Literal["pending", "running", "done", "failed"]


class Problem(Schema):
    """RFC 9457 problem details; validation errors add `errors`."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, object]] | None = None


# The error answers every operation may give (all problem documents): bad input, no or a
# read-only token, not yours or not there, refused now, invalid, rate limited, our fault.
ERROR_CODES = frozenset({400, 401, 403, 404, 409, 422, 429, 500, 502, 503})


class PlanOut(Schema):
    slug: str
    name: str
    memory_mb: int
    vcpus: int
    disk_gb: int
    rabbitmq_version: str
    max_connections: int
    max_queues: int
    monthly_price_cents: int
    currency: str
    available: bool


class ServerOut(Schema):
    id: UUID
    plan: str
    status: str
    status_label: str
    instance_status: str | None
    stage: str | None
    created_at: datetime
    paid_at: datetime | None
    # pending_payment: where to pay (Stripe's hosted page, or the offline payment page).
    payment_url: str | None
    # Ready: where to connect (no password in them; GET .../credentials has it).
    management_url: str | None
    amqp_url: str | None


class ServerCreate(Schema):
    plan: str = Field(max_length=50)
    # Development only (no Stripe keys): pay at once through the offline payment path.
    pay_offline: bool = False


class CredentialsOut(Schema):
    username: str
    password: str
    management_url: str
    amqp_url: str


class JobOut(Schema):
    id: UUID
    server: UUID
    kind: JobKind
    status: JobStatus
    reason: str
    created_at: datetime
    finished_at: datetime | None
    from_plan: str | None
    to_plan: str | None


class PlanChange(Schema):
    plan: str = Field(max_length=50)


class AlarmOut(Schema):
    id: int
    kind: str
    description: str
    is_default: bool
    threshold: float | None
    minutes: int
    status: str
    fired_at: datetime | None
    cleared_at: datetime | None


class AlarmCreate(Schema):
    kind: Literal["queue_depth", "connections", "message_rate"]
    threshold: float
    minutes: int


class MetricPoint(Schema):
    at: datetime
    values: dict[str, float | None]


class MetricsOut(Schema):
    range: Literal["1h", "24h", "7d"]
    points: list[MetricPoint]


class PlanPage(Schema):
    items: list[PlanOut]
    next_cursor: str | None


class ServerPage(Schema):
    items: list[ServerOut]
    next_cursor: str | None


class JobPage(Schema):
    items: list[JobOut]
    next_cursor: str | None


class AlarmPage(Schema):
    items: list[AlarmOut]
    next_cursor: str | None
