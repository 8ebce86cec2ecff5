"""Staff views by area (Django autodiscovers `orders.admin`; importing a module registers it).
May import every area of orders but web and management, plus store and vmbackend's protocol."""

from orders.admin import billing, console, fleet, messaging, monitoring, orders  # noqa: F401
