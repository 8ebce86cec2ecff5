"""The orders app's models, one module per area, all re-exported here (`from orders.models import X`).
May import orders.lib, store and vmbackend's protocol; nothing else of orders."""

from orders.models.orders import *  # noqa: F403
