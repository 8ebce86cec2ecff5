"""The orders app's models, one module per area, re-exported here (`from orders.models import X`).
May import orders.lib only (store's Plan is named by its label, "store.Plan"); nothing else."""

from orders.models.activity import (
    Activity,
    ActivityKind,
)
from orders.models.api import (
    ApiToken,
    ApiTokenScope,
    IdempotentRequest,
)
from orders.models.billing import (
    WebhookEvent,
)
from orders.models.console import (
    ConsoleCommand,
    ConsoleCommandKind,
    ConsoleCommandStatus,
)
from orders.models.fleet import (
    Host,
)
from orders.models.instances import (
    EFFECT_FORGET_CREDENTIALS,
    EFFECT_RECORD_CRASH,
    EFFECT_RESEND_DELETION,
    EFFECT_UPDATE_STAGE,
    EFFECT_UPDATE_URLS,
    HOST_EVENT_TRANSITIONS,
    ORDER_STATUS_FOR_INSTANCE,
    RECORDED_ONLY,
    EventStep,
    Instance,
)
from orders.models.messaging import (
    DeadLetter,
    OutboxMessage,
)
from orders.models.monitoring import (
    Alarm,
    AlarmEvent,
    AlarmKind,
    AlarmState,
    MetricRollup,
    MetricSample,
)
from orders.models.orders import (
    InstanceStage,
    InstanceStatus,
    InvalidTransition,
    Order,
    OrderStatus,
    RefundStatus,
    wake_order_page,
)

__all__ = [
    "ApiToken",
    "ApiTokenScope",
    "IdempotentRequest",
    "InvalidTransition",
    "wake_order_page",
    "OrderStatus",
    "RefundStatus",
    "InstanceStatus",
    "InstanceStage",
    "Order",
    "Instance",
    "EventStep",
    "EFFECT_RESEND_DELETION",
    "EFFECT_FORGET_CREDENTIALS",
    "EFFECT_UPDATE_URLS",
    "EFFECT_UPDATE_STAGE",
    "EFFECT_RECORD_CRASH",
    "HOST_EVENT_TRANSITIONS",
    "RECORDED_ONLY",
    "ORDER_STATUS_FOR_INSTANCE",
    "WebhookEvent",
    "OutboxMessage",
    "DeadLetter",
    "Host",
    "MetricSample",
    "MetricRollup",
    "AlarmKind",
    "AlarmState",
    "Alarm",
    "AlarmEvent",
    "ConsoleCommandKind",
    "ConsoleCommandStatus",
    "ConsoleCommand",
    "ActivityKind",
    "Activity",
]
