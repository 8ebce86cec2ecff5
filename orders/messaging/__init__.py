"""The shop on RabbitMQ: broker connection, outbox relay and its lock, host events, dead letters.
May import every area of orders below it (console, fleet, monitoring, billing, core, ...)."""
