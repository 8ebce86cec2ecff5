"""The owner's console (restart, rotate the password, change plan): requests, outcomes, page.
May import orders.billing, orders.core, orders.models, orders.lib, store and vmbackend's protocol."""
