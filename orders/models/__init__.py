"""The orders app's models, one module per area, all re-exported here (`from orders.models import X`).
May import orders.lib, store and vmbackend's protocol; nothing else of orders."""

from orders.models.orders import (
    InvalidTransition,
    wake_order_page,
    OrderStatus,
    RefundStatus,
    InstanceStatus,
    InstanceStage,
    Order,
)
from orders.models.instances import (
    Instance,
    EventStep,
    EFFECT_RESEND_DELETION,
    EFFECT_FORGET_CREDENTIALS,
    EFFECT_UPDATE_URLS,
    EFFECT_UPDATE_STAGE,
    EFFECT_RECORD_CRASH,
    HOST_EVENT_TRANSITIONS,
    RECORDED_ONLY,
    ORDER_STATUS_FOR_INSTANCE,
)
from orders.models.billing import (
    WebhookEvent,
)
from orders.models.messaging import (
    OutboxMessage,
    DeadLetter,
)
from orders.models.fleet import (
    Host,
)
from orders.models.monitoring import (
    MetricSample,
    MetricRollup,
    AlarmKind,
    AlarmState,
    Alarm,
    AlarmEvent,
)
from orders.models.console import (
    ConsoleCommandKind,
    ConsoleCommandStatus,
    ConsoleCommand,
)
from orders.models.activity import (
    ActivityKind,
    Activity,
)

__all__ = [
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
