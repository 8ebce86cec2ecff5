"""What every area of orders builds on: the timeline (activity), emails, provisioning via the outbox.
May import orders.lib, orders.models, store and vmbackend's protocol; never billing, fleet or above."""
