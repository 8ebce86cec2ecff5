"""What every area of orders builds on: the timeline (activity), emails, provisioning (outbox).
May import orders.lib, orders.models, store and vmbackend's protocol; nothing above it."""
